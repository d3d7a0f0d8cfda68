"""Readers, pauses and the confirmation-mail rate limit on PostgreSQL (see
`store/sqlite/readers.py` for the life of a reader; rows and their meaning are the same).

Several instances may serve the pages and end pauses on one database, so what SQLite's single
writer made safe is one statement or a row lock here: the rate limit is a conditional upsert
(two instances never both send), and ending a pause locks its row (it is ended once).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, cast

from digestd.core.addresses import address_key
from digestd.store.postgres.database import PgDatabase
from digestd.store.postgres.values import Conn, dicts, one_dict
from digestd.store.protocols import Pause, Reader, ReaderCounts, ReaderState
from digestd.store.sqlite.readers import (  # the row format is the same on both backends
    _SELECT,
    _VERSION,
    SKIPPED_PERIOD,
    _pause,
    _reader,
    _spec_json,
    _state,
)
from digestd.store.sqlite.values import ts

__all__ = ["PgReaders"]

_BUMP = (  # meta.value is text on both backends
    f"INSERT INTO meta (key, value) VALUES ('{_VERSION}', '1') ON CONFLICT (key)"
    " DO UPDATE SET value = (CAST(meta.value AS BIGINT) + 1)::text"
)


def _as_reader(row: dict[str, Any]) -> Reader:
    return _reader(row)  # type: ignore[arg-type]  # a dict reads as a sqlite3.Row


def _as_pause(row: dict[str, Any]) -> Pause:
    return _pause(row)  # type: ignore[arg-type]


def _as_state(row: dict[str, Any]) -> ReaderState:
    return _state(row)  # type: ignore[arg-type]


class PgReaders:
    """The readers, pauses and confirm_sends tables (`_migration_12`)."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    # -- readers ---------------------------------------------------------------------------

    def add_pending(
        self, email: str, *, name: str | None, spec: Mapping[str, object], at: datetime
    ) -> Reader:
        """As `SqliteReaders.add_pending`: a confirmed, subscribed reader's row is kept."""
        key, stamp = address_key(email), ts(at)
        with self._db.write() as db:
            was = db.execute(
                "SELECT confirmed_at FROM readers WHERE email = %s FOR UPDATE", (key,)
            ).fetchone()
            cursor = db.execute(
                """INSERT INTO readers (email, name, spec, created_at, updated_at)
                   VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (email) DO UPDATE SET name = excluded.name, spec = excluded.spec,
                       created_at = excluded.created_at, updated_at = excluded.updated_at,
                       confirmed_at = NULL, version = readers.version + 1
                   WHERE readers.confirmed_at IS NULL
                      OR readers.email IN (SELECT email FROM suppressions)""",
                (key, name, _spec_json(spec), stamp, stamp),
            )
            if cursor.rowcount and was is not None and was[0] is not None:
                db.execute(_BUMP)  # a served reader is pending again
        return cast(Reader, self.get(key))

    def get(self, email: str) -> Reader | None:
        row = one_dict(self._db.conn, f"{_SELECT} WHERE r.email = %s", (address_key(email),))
        return None if row is None else _as_reader(row)

    def confirm(self, email: str, *, at: datetime) -> Reader | None:
        stamp = ts(at)
        with self._db.write() as db:
            cursor = db.execute(
                "UPDATE readers SET confirmed_at = %s, updated_at = %s"
                " WHERE email = %s AND confirmed_at IS NULL",
                (stamp, stamp, address_key(email)),
            )
            if cursor.rowcount:
                db.execute(_BUMP)
        return self.get(email)

    def version(self) -> int:
        """Counts changes to the confirmed readers, whichever instance made them."""
        return int(self._db.meta(_VERSION) or 0)

    def update(
        self, email: str, *, spec: Mapping[str, object], at: datetime, name: str | None = None
    ) -> Reader | None:
        with self._db.write() as db:
            cursor = db.execute(
                "UPDATE readers SET spec = %s, name = COALESCE(%s, name), updated_at = %s,"
                " version = version + 1 WHERE email = %s AND confirmed_at IS NOT NULL",
                (_spec_json(spec), name, ts(at), address_key(email)),
            )
            if cursor.rowcount:
                db.execute(_BUMP)
        return self.get(email) if cursor.rowcount == 1 else None

    def remove(self, email: str, *, at: datetime) -> bool:
        """As `SqliteReaders.remove`: row, pause, registration, ledger and link id go."""
        key, stamp = address_key(email), ts(at)
        with self._db.write() as db:
            if db.execute("DELETE FROM readers WHERE email = %s", (key,)).rowcount != 1:
                return False
            db.execute(_BUMP)
            db.execute("DELETE FROM pauses WHERE email = %s", (key,))
            db.execute("DELETE FROM subscribers WHERE email = %s", (key,))
            db.execute(
                "UPDATE outbox SET state = 'expired', last_reply = 'the reader was removed',"
                " updated_at = %s WHERE subscriber = %s AND state IN ('queued', 'deferred')",
                (stamp, key),
            )
            db.execute(
                "DELETE FROM deliveries WHERE subscriber = %s AND outbox_id NOT IN (SELECT id"
                " FROM outbox WHERE subscriber = %s AND state IN ('sending', 'in_doubt'))",
                (key, key),
            )
            db.execute(
                "INSERT INTO retired_subscriber_ids (id, email, retired_at)"
                " SELECT id, email, %s FROM subscriber_ids WHERE email = %s",
                (stamp, key),
            )
            db.execute("DELETE FROM subscriber_ids WHERE email = %s", (key,))
        return True

    def active(self) -> list[Reader]:
        rows = dicts(self._db.conn, f"{_SELECT} WHERE r.confirmed_at IS NOT NULL ORDER BY r.email")
        return [_as_reader(row) for row in rows]

    def pending(self) -> list[Reader]:
        rows = dicts(self._db.conn, f"{_SELECT} WHERE r.confirmed_at IS NULL ORDER BY r.email")
        return [_as_reader(row) for row in rows]

    def counts(self, *, at: datetime) -> ReaderCounts:
        with self._db.read() as db:
            found: dict[str, int] = {"pending": 0, "active": 0, "paused": 0, "unsubscribed": 0}
            for row in dicts(db, _SELECT):
                found[_as_state(row)] += 1
            paused = db.execute(
                "SELECT COUNT(*) FROM pauses WHERE resumed_at IS NULL AND until > %s", (ts(at),)
            ).fetchone()
        return ReaderCounts(
            found["pending"],
            found["active"],
            int(paused[0]) if paused else 0,
            found["unsubscribed"],
        )

    def expire_pending(self, *, before: datetime) -> int:
        with self._db.single() as db:
            cursor = db.execute(
                "DELETE FROM readers WHERE confirmed_at IS NULL AND created_at < %s", (ts(before),)
            )
        return cursor.rowcount

    def may_send_confirmation(self, email: str, *, at: datetime, every: timedelta) -> bool:
        """As `SqliteReaders.may_send_confirmation`, in one statement: the upsert takes the row's
        lock, so of two instances asking at once exactly one is told yes."""
        with self._db.single() as db:
            row = db.execute(
                "INSERT INTO confirm_sends (email, at) VALUES (%s, %s) ON CONFLICT (email)"
                " DO UPDATE SET at = excluded.at WHERE confirm_sends.at <= %s RETURNING 1",
                (address_key(email), ts(at), ts(at - every)),
            ).fetchone()
        return row is not None

    # -- pauses ----------------------------------------------------------------------------

    def pause(self, email: str, *, until: datetime, at: datetime, catch_up: bool = False) -> Pause:
        key = address_key(email)
        with self._db.single() as db:
            db.execute(
                """INSERT INTO pauses (email, since, until, catch_up) VALUES (%s, %s, %s, %s)
                   ON CONFLICT (email) DO UPDATE SET until = excluded.until,
                       catch_up = excluded.catch_up, resumed_at = NULL""",
                (key, ts(at), ts(until), int(catch_up)),
            )
        return cast(Pause, self.pause_of(key))

    def pause_of(self, email: str) -> Pause | None:
        row = one_dict(
            self._db.conn, "SELECT * FROM pauses WHERE email = %s", (address_key(email),)
        )
        return None if row is None else _as_pause(row)

    def resume(self, email: str, *, at: datetime, catch_up: bool | None = None) -> bool:
        key = address_key(email)
        with self._db.write() as db:
            row = one_dict(
                db,
                "SELECT * FROM pauses WHERE email = %s AND resumed_at IS NULL FOR UPDATE",
                (key,),
            )
            if row is None:
                return False
            _end(db, _as_pause(row), at, catch_up)
        return True

    def paused(self, *, at: datetime) -> set[str]:
        rows = self._db.conn.execute(
            "SELECT email FROM pauses WHERE resumed_at IS NULL AND until > %s", (ts(at),)
        )
        return {str(row[0]) for row in rows}

    def end_pauses(self, *, at: datetime) -> int:
        """End every pause whose `until` has come; a pause another instance is ending is left to
        it (SKIP LOCKED), so each is ended once."""
        with self._db.write() as db:
            rows = dicts(
                db,
                "SELECT * FROM pauses WHERE resumed_at IS NULL AND until <= %s"
                " ORDER BY email FOR UPDATE SKIP LOCKED",
                (ts(at),),
            )
            for row in rows:
                _end(db, _as_pause(row), at, None)
        return len(rows)

    def catch_ups(self) -> dict[str, datetime]:
        rows = dicts(self._db.conn, "SELECT * FROM pauses WHERE resumed_at IS NOT NULL")
        return {row["email"]: _as_pause(row).since for row in rows}

    def settle_catch_up(self, email: str) -> None:
        with self._db.single() as db:
            db.execute(
                "DELETE FROM pauses WHERE email = %s AND resumed_at IS NOT NULL",
                (address_key(email),),
            )


