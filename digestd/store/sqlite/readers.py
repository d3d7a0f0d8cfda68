"""Readers who subscribe themselves, pauses of any address, and the confirmation-mail rate limit.

For the web pages (issue 15), the life of a reader:

    store.readers.add_pending(email, name=..., spec=..., at=now)   # POST /subscribe (row: pending)
    store.readers.may_send_confirmation(email, at=now, every=10m)  # False: send nothing now
    store.readers.confirm(email, at=now)                           # POST /confirm/{token}
    store.readers.update(email, spec=..., at=now)                  # POST /preferences/{token}
    store.readers.pause(email, until=..., at=now)                  # any address, the YAML's too
    store.readers.resume(email, at=now, catch_up=True)             # "send what I missed"
    store.readers.remove(email, at=now)                            # `digestd subscribers remove`

`spec` is the YAML-shaped entry of rules/readers.py, validated there before it is stored (the
store keeps what it is given). The pipeline turns readers into subscribers (pipeline/readers.py):
a confirmed reader joins the merged subscriber set; the YAML's entry wins for an address in both.

A pause ends at `until` (`end_pauses`, run before each compose) or by `resume`. Without catch-up
the papers first seen during the pause are marked skipped in the ledger: one `empty` outbox row
(period `paused-…`) reserves them, so no later digest carries them. With catch-up nothing is
marked, and the next digest looks back to the pause's start (`catch_ups`, then
`settle_catch_up`), capped by `max_papers` like any other.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import cast

from digestd.core.addresses import address_key
from digestd.store.protocols import Pause, Reader, ReaderCounts, ReaderState
from digestd.store.sqlite.database import Database
from digestd.store.sqlite.values import dt, opt_dt, ts

__all__ = ["SKIPPED_PERIOD", "SqliteReaders"]

SKIPPED_PERIOD = "paused-"  # the period of the empty outbox row that marks a pause's papers

_VERSION = "readers_version"  # meta: bumped by every change to who is served, in its transaction
_BUMP = (
    "INSERT INTO meta (key, value) VALUES ('readers_version', '1')"
    " ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
)

_SELECT = """SELECT r.*, p.until AS p_until, p.catch_up AS p_catch_up, p.resumed_at AS p_resumed,
                    s.email IS NOT NULL AS suppressed
             FROM readers r LEFT JOIN pauses p ON p.email = r.email
                            LEFT JOIN suppressions s ON s.email = r.email"""


def _state(row: sqlite3.Row) -> ReaderState:
    if row["confirmed_at"] is None:
        return "pending"
    if row["suppressed"]:
        return "unsubscribed"
    if row["p_until"] is not None and row["p_resumed"] is None:
        return "paused"
    return "active"


def _reader(row: sqlite3.Row) -> Reader:
    paused = row["p_until"] is not None and row["p_resumed"] is None
    return Reader(
        email=row["email"],
        name=row["name"],
        state=_state(row),
        spec=json.loads(row["spec"]),
        created_at=dt(row["created_at"]),
        confirmed_at=opt_dt(row["confirmed_at"]),
        updated_at=dt(row["updated_at"]),
        version=row["version"],
        paused_until=dt(row["p_until"]) if paused else None,
        catch_up=bool(row["p_catch_up"]) if paused else False,
    )


def _pause(row: sqlite3.Row) -> Pause:
    return Pause(
        email=row["email"],
        since=dt(row["since"]),
        until=dt(row["until"]),
        catch_up=bool(row["catch_up"]),
        resumed_at=opt_dt(row["resumed_at"]),
    )


class SqliteReaders:
    """The readers, pauses and confirm_sends tables (`_migration_12`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- readers ---------------------------------------------------------------------------

    def add_pending(
        self, email: str, *, name: str | None, spec: Mapping[str, object], at: datetime
    ) -> Reader:
        """A pending row for `email` (a pending one is replaced: its window starts again); a
        confirmed reader's row is returned unchanged (their page, not this form, edits it)."""
        key, stamp = address_key(email), ts(at)
        with self._db.write() as db:
            db.execute(
                """INSERT INTO readers (email, name, spec, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (email) DO UPDATE SET name = excluded.name, spec = excluded.spec,
                       created_at = excluded.created_at, updated_at = excluded.updated_at
                   WHERE confirmed_at IS NULL""",
                (key, name, json.dumps(dict(spec)), stamp, stamp),
            )
        return cast(Reader, self.get(key))

    def get(self, email: str) -> Reader | None:
        row = self._db.conn.execute(
            f"{_SELECT} WHERE r.email = ?", (address_key(email),)
        ).fetchone()
        return None if row is None else _reader(row)

    def confirm(self, email: str, *, at: datetime) -> Reader | None:
        """Pending → confirmed (an already confirmed reader stays as is); None: no such row."""
        stamp = ts(at)
        with self._db.write() as db:
            cursor = db.execute(
                "UPDATE readers SET confirmed_at = ?, updated_at = ?"
                " WHERE email = ? AND confirmed_at IS NULL",
                (stamp, stamp, address_key(email)),
            )
            if cursor.rowcount:
                db.execute(_BUMP)
        return self.get(email)

    def version(self) -> int:
        """Counts changes to the confirmed readers (confirm, edit, removal), whichever process
        made them: a daemon that saw another number rebuilds its readers' matcher."""
        return int(self._db.meta(_VERSION) or 0)

    def update(
        self, email: str, *, spec: Mapping[str, object], at: datetime, name: str | None = None
    ) -> Reader | None:
        """A confirmed reader's new rules (and name, when given); None: no confirmed reader."""
        with self._db.write() as db:
            cursor = db.execute(
                "UPDATE readers SET spec = ?, name = COALESCE(?, name), updated_at = ?,"
                " version = version + 1 WHERE email = ? AND confirmed_at IS NOT NULL",
                (json.dumps(dict(spec)), name, ts(at), address_key(email)),
            )
            if cursor.rowcount:
                db.execute(_BUMP)
        return self.get(email) if cursor.rowcount == 1 else None

    def remove(self, email: str, *, at: datetime) -> bool:
        """Forget a reader: their row, pause, registration and ledger, and retire their link id so
        every token made for them (unsubscribe, manage) dies with the row. Messages queued for
        them expire; one that may be in a relay's hands (`sending`, `in_doubt`) keeps its papers.
        False: no such reader (a YAML address is the admin's file's business)."""
        key, stamp = address_key(email), ts(at)
        with self._db.write() as db:
            if db.execute("DELETE FROM readers WHERE email = ?", (key,)).rowcount != 1:
                return False
            db.execute(_BUMP)
            db.execute("DELETE FROM pauses WHERE email = ?", (key,))
            db.execute("DELETE FROM subscribers WHERE email = ?", (key,))
            db.execute(
                "UPDATE outbox SET state = 'expired', last_reply = 'the reader was removed',"
                " updated_at = ? WHERE subscriber = ? AND state IN ('queued', 'deferred')",
                (stamp, key),
            )
            db.execute(
                "DELETE FROM deliveries WHERE subscriber = ? AND outbox_id NOT IN"
                " (SELECT id FROM outbox WHERE subscriber = ? AND state IN ('sending', 'in_doubt'))",
                (key, key),
            )
            db.execute(
                "INSERT INTO retired_subscriber_ids (id, email, retired_at)"
                " SELECT id, email, ? FROM subscriber_ids WHERE email = ?",
                (stamp, key),
            )
            db.execute("DELETE FROM subscriber_ids WHERE email = ?", (key,))
        return True

    def active(self) -> list[Reader]:
        """Every confirmed reader (paused and unsubscribed ones too: composing skips those)."""
        rows = self._db.conn.execute(f"{_SELECT} WHERE r.confirmed_at IS NOT NULL ORDER BY r.email")
        return [_reader(row) for row in rows]

    def pending(self) -> list[Reader]:
        rows = self._db.conn.execute(f"{_SELECT} WHERE r.confirmed_at IS NULL ORDER BY r.email")
        return [_reader(row) for row in rows]

    def counts(self, *, at: datetime) -> ReaderCounts:
        with self._db.read() as db:
            found: dict[str, int] = {"pending": 0, "active": 0, "paused": 0, "unsubscribed": 0}
            for row in db.execute(_SELECT):
                found[_state(row)] += 1
            paused = db.execute(
                "SELECT COUNT(*) FROM pauses WHERE resumed_at IS NULL AND until > ?", (ts(at),)
            ).fetchone()[0]
        return ReaderCounts(found["pending"], found["active"], paused, found["unsubscribed"])

    def expire_pending(self, *, before: datetime) -> int:
        """Forget sign-ups not confirmed since `before` (`signup.confirm_within` ago)."""
        with self._db.write() as db:
            cursor = db.execute(
                "DELETE FROM readers WHERE confirmed_at IS NULL AND created_at < ?", (ts(before),)
            )
        return cursor.rowcount

    def may_send_confirmation(self, email: str, *, at: datetime, every: timedelta) -> bool:
        """Whether a confirmation (or "you are subscribed") mail may go to `email` now; a yes is
        recorded, so the next one waits `every`. Holds for every address, known or not."""
        key = address_key(email)
        with self._db.write() as db:
            last = db.execute("SELECT at FROM confirm_sends WHERE email = ?", (key,)).fetchone()
            if last is not None and at - dt(last[0]) < every:
                return False
            db.execute(
                "INSERT INTO confirm_sends (email, at) VALUES (?, ?)"
                " ON CONFLICT (email) DO UPDATE SET at = excluded.at",
                (key, ts(at)),
            )
        return True

    # -- pauses ----------------------------------------------------------------------------

    def pause(self, email: str, *, until: datetime, at: datetime, catch_up: bool = False) -> Pause:
        """Nothing for `email` until `until`; pausing again moves the end, not the start."""
        key = address_key(email)
        with self._db.write() as db:
            db.execute(
                """INSERT INTO pauses (email, since, until, catch_up) VALUES (?, ?, ?, ?)
                   ON CONFLICT (email) DO UPDATE SET until = excluded.until,
                       catch_up = excluded.catch_up, resumed_at = NULL""",
                (key, ts(at), ts(until), int(catch_up)),
            )
        return cast(Pause, self.pause_of(key))

    def pause_of(self, email: str) -> Pause | None:
        row = self._db.conn.execute(
            "SELECT * FROM pauses WHERE email = ?", (address_key(email),)
        ).fetchone()
        return None if row is None else _pause(row)

    def resume(self, email: str, *, at: datetime, catch_up: bool | None = None) -> bool:
        """End an open pause now (or at its `until`, if earlier); `catch_up` None keeps the
        choice made when pausing. False: the address was not paused."""
        key = address_key(email)
        with self._db.write() as db:
            row = db.execute(
                "SELECT * FROM pauses WHERE email = ? AND resumed_at IS NULL", (key,)
            ).fetchone()
            if row is None:
                return False
            _end(db, _pause(row), at, catch_up)
        return True

    def paused(self, *, at: datetime) -> set[str]:
        """The addresses (keys) paused at `at`: composing and alerts skip them."""
        rows = self._db.conn.execute(
            "SELECT email FROM pauses WHERE resumed_at IS NULL AND until > ?", (ts(at),)
        )
        return {row[0] for row in rows}

    def end_pauses(self, *, at: datetime) -> int:
        """End every pause whose `until` has come (as `resume` at `until` would)."""
        with self._db.write() as db:
            rows = db.execute(
                "SELECT * FROM pauses WHERE resumed_at IS NULL AND until <= ?", (ts(at),)
            ).fetchall()
            for row in rows:
                _end(db, _pause(row), at, None)
        return len(rows)

    def catch_ups(self) -> dict[str, datetime]:
        """Addresses owed one "what I missed" digest → since when it looks back."""
        rows = self._db.conn.execute("SELECT email, since FROM pauses WHERE resumed_at IS NOT NULL")
        return {row[0]: dt(row[1]) for row in rows}

    def settle_catch_up(self, email: str) -> None:
        """The catch-up digest is queued: the pause is over for good."""
        with self._db.write() as db:
            db.execute(
                "DELETE FROM pauses WHERE email = ? AND resumed_at IS NOT NULL",
                (address_key(email),),
            )


def _end(db: sqlite3.Connection, pause: Pause, at: datetime, catch_up: bool | None) -> None:
    """One pause over at `min(at, until)`: owed a catch-up, or its papers marked skipped."""
    end = min(at, pause.until)
    if pause.catch_up if catch_up is None else catch_up:
        db.execute(
            "UPDATE pauses SET resumed_at = ?, catch_up = 1 WHERE email = ?",
            (ts(end), pause.email),
        )
        return
    _skip(db, pause.email, pause.since, end)
    db.execute("DELETE FROM pauses WHERE email = ?", (pause.email,))


def _skip(db: sqlite3.Connection, key: str, since: datetime, end: datetime) -> None:
    """Reserve the papers first seen in [since, end) for `key` in an empty outbox row: the ledger
    then keeps them out of every later message, as if they had been sent."""
    stamp = ts(end)
    digest = hashlib.sha256(f"{key}\0{ts(since)}".encode()).hexdigest()[:32]
    db.execute(
        """INSERT INTO outbox (subscriber, kind, period, message_id, sender, data, n_papers, state,
                               attempts, next_attempt_at, last_reply, created_at, updated_at)
           VALUES (?, 'digest', ?, ?, '', NULL, 0, 'empty', 0, ?, 'skipped: paused', ?, ?)
           ON CONFLICT (subscriber, kind, period) DO NOTHING""",
        (
            key,
            SKIPPED_PERIOD + ts(since),
            f"<paused.{digest}@digestd.invalid>",
            stamp,
            stamp,
            stamp,
        ),
    )
    outbox_id = db.execute(
        "SELECT id FROM outbox WHERE subscriber = ? AND kind = 'digest' AND period = ?",
        (key, SKIPPED_PERIOD + ts(since)),
    ).fetchone()[0]
    cursor = db.execute(
        """INSERT OR IGNORE INTO deliveries (subscriber, paper_id, outbox_id)
           SELECT ?, id, ? FROM papers WHERE first_seen_at >= ? AND first_seen_at < ?""",
        (key, outbox_id, ts(since), stamp),
    )
    db.execute(
        "UPDATE outbox SET n_papers = n_papers + ? WHERE id = ?", (cursor.rowcount, outbox_id)
    )
