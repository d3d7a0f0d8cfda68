"""Message bytes in the outbox (PostgreSQL): each message's own bytes plus the shared parts it
names, spliced back in when claimed (see `store/sqlite/bodies.py`, the same tables)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from digestd.mail.parts import Part, Spliced
from digestd.store.postgres.database import PgDatabase
from digestd.store.postgres.values import Conn

__all__ = ["Body", "PartCache", "drop_bodies", "part_columns", "read_bodies", "store_parts"]

_PART_CACHE = 64  # shared message parts kept in memory: a few per shape, a few shapes per run

Body = tuple[bytes, bool]  # a message's whole bytes and whether they are canonical


def store_parts(db: PgDatabase, message: Spliced) -> None:
    """The shared parts `message` names, each once per transaction (inside its enqueue's)."""
    for _, part in message.parts:
        db.insert_once(
            ("part", part.key),
            "INSERT INTO message_parts (key, data) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (part.key, part.data),
        )


def part_columns(message: Spliced | None) -> dict[str, list[Any]]:
    """Where each shared part goes in `message`, as the arrays the enqueue statement unnests."""
    parts = () if message is None else message.parts
    return {
        "seqs": list(range(len(parts))),
        "ats": [at for at, _ in parts],
        "keys": [part.key for _, part in parts],
    }


class PartCache:
    """Shared parts by key: a run's claims name the same few over and over, and a part never
    changes (its key is its hash)."""

    def __init__(self) -> None:
        self._parts: dict[str, Part] = {}

    def get(self, db: Conn, keys: set[str]) -> dict[str, Part]:
        found = {key: self._parts[key] for key in keys if key in self._parts}
        missing = [key for key in keys if key not in found]
        if missing:
            rows = db.execute("SELECT key, data FROM message_parts WHERE key = ANY(%s)", (missing,))
            found.update((key, Part(key, bytes(data))) for key, data in rows)
        if len(self._parts) + len(missing) > _PART_CACHE:
            self._parts.clear()
        self._parts.update((key, found[key]) for key in missing if key in found)
        return found


def read_bodies(db: Conn, ids: Sequence[int], cache: PartCache) -> dict[int, Body]:
    """The message bytes of outbox rows `ids` that have any, their shared parts spliced in, each
    with whether it is canonical (needs no dot-stuffing)."""
    wanted = list(ids)
    rows = db.execute(
        "SELECT o.id, COALESCE(b.data, o.data), COALESCE(b.zlib, 0), COALESCE(b.canonical, 0)"
        " FROM outbox o LEFT JOIN outbox_bodies b ON b.outbox_id = o.id"
        " WHERE o.id = ANY(%s) AND COALESCE(b.data, o.data) IS NOT NULL",
        (wanted,),
    ).fetchall()
    recipes: dict[int, list[tuple[int, str]]] = {}
    for outbox_id, at, key in db.execute(
        "SELECT outbox_id, at, part FROM outbox_parts WHERE outbox_id = ANY(%s)"
        " ORDER BY outbox_id, seq",
        (wanted,),
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
    plain = zlib.decompress(data) if packed else bytes(data)
    return Spliced(plain, tuple(parts)).whole(), bool(canonical)


def drop_bodies(db: Conn, ids: Sequence[int]) -> int:
    """Forget the bytes of outbox rows `ids` (their rows stay); returns how many had any."""
    wanted = list(ids)
    inline = db.execute(
        "UPDATE outbox SET data = NULL WHERE data IS NOT NULL AND id = ANY(%s)", (wanted,)
    )
    bodies = db.execute("DELETE FROM outbox_bodies WHERE outbox_id = ANY(%s)", (wanted,))
    db.execute("DELETE FROM outbox_parts WHERE outbox_id = ANY(%s)", (wanted,))
    return inline.rowcount + bodies.rowcount
