"""Subscriber ids under another connection's write lock: looking up a known id takes no lock.

The reader pages look an id up on the event loop for every request (the Manage link's page); when
that took BEGIN IMMEDIATE, each page waited out a compose batch's commit (bench/web.py: p99 2 s).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from digestd.store.sqlite import Store


def test_a_known_id_is_read_while_another_connection_holds_the_write_lock(tmp_path: Path) -> None:
    with Store(tmp_path / "state.sqlite3") as store, Store(tmp_path / "state.sqlite3") as other:
        known = store.subscribers.id_of("Reader@Example.org")
        store.db.conn.execute("PRAGMA busy_timeout = 0")  # a wait for the lock fails at once
        other.db.conn.execute("BEGIN IMMEDIATE")  # a compose batch, mid-write
        try:
            assert store.subscribers.id_of("reader@example.org") == known
            assert store.subscribers.ids_of(["READER@example.org"]) == {"reader@example.org": known}
            with pytest.raises(sqlite3.OperationalError):  # a new address does need the lock
                store.subscribers.id_of("new@example.org")
        finally:
            other.db.conn.execute("COMMIT")


def test_ids_of_mixes_known_and_new_addresses(tmp_path: Path) -> None:
    with Store(tmp_path / "state.sqlite3") as store:
        first = store.subscribers.ids_of(["a@example.org", "b@example.org"])
        both = store.subscribers.ids_of(["B@example.org", "c@example.org", "a@example.org"])
        assert both["a@example.org"] == first["a@example.org"]
        assert both["b@example.org"] == first["b@example.org"]
        assert both["c@example.org"] not in first.values()
        assert set(both) == {"a@example.org", "b@example.org", "c@example.org"}
