"""Message bytes in the outbox: each message's own bytes plus the shared parts it names.

A run's messages of one shape share most of their bytes (`Spliced`): those parts are stored once
(content-addressed) and spliced back in when a message is claimed.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Sequence

from digestd.mail.parts import Part, Spliced
from digestd.store.sqlite.database import Database
from digestd.store.sqlite.values import chunks, marks

__all__ = ["PartCache", "drop_bodies", "queue_body", "read_bodies"]

_PART_CACHE = 64  # shared message parts kept in memory: a few per shape, a few shapes per run

_BODY_COLUMNS = (
    "COALESCE(b.data, o.data) AS data, COALESCE(b.zlib, 0) AS zlib,"
    " COALESCE(b.canonical, 0) AS canonical"
)


Body = tuple[bytes, bool]  # a message's whole bytes and whether they are canonical


def queue_body(db: Database, outbox_id: int, data: bytes | Spliced) -> None:
    """Store the bytes of the new outbox row `outbox_id` (inside its enqueue's `write`)."""
    message = data if isinstance(data, Spliced) else Spliced(data)
    db.conn.execute(
        "INSERT INTO outbox_bodies (outbox_id, data, zlib, canonical) VALUES (?, ?, 0, ?)",
        (outbox_id, message.own, int(message.canonical)),
    )
    for _, part in message.parts:
        db.insert_once(
            ("part", part.key),
            "INSERT OR IGNORE INTO message_parts (key, data) VALUES (?, ?)",
            (part.key, part.data),
        )
    db.conn.executemany(
        "INSERT INTO outbox_parts (outbox_id, seq, at, part) VALUES (?, ?, ?, ?)",
        ((outbox_id, seq, at, part.key) for seq, (at, part) in enumerate(message.parts)),
    )


class PartCache:
    """Shared parts by key: a run's claims name the same few over and over, and a part never
    changes (its key is its hash)."""

    def __init__(self) -> None:
        self._parts: dict[str, Part] = {}

    def get(self, db: sqlite3.Connection, keys: set[str]) -> dict[str, Part]:
        found = {key: self._parts[key] for key in keys if key in self._parts}
        missing = [key for key in keys if key not in found]
        for chunk in chunks(missing):
            sql = f"SELECT key, data FROM message_parts WHERE key IN ({marks(len(chunk))})"
            found.update((key, Part(key, bytes(data))) for key, data in db.execute(sql, chunk))
        if len(self._parts) + len(missing) > _PART_CACHE:
            self._parts.clear()
        self._parts.update((key, found[key]) for key in missing if key in found)
        return found


def read_bodies(db: sqlite3.Connection, ids: Sequence[int], cache: PartCache) -> dict[int, Body]:
    """The message bytes of outbox rows `ids` that have any, their shared parts spliced in, each with
    whether it is canonical (needs no dot-stuffing)."""
    rows: list[sqlite3.Row] = []
    recipes: dict[int, list[tuple[int, str]]] = {}
    for chunk in chunks(ids):
        rows += db.execute(
            f"SELECT o.id, {_BODY_COLUMNS} FROM outbox o"
            " LEFT JOIN outbox_bodies b ON b.outbox_id = o.id"
            f" WHERE o.id IN ({marks(len(chunk))}) AND COALESCE(b.data, o.data) IS NOT NULL",
            chunk,
        ).fetchall()
        for outbox_id, at, key in db.execute(
            "SELECT outbox_id, at, part FROM outbox_parts"
            f" WHERE outbox_id IN ({marks(len(chunk))}) ORDER BY outbox_id, seq",
            chunk,
        ):
            recipes.setdefault(outbox_id, []).append((at, key))
    parts = cache.get(db, {key for recipe in recipes.values() for _, key in recipe})
    return {
        row[0]: _whole(
            row[1], row[2], row[3], [(at, parts[k]) for at, k in recipes.get(row[0], ())]
        )
        for row in rows
    }


def _whole(data: bytes, packed: int, canonical: int, parts: Sequence[tuple[int, Part]]) -> Body:
    # zlib: rows an earlier `enqueue(compressed=True)` wrote; nothing writes them now.
    plain = zlib.decompress(data) if packed else bytes(data)
    return Spliced(plain, tuple(parts)).whole(), bool(canonical)


def drop_bodies(db: sqlite3.Connection, ids: Sequence[int]) -> int:
    """Forget the bytes of outbox rows `ids` (their rows stay); returns how many had any."""
    inline = db.execute(
        f"UPDATE outbox SET data = NULL WHERE data IS NOT NULL AND id IN ({marks(len(ids))})", ids
    )
    bodies = db.execute(f"DELETE FROM outbox_bodies WHERE outbox_id IN ({marks(len(ids))})", ids)
    db.execute(f"DELETE FROM outbox_parts WHERE outbox_id IN ({marks(len(ids))})", ids)
    return inline.rowcount + bodies.rowcount
