"""The readers repository (issue 15): sign-up, confirmation, edits, pauses with the ledger's skip
or catch-up, removal, the confirmation-mail rate limit; on both backends (`store` and `state` are
tests/store/conftest.py's), a SQLite file's upgrade on SQLite only."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_store_notices import undo_leases

from digestd.core.model import Paper
from digestd.store import StateStore as Store
from digestd.store import open_store
from digestd.store.protocols import ReaderCounts
from digestd.store.sqlite import SCHEMA_VERSION
from digestd.store.sqlite import Store as SqliteStore

T0 = datetime(2025, 3, 10, 7, 0, tzinfo=UTC)
ANN = "Ann@Example.org"
SPEC = {"use": [], "rules": [{"any": ["kv cache"]}], "timezone": "Europe/Berlin"}


def raw(store: Any, query: str, params: Any = ()) -> Any:
    """Run SQL written for SQLite (`?` placeholders) on either backend's connection."""
    if isinstance(store, SqliteStore):
        return store.db.conn.execute(query, params)
    return store.db.conn.execute(query.replace("?", "%s"), params)


def seen(store: Store, pid: str, at: datetime) -> None:
    store.papers.save([Paper(id=pid, title=f"T {pid}", abstract="A.")], seen_at=at)


def test_schema_has_the_readers_tables(store: Store) -> None:
    assert SCHEMA_VERSION >= 12
    for table in ("readers", "pauses", "confirm_sends"):
        assert raw(store, f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0


def test_pending_then_confirmed_then_edited(store: Store) -> None:
    pending = store.readers.add_pending(ANN, name="Ann", spec=SPEC, at=T0)
    assert (pending.email, pending.state, pending.confirmed_at) == (
        "ann@example.org",
        "pending",
        None,
    )
    assert store.readers.active() == [] and [r.email for r in store.readers.pending()] == [
        "ann@example.org"
    ]
    confirmed = store.readers.confirm("ann@example.org", at=T0 + timedelta(hours=1))
    assert confirmed is not None and confirmed.state == "active"
    assert confirmed.confirmed_at == T0 + timedelta(hours=1)
    edited = store.readers.update(ANN, spec={"rules": []}, at=T0 + timedelta(hours=2))
    assert edited is not None and edited.spec == {"rules": []} and edited.version == 2
    assert edited.name == "Ann"  # kept when not given


def test_a_confirmed_reader_is_not_overwritten_by_the_form(store: Store) -> None:
    store.readers.add_pending(ANN, name="Ann", spec=SPEC, at=T0)
    store.readers.confirm(ANN, at=T0)
    again = store.readers.add_pending(ANN, name="Mallory", spec={"rules": []}, at=T0)
    assert again.name == "Ann" and again.spec == SPEC and again.state == "active"


def test_a_pending_sign_up_restarts_its_window(store: Store) -> None:
    store.readers.add_pending(ANN, name=None, spec=SPEC, at=T0)
    store.readers.add_pending(ANN, name="Ann", spec=SPEC, at=T0 + timedelta(hours=47))
    assert store.readers.expire_pending(before=T0 + timedelta(hours=1)) == 0  # 48h window of T0
    assert store.readers.expire_pending(before=T0 + timedelta(hours=48)) == 1
    assert store.readers.get(ANN) is None


def test_update_and_confirm_need_a_row(store: Store) -> None:
    assert store.readers.confirm(ANN, at=T0) is None
    assert store.readers.update(ANN, spec=SPEC, at=T0) is None
    store.readers.add_pending(ANN, name=None, spec=SPEC, at=T0)
    assert store.readers.update(ANN, spec=SPEC, at=T0) is None  # not confirmed yet


def test_confirmation_mails_are_rate_limited_per_address(store: Store) -> None:
    every = timedelta(minutes=10)
    assert store.readers.may_send_confirmation(ANN, at=T0, every=every)
    assert not store.readers.may_send_confirmation(
        "ann@example.org", at=T0 + every / 2, every=every
    )
    assert store.readers.may_send_confirmation("bob@example.org", at=T0, every=every)
    assert store.readers.may_send_confirmation(ANN, at=T0 + every, every=every)


def test_counts_by_state_and_paused_yaml_addresses(store: Store) -> None:
    for i, state in enumerate(["pending", "active", "paused", "unsubscribed"]):
        email = f"r{i}@example.org"
        store.readers.add_pending(email, name=None, spec=SPEC, at=T0)
        if state != "pending":
            store.readers.confirm(email, at=T0)
        if state == "paused":
            store.readers.pause(email, until=T0 + timedelta(weeks=1), at=T0)
        if state == "unsubscribed":
            store.subscribers.suppress(email, at=T0, via="one-click")
    store.readers.pause("yaml-reader@example.org", until=T0 + timedelta(weeks=2), at=T0)
    assert store.readers.counts(at=T0) == ReaderCounts(
        pending=1, active=1, paused=2, unsubscribed=1
    )
    assert store.readers.get("r2@example.org").state == "paused"  # type: ignore[union-attr]


def test_a_pause_skips_its_papers_in_the_ledger(store: Store) -> None:
    email = "yaml-reader@example.org"  # any address: no reader row needed
    seen(store, "before", T0 - timedelta(days=1))
    store.readers.pause(email, until=T0 + timedelta(weeks=1), at=T0)
    assert store.readers.paused(at=T0 + timedelta(days=1)) == {email}
    seen(store, "during", T0 + timedelta(days=2))
    assert store.readers.resume(email, at=T0 + timedelta(days=3), catch_up=False)
    seen(store, "after", T0 + timedelta(days=4))
    left = store.papers.candidates(email, since=T0 - timedelta(days=7))
    assert sorted(p.id for p in left) == ["after", "before"]
    assert store.readers.paused(at=T0 + timedelta(days=3)) == set()
    assert store.readers.pause_of(email) is None
    assert not store.readers.resume(email, at=T0 + timedelta(days=5))
    state, n = raw(
        store, "SELECT state, n_papers FROM outbox WHERE subscriber = ?", (email,)
    ).fetchone()
    assert (state, n) == ("empty", 1)


def test_a_pause_ends_by_itself_at_until(store: Store) -> None:
    email = "ann@example.org"
    store.readers.pause(email, until=T0 + timedelta(weeks=1), at=T0)
    seen(store, "during", T0 + timedelta(days=2))
    seen(store, "after", T0 + timedelta(days=8))
    assert store.readers.end_pauses(at=T0 + timedelta(days=6)) == 0
    assert store.readers.end_pauses(at=T0 + timedelta(days=10)) == 1
    left = store.papers.candidates(email, since=T0 - timedelta(days=7))
    assert [p.id for p in left] == ["after"]  # the pause ended at `until`, not at the check


def test_catch_up_keeps_the_papers_and_owes_one_digest(store: Store) -> None:
    email = "ann@example.org"
    store.readers.pause(email, until=T0 + timedelta(weeks=8), at=T0, catch_up=True)
    seen(store, "during", T0 + timedelta(days=20))
    assert store.readers.resume(email, at=T0 + timedelta(days=30))
    assert store.readers.catch_ups() == {email: T0}
    assert store.readers.paused(at=T0 + timedelta(days=30)) == set()
    assert [p.id for p in store.papers.candidates(email, since=T0)] == ["during"]
    store.readers.settle_catch_up(email)
    assert store.readers.catch_ups() == {} and store.readers.pause_of(email) is None


def test_pausing_again_moves_the_end_not_the_start(store: Store) -> None:
    store.readers.pause(ANN, until=T0 + timedelta(weeks=1), at=T0)
    later = store.readers.pause(ANN, until=T0 + timedelta(weeks=3), at=T0 + timedelta(days=2))
    assert (later.since, later.until) == (T0, T0 + timedelta(weeks=3))


def test_remove_forgets_the_reader_their_ledger_and_their_link_id(store: Store) -> None:
    store.readers.add_pending(ANN, name="Ann", spec=SPEC, at=T0)
    store.readers.confirm(ANN, at=T0)
    store.subscribers.register([ANN], at=T0)
    old_id = store.subscribers.id_of(ANN)
    seen(store, "p1", T0)
    store.outbox.enqueue(
        subscriber=ANN, kind="digest", period="d1", message_id="<m1@x>", sender="s@x",
        data=b"bytes", paper_ids=["p1"], at=T0,
    )  # fmt: skip
    store.readers.pause(ANN, until=T0 + timedelta(weeks=1), at=T0)
    assert store.readers.remove(ANN, at=T0 + timedelta(hours=1))
    assert store.readers.get(ANN) is None and store.readers.pause_of(ANN) is None
    assert store.subscribers.email_of(old_id) is None  # its tokens no longer verify
    assert store.subscribers.retired_email(old_id) == "ann@example.org"
    assert store.outbox.due_count(now=T0 + timedelta(hours=2)) == 0  # the queued one expired
    assert [p.id for p in store.papers.candidates(ANN, since=T0 - timedelta(days=1))] == ["p1"]
    assert not store.readers.remove(ANN, at=T0)


def test_a_removed_reader_never_shows_in_anothers_reads(store: Store) -> None:
    store.readers.add_pending("a@example.org", name="A", spec=SPEC, at=T0)
    store.readers.add_pending("b@example.org", name="B", spec={"rules": []}, at=T0)
    b = store.readers.get("b@example.org")
    assert b is not None and b.name == "B" and b.spec == {"rules": []}


def test_hostile_values_are_stored_as_values(store: Store) -> None:
    name = "Robert'); DROP TABLE readers;--"
    spec = {"rules": [{"any": ["\x00\r\n<script>"]}]}
    store.readers.add_pending(ANN, name=name, spec=spec, at=T0)
    got = store.readers.get(ANN)
    assert got is not None and got.name == name and got.spec == spec


def test_an_older_database_gains_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE readers")
    db.execute("DROP TABLE pauses")
    db.execute("DROP TABLE confirm_sends")
    db.execute("DROP TABLE bounces")  # and what the later migrations added
    db.execute("DROP TABLE ratings")
    undo_leases(db)
    db.execute("ALTER TABLE suspensions DROP COLUMN bounces")
    db.execute("UPDATE meta SET value = '11' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with SqliteStore(path) as store:
        store.readers.add_pending(ANN, name=None, spec=SPEC, at=T0)
        assert store.readers.get(ANN) is not None


def test_a_reader_who_unsubscribed_signs_up_again_as_pending(store: Store) -> None:
    store.readers.add_pending(ANN, name="Ann", spec=SPEC, at=T0)
    store.readers.confirm(ANN, at=T0)
    store.subscribers.suppress(ANN, at=T0, via="one-click")
    assert store.readers.get(ANN).state == "unsubscribed"  # type: ignore[union-attr]
    again = store.readers.add_pending(ANN, name="Ann B", spec={"rules": []}, at=T0)
    assert (again.state, again.name, again.spec) == ("pending", "Ann B", {"rules": []})
    assert store.readers.active() == []


def test_the_store_refuses_a_huge_spec_whoever_forgot_to_validate(store: Store) -> None:
    huge = {"rules": [{"any": ["transformer"] * 100_000}]}
    with pytest.raises(ValueError, match="may not exceed"):
        store.readers.add_pending(ANN, name=None, spec=huge, at=T0)
    assert store.readers.get(ANN) is None
    store.readers.add_pending(ANN, name=None, spec=SPEC, at=T0)
    store.readers.confirm(ANN, at=T0)
    with pytest.raises(ValueError, match="may not exceed"):
        store.readers.update(ANN, spec=huge, at=T0)
    assert store.readers.get(ANN).spec == SPEC  # type: ignore[union-attr]


def both_at_once(state: str | Path, act: Any) -> list[Any]:
    """`act(store)` by two instances at once: each thread opens its own store (as two daemons
    would), then they start together. Their results in order."""
    start, results = threading.Barrier(2), [None, None]

    def run(i: int) -> None:
        with open_store(state) as store:
            start.wait()
            results[i] = act(store)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_instances_see_one_readers_version_and_one_rate_limit(state: str | Path) -> None:
    every = timedelta(minutes=10)
    with open_store(state) as one, open_store(state) as two:
        one.readers.add_pending(ANN, name="Ann", spec=SPEC, at=T0)
        one.readers.confirm(ANN, at=T0)
        assert two.readers.version() == one.readers.version() == 1
        assert [r.email for r in two.readers.active()] == ["ann@example.org"]
    for round_ in range(5):  # a race lost once would show in a few rounds
        at = T0 + round_ * every

        def ask(store: Store, at: datetime = at) -> bool:
            return store.readers.may_send_confirmation(ANN, at=at, every=every)

        assert sorted(both_at_once(state, ask)) == [False, True]


def test_a_due_pause_is_ended_once_by_two_instances(state: str | Path) -> None:
    email = "ann@example.org"
    with open_store(state) as store:
        store.readers.pause(email, until=T0 + timedelta(weeks=1), at=T0)
        seen(store, "during", T0 + timedelta(days=2))
    ended = both_at_once(state, lambda s: s.readers.end_pauses(at=T0 + timedelta(days=8)))
    assert sum(ended) == 1
    with open_store(state) as store:
        assert store.status().outbox["empty"] == 1
        assert store.papers.candidates(email, since=T0) == []