def _end(db: Conn, pause: Pause, at: datetime, catch_up: bool | None) -> None:
    """One pause over at `min(at, until)`: owed a catch-up, or its papers marked skipped."""
    end = min(at, pause.until)
    if pause.catch_up if catch_up is None else catch_up:
        db.execute(
            "UPDATE pauses SET resumed_at = %s, catch_up = 1 WHERE email = %s",
            (ts(end), pause.email),
        )
        return
    _skip(db, pause.email, pause.since, end)
    db.execute("DELETE FROM pauses WHERE email = %s", (pause.email,))


def _skip(db: Conn, key: str, since: datetime, end: datetime) -> None:
    """Reserve the papers first seen in [since, end) for `key` in an empty outbox row (the same
    row, period and Message-ID as SQLite's `_skip`)."""
    stamp, period = ts(end), SKIPPED_PERIOD + ts(since)
    digest = hashlib.sha256(f"{key}\0{ts(since)}".encode()).hexdigest()[:32]
    db.execute(
        """INSERT INTO outbox (subscriber, kind, period, message_id, sender, data, n_papers, state,
                               attempts, next_attempt_at, last_reply, created_at, updated_at)
           VALUES (%s, 'digest', %s, %s, '', NULL, 0, 'empty', 0, %s, 'skipped: paused', %s, %s)
           ON CONFLICT (subscriber, kind, period) DO NOTHING""",
        (key, period, f"<paused.{digest}@digestd.invalid>", stamp, stamp, stamp),
    )
    row = db.execute(
        "SELECT id FROM outbox WHERE subscriber = %s AND kind = 'digest' AND period = %s",
        (key, period),
    ).fetchone()
    assert row is not None  # inserted above, or there already
    cursor = db.execute(
        """INSERT INTO deliveries (subscriber, paper_id, outbox_id)
           SELECT %s, id, %s FROM papers WHERE first_seen_at >= %s AND first_seen_at < %s
           ON CONFLICT DO NOTHING""",
        (key, row[0], ts(since), stamp),
    )
    db.execute(
        "UPDATE outbox SET n_papers = n_papers + %s WHERE id = %s", (cursor.rowcount, row[0])
    )
