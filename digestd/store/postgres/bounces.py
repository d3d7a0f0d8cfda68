"""Bounces and complaints on PostgreSQL: what each reported, and what it did to the address (a
strike toward suspension, or a suppression), in one transaction (see `store/sqlite/bounces.py`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, cast, get_args

from digestd.store.postgres.database import PgDatabase
from digestd.store.postgres.ledger import strike
from digestd.store.protocols import BounceEvent, BounceKind, SuspendPolicy
from digestd.store.sqlite.values import ts

__all__ = ["PgBounces"]

Recorded = Literal["duplicate", "recorded", "suspended", "suppressed"]


class PgBounces:
    """The bounces table; strikes go to `suspensions`, complaints to `suppressions`."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def kind_of(self, digest: str) -> BounceKind | None:
        return cast(
            "BounceKind | None",
            self._db.scalar("SELECT kind FROM bounces WHERE digest = %s", (digest,)),
        )

    def recipient_of(self, outbox_id: int) -> str | None:
        return cast(
            "str | None",
            self._db.scalar("SELECT subscriber FROM outbox WHERE id = %s", (outbox_id,)),
        )

    def record(
        self, event: BounceEvent, *, at: datetime, suspend: SuspendPolicy | None
    ) -> Recorded:
        """Record `event` and act on it, in one transaction (see `SqliteBounces.record`)."""
        stamp = ts(at)
        with self._db.write() as db:
            cursor = db.execute(
                "INSERT INTO bounces (digest, at, kind, outbox_id, email, status, detail)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (event.digest, stamp, event.kind, event.outbox_id, event.email, event.status,
                 event.detail),
            )  # fmt: skip
            if cursor.rowcount == 0:
                return "duplicate"
            email = event.email
            if email is None:
                return "recorded"
            if event.kind == "complaint":
                db.execute(
                    "INSERT INTO suppressions (email, at, via) VALUES (%s, %s, 'complaint')"
                    " ON CONFLICT DO NOTHING",
                    (email, stamp),
                )
                return "suppressed"
            if event.kind != "permanent" or suspend is None or self._struck(event):
                return "recorded"
            outcome = (None, f"bounce {event.status}: {event.detail}"[:500])
            suspended = strike(db, email, stamp, outcome, suspend)
            db.execute("UPDATE suspensions SET bounces = bounces + 1 WHERE email = %s", (email,))
            return "suspended" if suspended else "recorded"

    def _struck(self, event: BounceEvent) -> bool:
        row = self._db.conn.execute(
            "SELECT 1 FROM bounces WHERE outbox_id = %s AND kind = 'permanent' AND digest != %s",
            (event.outbox_id, event.digest),
        )
        return row.fetchone() is not None

    def counts(self) -> dict[BounceKind, int]:
        found = dict(self._db.conn.execute("SELECT kind, COUNT(*) FROM bounces GROUP BY kind"))
        return {kind: int(found.get(kind, 0)) for kind in get_args(BounceKind)}
