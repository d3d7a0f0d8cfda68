"""What became of an outbox message (PostgreSQL): sent, retried, failed or given up, with its
ledger entries, each outcome one transaction (see `store/sqlite/outcomes.py`)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from digestd.core.addresses import address_key
from digestd.store.postgres.database import PgDatabase
from digestd.store.postgres.ledger import expire, release, strike, transition
from digestd.store.protocols import SuspendPolicy
from digestd.store.sqlite.values import ts

__all__ = ["PgOutcomes"]

# Rows a sender may still expire: anything not final (a claimed row may turn out to be too old).
_EXPIRABLE = ("queued", "sending", "deferred", "in_doubt")


_MARK_SENT = """
WITH s AS (
    UPDATE outbox SET state = 'sent', sent_at = %s, last_code = %s, last_reply = %s,
                      updated_at = %s
    WHERE id = %s AND state IN ('sending', 'in_doubt') RETURNING subscriber
), d AS (
    UPDATE deliveries SET sent_at = %s WHERE outbox_id = %s AND EXISTS (SELECT 1 FROM s)
), x AS (
    -- The run of hard failures ends; the strikes of bounces stay (a relay accepts and the
    -- mailbox bounces later: its 250 proves nothing).
    DELETE FROM suspensions
    WHERE suspended_at IS NULL AND bounces = 0 AND email IN (SELECT subscriber FROM s)
), y AS (
    UPDATE suspensions SET failures = bounces
    WHERE suspended_at IS NULL AND bounces > 0 AND failures > bounces
      AND email IN (SELECT subscriber FROM s)
)
SELECT COUNT(*) FROM s
"""


class PgOutcomes:
    """The outbox's state transitions (the queueing and claiming side is `PgOutbox`)."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def mark_sent(self, outbox_id: int, *, at: datetime, code: int | None, reply: str) -> None:
        """The relay accepted the message. :raises ValueError: the row is not in 'sending'."""
        stamp = ts(at)
        with self._db.single() as db:
            # One statement: the state, the ledger's stamp (the ledger says "sent" in the very
            # transaction that says the message was sent) and the end of the address's run of
            # hard failures.
            sent = db.execute(_MARK_SENT, (stamp, code, reply, stamp, outbox_id, stamp, outbox_id))
            if sent.fetchone() != (1,):
                transition(db, outbox_id, ("sending", "in_doubt"), "state = state", ())  # raises

    def mark_deferred(
        self, outbox_id: int, *, at: datetime, retry_at: datetime, code: int | None, reply: str
    ) -> None:
        """A transient failure: try again at `retry_at`."""
        self._retry_later(outbox_id, "deferred", at=at, retry_at=retry_at, outcome=(code, reply))

    def mark_in_doubt(
        self, outbox_id: int, *, at: datetime, retry_at: datetime, code: int | None, reply: str
    ) -> None:
        """The connection died after the final ".": retried with the same bytes and Message-ID."""
        self._retry_later(outbox_id, "in_doubt", at=at, retry_at=retry_at, outcome=(code, reply))

    def _retry_later(
        self,
        outbox_id: int,
        state: Literal["deferred", "in_doubt"],
        *,
        at: datetime,
        retry_at: datetime,
        outcome: tuple[int | None, str],
    ) -> None:
        with self._db.single() as db:
            transition(
                db, outbox_id, ("sending",),
                "state = %s, next_attempt_at = %s, last_code = %s, last_reply = %s,"
                " updated_at = %s",
                (state, ts(retry_at), *outcome, ts(at)),
            )  # fmt: skip

    def mark_failed(
        self,
        outbox_id: int,
        *,
        at: datetime,
        code: int | None,
        reply: str,
        suspend: SuspendPolicy | None = None,
    ) -> bool:
        """A final failure; the papers are released; with `suspend`, a strike (see SQLite's)."""
        stamp = ts(at)
        with self._db.write() as db:
            transition(
                db, outbox_id, ("sending",),
                "state = 'failed', last_code = %s, last_reply = %s, updated_at = %s",
                (code, reply, stamp),
            )  # fmt: skip
            release(db, [outbox_id])
            if suspend is None:
                return False
            row = db.execute("SELECT subscriber FROM outbox WHERE id = %s", (outbox_id,))
            email = row.fetchone()
            assert email is not None
            return strike(db, email[0], stamp, (code, reply), suspend)

    def mark_expired(self, outbox_id: int, *, at: datetime, reason: str) -> None:
        """Give up on a row not yet final; the papers are released."""
        with self._db.write() as db:
            transition(
                db, outbox_id, _EXPIRABLE,
                "state = 'expired', last_reply = %s, updated_at = %s",
                (reason, ts(at)),
            )  # fmt: skip
            release(db, [outbox_id])

    def release_stale(self, *, now: datetime, reason: str) -> int:
        """Expire queued/deferred rows past their expires_at, releasing their papers."""
        stamp = ts(now)
        with self._db.write() as db:
            # SKIP LOCKED: a row another instance holds is that instance's to settle.
            rows = db.execute(
                "SELECT id, last_code, last_reply FROM outbox"
                " WHERE state IN ('queued', 'deferred')"
                " AND expires_at IS NOT NULL AND expires_at <= %s FOR UPDATE SKIP LOCKED",
                (stamp,),
            ).fetchall()
            return expire(db, [(r[0], reason + _last_error(r[1], r[2])) for r in rows], stamp)

    def expire_except(self, keep: Iterable[str], *, at: datetime, reason: str) -> int:
        """Expire unsent rows of subscribers not in `keep` (removed from the file)."""
        kept = {address_key(e) for e in keep}
        with self._db.write() as db:
            rows = db.execute(
                "SELECT id, subscriber FROM outbox"
                " WHERE state IN ('queued', 'deferred', 'in_doubt') FOR UPDATE SKIP LOCKED"
            ).fetchall()
            return expire(db, [(r[0], reason) for r in rows if r[1] not in kept], ts(at))

    def recover(self, *, now: datetime, by: str | None = None) -> int:
        """Rows left in 'sending' become 'in_doubt', due at once (same Message-ID and bytes).

        `by`: this instance's name. Others on the database are sending theirs: only its own
        rows (an earlier run under the same name), unnamed ones and expired leases are taken.
        """
        stamp = ts(now)
        where, params = "", tuple[str, ...]()
        if by is not None:
            where = " AND (claimed_by IS NULL OR claimed_by = %s OR lease_until <= %s)"
            params = (by, stamp)
        with self._db.write() as db:
            cursor = db.execute(
                "UPDATE outbox SET state = 'in_doubt', next_attempt_at = %s, updated_at = %s,"
                " claimed_by = NULL, lease_until = NULL"
                f" WHERE state = 'sending'{where}",
                (stamp, stamp, *params),
            )
        return cursor.rowcount

    def recover_expired(self, *, now: datetime) -> int:
        """Rows in 'sending' whose lease passed (their instance died): in doubt, due now."""
        stamp = ts(now)
        with self._db.write() as db:
            cursor = db.execute(
                "UPDATE outbox SET state = 'in_doubt', next_attempt_at = %s, updated_at = %s,"
                " claimed_by = NULL, lease_until = NULL"
                " WHERE state = 'sending' AND lease_until <= %s",
                (stamp, stamp, stamp),
            )
        return cursor.rowcount

    def renew_leases(self, by: str, *, until: datetime) -> int:
        """The heartbeat: every row `by` is sending stays its own until `until`."""
        with self._db.write() as db:
            cursor = db.execute(
                "UPDATE outbox SET lease_until = %s WHERE state = 'sending' AND claimed_by = %s",
                (ts(until), by),
            )
        return cursor.rowcount


def _last_error(code: int | None, reply: str | None) -> str:
    if reply is None:
        return ""
    return "; last error: " + ("" if code is None else f"{code} ") + reply
