"""Subscribers on PostgreSQL: registration, link ids, suppressions, suspensions."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

from digestd.core.addresses import address_key
from digestd.store.postgres.database import PgDatabase
from digestd.store.postgres.values import dicts, one_dict
from digestd.store.protocols import Suppression, Suspension
from digestd.store.sqlite.subscribers import suspension_from_row
from digestd.store.sqlite.values import dt, ts

__all__ = ["PgSubscribers"]


def _suspension(row: dict[str, Any]) -> Suspension:
    return suspension_from_row(row)  # type: ignore[arg-type]  # a dict reads as a sqlite3.Row


class PgSubscribers:
    """The subscribers, subscriber_ids, retired_subscriber_ids, suppressions and suspensions."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def register(self, emails: Iterable[str], *, at: datetime) -> dict[str, datetime]:
        """Register unknown addresses at `at`; each address, as given → its registration time."""
        given = list(dict.fromkeys(emails))
        keys = list(dict.fromkeys(address_key(e) for e in given))
        with self._db.write() as db:
            db.execute(
                "INSERT INTO subscribers (email, registered_at)"
                " SELECT e, %s FROM unnest(%s::text[]) AS e ON CONFLICT DO NOTHING",
                (ts(at), keys),
            )
            rows = db.execute(
                "SELECT email, registered_at FROM subscribers WHERE email = ANY(%s)", (keys,)
            )
            registered = {row[0]: dt(row[1]) for row in rows}
        return {email: registered[address_key(email)] for email in given}

    def count(self) -> int:
        return cast(int, self._db.scalar("SELECT COUNT(*) FROM subscribers"))

    def id_of(self, email: str) -> int:
        return self.ids_of([email])[address_key(email)]

    def ids_of(self, emails: Iterable[str]) -> dict[str, int]:
        """Stable ids for unsubscribe tokens, created on first use (an identity: never reused)."""
        keys = list(dict.fromkeys(address_key(e) for e in emails))
        with self._db.write() as db:
            # Only the unknown ones: an insert that conflicts would still burn an identity value.
            db.execute(
                "INSERT INTO subscriber_ids (email)"
                " SELECT e FROM unnest(%s::text[]) WITH ORDINALITY AS u(e, n)"
                " WHERE NOT EXISTS (SELECT 1 FROM subscriber_ids s WHERE s.email = e)"
                " ORDER BY n ON CONFLICT DO NOTHING",
                (keys,),
            )
            rows = db.execute("SELECT email, id FROM subscriber_ids WHERE email = ANY(%s)", (keys,))
            return {row[0]: row[1] for row in rows}

    def email_of(self, subscriber_id: int) -> str | None:
        return cast(
            "str | None",
            self._db.scalar("SELECT email FROM subscriber_ids WHERE id = %s", (subscriber_id,)),
        )

    def retired_email(self, subscriber_id: int) -> str | None:
        return cast(
            "str | None",
            self._db.scalar(
                "SELECT email FROM retired_subscriber_ids WHERE id = %s", (subscriber_id,)
            ),
        )

    def suppress(self, email: str, *, at: datetime, via: str) -> bool:
        with self._db.write() as db:
            cursor = db.execute(
                "INSERT INTO suppressions (email, at, via) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (address_key(email), ts(at), via),
            )
        return cursor.rowcount == 1

    def unsuppress(self, email: str, *, at: datetime) -> bool:
        """Lift a suppression and retire the address's id (see `SqliteSubscribers.unsuppress`)."""
        key = address_key(email)
        with self._db.write() as db:
            cursor = db.execute("DELETE FROM suppressions WHERE email = %s", (key,))
            if cursor.rowcount == 1:
                db.execute(
                    "INSERT INTO retired_subscriber_ids (id, email, retired_at)"
                    " SELECT id, email, %s FROM subscriber_ids WHERE email = %s",
                    (ts(at), key),
                )
                db.execute("DELETE FROM subscriber_ids WHERE email = %s", (key,))
        return cursor.rowcount == 1

    def is_suppressed(self, email: str) -> bool:
        row = self._db.conn.execute(
            "SELECT 1 FROM suppressions WHERE email = %s", (address_key(email),)
        ).fetchone()
        return row is not None

    def suppressed_among(self, emails: Iterable[str]) -> set[str]:
        keys = list(dict.fromkeys(address_key(e) for e in emails))
        rows = self._db.conn.execute(
            "SELECT email FROM suppressions WHERE email = ANY(%s)", (keys,)
        )
        return {row[0] for row in rows}

    def suppressions(self) -> list[Suppression]:
        rows = self._db.conn.execute(
            "SELECT email, at, via FROM suppressions ORDER BY at DESC, email"
        )
        return [Suppression(row[0], dt(row[1]), row[2]) for row in rows]

    def suspended(self) -> set[str]:
        rows = self._db.conn.execute("SELECT email FROM suspensions WHERE suspended_at IS NOT NULL")
        return {row[0] for row in rows}

    def suspensions(self) -> list[Suspension]:
        rows = dicts(
            self._db.conn,
            "SELECT * FROM suspensions ORDER BY suspended_at IS NULL, updated_at DESC, email",
        )
        return [_suspension(row) for row in rows]

    def unsuspend(self, email: str) -> Suspension | None:
        with self._db.write() as db:
            row = one_dict(
                db, "DELETE FROM suspensions WHERE email = %s RETURNING *", (address_key(email),)
            )
        return None if row is None else _suspension(row)
