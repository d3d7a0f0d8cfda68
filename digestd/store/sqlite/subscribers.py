"""Subscribers: registration, the stable ids of unsubscribe links, suppressions, suspensions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime
from typing import cast

from digestd.core.addresses import address_key
from digestd.store.protocols import Suppression, Suspension
from digestd.store.sqlite.database import Database
from digestd.store.sqlite.values import chunks, dt, marks, opt_dt, ts

__all__ = ["SqliteSubscribers", "suspension_from_row"]


def suspension_from_row(row: sqlite3.Row) -> Suspension:
    return Suspension(
        email=row["email"],
        failures=row["failures"],
        last_code=row["last_code"],
        last_reply=row["last_reply"],
        updated_at=dt(row["updated_at"]),
        suspended_at=opt_dt(row["suspended_at"]),
    )


class SqliteSubscribers:
    """The subscribers, subscriber_ids, retired_subscriber_ids, suppressions and suspensions
    tables. Strikes are recorded by the outbox, in the transaction that fails the message."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def register(self, emails: Iterable[str], *, at: datetime) -> dict[str, datetime]:
        """Register unknown addresses at `at`; map each address, as given, to its registration time.

        Addresses are compared case-insensitively (stored lowercased).
        """
        given = list(dict.fromkeys(emails))
        keys = list(dict.fromkeys(address_key(e) for e in given))
        registered: dict[str, datetime] = {}
        with self._db.write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO subscribers (email, registered_at) VALUES (?, ?)",
                ((key, ts(at)) for key in keys),
            )
            for chunk in chunks(keys):
                sql = (
                    "SELECT email, registered_at FROM subscribers"
                    f" WHERE email IN ({marks(len(chunk))})"
                )
                registered.update((row[0], dt(row[1])) for row in db.execute(sql, chunk))
        return {email: registered[address_key(email)] for email in given}

    def count(self) -> int:
        return cast(int, self._db.scalar("SELECT COUNT(*) FROM subscribers"))

    # -- ids for unsubscribe links ---------------------------------------------------------

    def id_of(self, email: str) -> int:
        """The address's stable id for unsubscribe tokens, created on first use."""
        return self.ids_of([email])[address_key(email)]

    def ids_of(self, emails: Iterable[str]) -> dict[str, int]:
        """`id_of` many addresses at once (keys lowercased): one transaction a batch.

        Ids that exist are read without taking the write lock: the reader pages look up an id
        on the event loop for every request, and a BEGIN IMMEDIATE there waited (busy_timeout)
        for each compose batch's commit, stalling every page for seconds. Only new addresses
        need the write transaction.
        """
        keys = list(dict.fromkeys(address_key(e) for e in emails))
        found = self._known_ids(self._db.conn, keys)
        missing = [k for k in keys if k not in found]
        if missing:
            with self._db.write() as db:
                db.executemany(
                    "INSERT OR IGNORE INTO subscriber_ids (email) VALUES (?)",
                    ((k,) for k in missing),
                )
                found.update(self._known_ids(db, missing))
        return found

    @staticmethod
    def _known_ids(db: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in chunks(keys):
            sql = f"SELECT email, id FROM subscriber_ids WHERE email IN ({marks(len(chunk))})"
            found.update(db.execute(sql, chunk).fetchall())
        return found

    def email_of(self, subscriber_id: int) -> str | None:
        return cast(
            "str | None",
            self._db.scalar("SELECT email FROM subscriber_ids WHERE id = ?", (subscriber_id,)),
        )

    def retired_email(self, subscriber_id: int) -> str | None:
        """The address a retired id (`unsuppress`) was made for, or None."""
        return cast(
            "str | None",
            self._db.scalar(
                "SELECT email FROM retired_subscriber_ids WHERE id = ?", (subscriber_id,)
            ),
        )

    # -- suppressions ----------------------------------------------------------------------

    def suppress(self, email: str, *, at: datetime, via: str) -> bool:
        """Record that `email` gets nothing more; committed before returning. False if it was already."""
        with self._db.write() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO suppressions (email, at, via) VALUES (?, ?, ?)",
                (address_key(email), ts(at), via),
            )
        return cursor.rowcount == 1

    def unsuppress(self, email: str, *, at: datetime) -> bool:
        """Lift a suppression; False when there was none.

        The address's id is retired with it, so that the unsubscribe links of the mails before
        (one of which was used to leave) cannot unsubscribe it again; see `_migration_10`.
        """
        key = address_key(email)
        with self._db.write() as db:
            cursor = db.execute("DELETE FROM suppressions WHERE email = ?", (key,))
            if cursor.rowcount == 1:
                db.execute(
                    "INSERT INTO retired_subscriber_ids (id, email, retired_at)"
                    " SELECT id, email, ? FROM subscriber_ids WHERE email = ?",
                    (ts(at), key),
                )
                db.execute("DELETE FROM subscriber_ids WHERE email = ?", (key,))
        return cursor.rowcount == 1

    def is_suppressed(self, email: str) -> bool:
        row = self._db.conn.execute(
            "SELECT 1 FROM suppressions WHERE email = ?", (address_key(email),)
        ).fetchone()
        return row is not None

    def suppressed_among(self, emails: Iterable[str]) -> set[str]:
        """Which of `emails` (lowercased) are suppressed: `is_suppressed` for a batch, one query."""
        keys = list(dict.fromkeys(address_key(e) for e in emails))
        found: set[str] = set()
        for chunk in chunks(keys):
            sql = f"SELECT email FROM suppressions WHERE email IN ({marks(len(chunk))})"
            found.update(row[0] for row in self._db.conn.execute(sql, chunk))
        return found

    def suppressions(self) -> list[Suppression]:
        """Every suppressed address, most recent first."""
        rows = self._db.conn.execute(
            "SELECT email, at, via FROM suppressions ORDER BY at DESC, email"
        )
        return [Suppression(row[0], dt(row[1]), row[2]) for row in rows]

    # -- suspensions -----------------------------------------------------------------------

    def suspended(self) -> set[str]:
        """The suspended addresses (lowercased): composing skips them."""
        rows = self._db.conn.execute("SELECT email FROM suspensions WHERE suspended_at IS NOT NULL")
        return {row[0] for row in rows}

    def suspensions(self) -> list[Suspension]:
        """Every address with strikes, suspended ones first, most recent first."""
        rows = self._db.conn.execute(
            "SELECT * FROM suspensions ORDER BY suspended_at IS NULL, updated_at DESC, email"
        )
        return [suspension_from_row(row) for row in rows]

    def unsuspend(self, email: str) -> Suspension | None:
        """Lift a suspension (and forget the strikes); returns what was lifted, None if nothing."""
        with self._db.write() as db:
            row = db.execute(
                "DELETE FROM suspensions WHERE email = ? RETURNING *", (address_key(email),)
            ).fetchone()
        return None if row is None else suspension_from_row(row)
