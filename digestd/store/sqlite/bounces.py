"""Bounces and complaints read from the bounce mailbox: what each reported, and what it did to the
address (a strike toward suspension, or a suppression), in one transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, cast, get_args

from digestd.store.protocols import BounceEvent, BounceKind, SuspendPolicy
from digestd.store.sqlite.database import Database
from digestd.store.sqlite.ledger import strike
from digestd.store.sqlite.values import ts

__all__ = ["SqliteBounces"]

Recorded = Literal["duplicate", "recorded", "suspended", "suppressed"]


class SqliteBounces:
    """The bounces table; strikes go to `suspensions`, complaints to `suppressions`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def kind_of(self, digest: str) -> BounceKind | None:
        """What this very message (by the SHA-256 of its bytes) was recorded as; None: new."""
        return cast(
            "BounceKind | None",
            self._db.scalar("SELECT kind FROM bounces WHERE digest = ?", (digest,)),
        )

    def recipient_of(self, outbox_id: int) -> str | None:
        """The address outbox message `outbox_id` was for (the VERP token's MAC is checked
        against it), or None for an unknown id."""
        return cast(
            "str | None",
            self._db.scalar("SELECT subscriber FROM outbox WHERE id = ?", (outbox_id,)),
        )

    def record(
        self, event: BounceEvent, *, at: datetime, suspend: SuspendPolicy | None
    ) -> Recorded:
        """Record `event` and act on it, in one transaction.

        A permanent bounce strikes its address once per message (two reports of one message are
        one failure) and may suspend it (`suspend`, the drain's policy; None: no strikes); a
        complaint suppresses the address at once, `via` "complaint".
        """
        stamp = ts(at)
        with self._db.write() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO bounces (digest, at, kind, outbox_id, email, status, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
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
                    "INSERT OR IGNORE INTO suppressions (email, at, via) VALUES (?, ?, 'complaint')",
                    (email, stamp),
                )
                return "suppressed"
            if event.kind != "permanent" or suspend is None or self._struck(event):
                return "recorded"
            outcome = (None, f"bounce {event.status}: {event.detail}"[:500])
            suspended = strike(db, email, stamp, outcome, suspend)
            db.execute("UPDATE suspensions SET bounces = bounces + 1 WHERE email = ?", (email,))
            return "suspended" if suspended else "recorded"

    def _struck(self, event: BounceEvent) -> bool:
        """Whether an earlier report of the same message already struck the address."""
        row = self._db.conn.execute(
            "SELECT 1 FROM bounces WHERE outbox_id = ? AND kind = 'permanent' AND digest != ?",
            (event.outbox_id, event.digest),
        )
        return row.fetchone() is not None

    def counts(self) -> dict[BounceKind, int]:
        """Messages read, by kind (every kind present, zero included)."""
        found = dict(self._db.conn.execute("SELECT kind, COUNT(*) FROM bounces GROUP BY kind"))
        return {kind: int(found.get(kind, 0)) for kind in get_args(BounceKind)}
