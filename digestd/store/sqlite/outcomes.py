"""What became of an outbox message: sent, retried, failed or given up, with its ledger entries.

Each outcome is one transaction: the message's new state and what the ledger says about its
papers (stamped sent, or released for the next message) always commit together.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from digestd.core.addresses import address_key
from digestd.store.protocols import SuspendPolicy
from digestd.store.sqlite.database import Database
from digestd.store.sqlite.ledger import expire, release, strike, transition
from digestd.store.sqlite.values import ts

__all__ = ["SqliteOutcomes"]

# Rows a sender may still expire: anything not final (a claimed row may turn out to be too old).
_EXPIRABLE = ("queued", "sending", "deferred", "in_doubt")


class SqliteOutcomes:
    """The outbox's state transitions (the queueing and claiming side is `SqliteOutbox`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def mark_sent(self, outbox_id: int, *, at: datetime, code: int | None, reply: str) -> None:
        """The relay accepted the message (250 after DATA).

        :raises ValueError: the row is not in 'sending' (nor 'in_doubt').
        """
        stamp = ts(at)
        with self._db.write() as db:
            # From 'in_doubt' too: the relay took it after the lease passed and the row was
            # recovered for a re-send; "sent" is the truth, and the re-send is saved.
            transition(
                db, outbox_id, ("sending", "in_doubt"),
                "state = 'sent', sent_at = ?, last_code = ?, last_reply = ?, updated_at = ?",
                (stamp, code, reply, stamp),
            )  # fmt: skip
            # The ledger says "sent" in the very transaction that says the message was sent.
            db.execute("UPDATE deliveries SET sent_at = ? WHERE outbox_id = ?", (stamp, outbox_id))
            # A message accepted ends the address's run of hard failures; the strikes of bounces
            # stay (a relay accepts and the mailbox bounces later: its 250 proves nothing).
            db.execute(
                "DELETE FROM suspensions WHERE suspended_at IS NULL AND bounces = 0 AND email ="
                " (SELECT subscriber FROM outbox WHERE id = ?)",
                (outbox_id,),
            )
            db.execute(
                "UPDATE suspensions SET failures = bounces WHERE suspended_at IS NULL"
                " AND failures > bounces AND email = (SELECT subscriber FROM outbox WHERE id = ?)",
                (outbox_id,),
            )

    def mark_deferred(
        self, outbox_id: int, *, at: datetime, retry_at: datetime, code: int | None, reply: str
    ) -> None:
        """A transient failure: try again at `retry_at`.

        :raises ValueError: the row is not in 'sending'.
        """
        self._retry_later(outbox_id, "deferred", at=at, retry_at=retry_at, outcome=(code, reply))

    def mark_in_doubt(
        self, outbox_id: int, *, at: datetime, retry_at: datetime, code: int | None, reply: str
    ) -> None:
        """The connection died after the final "." went out: the relay may have the message.

        It is retried at `retry_at` with the same bytes and Message-ID, and never expires.

        :raises ValueError: the row is not in 'sending'.
        """
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
        with self._db.write() as db:
            transition(
                db, outbox_id, ("sending",),
                "state = ?, next_attempt_at = ?, last_code = ?, last_reply = ?, updated_at = ?",
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
        """A final failure; the papers are released for the subscriber's next message.

        With `suspend` the failure was the address's fault (a 5xx): it counts as a strike, and
        `suspend` (the caller's policy) says, given the consecutive strikes, whether the address
        is suspended now (a sent message resets the count); its other pending messages then
        expire, all in this transaction. Returns whether it is now suspended.

        :raises ValueError: the row is not in 'sending'.
        """
        stamp = ts(at)
        with self._db.write() as db:
            transition(
                db, outbox_id, ("sending",),
                "state = 'failed', last_code = ?, last_reply = ?, updated_at = ?",
                (code, reply, stamp),
            )  # fmt: skip
            release(db, [outbox_id])
            if suspend is None:
                return False
            email = db.execute("SELECT subscriber FROM outbox WHERE id = ?", (outbox_id,))
            return strike(db, email.fetchone()[0], stamp, (code, reply), suspend)

    def mark_expired(self, outbox_id: int, *, at: datetime, reason: str) -> None:
        """Give up on a row not yet final; the papers are released.

        :raises ValueError: the row is already final (sent, failed, expired, empty) or unknown.
        """
        with self._db.write() as db:
            transition(
                db, outbox_id, _EXPIRABLE,
                "state = 'expired', last_reply = ?, updated_at = ?",
                (reason, ts(at)),
            )  # fmt: skip
            release(db, [outbox_id])

    def release_stale(self, *, now: datetime, reason: str) -> int:
        """Expire queued/deferred rows past their expires_at, releasing their papers; returns count.

        Each gets `reason`, and its last error after it ("; last error: CODE REPLY"): "why was it
        never sent" has one answer. In-doubt rows are left alone: they may have been delivered.
        """
        stamp = ts(now)
        with self._db.write() as db:
            rows = db.execute(
                "SELECT id, last_code, last_reply FROM outbox WHERE state IN ('queued', 'deferred')"
                " AND expires_at IS NOT NULL AND expires_at <= ?",
                (stamp,),
            ).fetchall()
            return expire(db, [(r[0], reason + _last_error(r[1], r[2])) for r in rows], stamp)

    def expire_except(self, keep: Iterable[str], *, at: datetime, reason: str) -> int:
        """Expire unsent rows of subscribers not in `keep` (removed from the file); returns count.

        In-doubt rows go too: a removed subscriber must get nothing more, not even a re-send.
        """
        kept = {address_key(e) for e in keep}
        with self._db.write() as db:
            rows = db.execute(
                "SELECT id, subscriber FROM outbox WHERE state IN ('queued', 'deferred', 'in_doubt')"
            ).fetchall()
            return expire(db, [(r[0], reason) for r in rows if r[1] not in kept], ts(at))

    def recover(self, *, now: datetime, by: str | None = None) -> int:
        """At start-up: rows left in 'sending' were interrupted mid-send and become 'in_doubt'.

        They are due at once and will be re-sent with the same Message-ID and bytes. `by`: this
        instance's name, when others may be sending from the same state: only its own rows (an
        earlier run under the same name), unnamed ones and expired leases are taken back.
        """
        stamp = ts(now)
        where, params = "", tuple[str, ...]()
        if by is not None:
            where = " AND (claimed_by IS NULL OR claimed_by = ? OR lease_until <= ?)"
            params = (by, stamp)
        with self._db.write() as db:
            cursor = db.execute(
                "UPDATE outbox SET state = 'in_doubt', next_attempt_at = ?, updated_at = ?,"
                " claimed_by = NULL, lease_until = NULL"
                f" WHERE state = 'sending'{where}",
                (stamp, stamp, *params),
            )
        return cursor.rowcount

    def recover_expired(self, *, now: datetime) -> int:
        """While running: rows in 'sending' whose lease passed (their instance died, or lost the
        database for longer than a lease) become 'in_doubt', due now, same Message-ID."""
        stamp = ts(now)
        with self._db.write() as db:
            cursor = db.execute(
                "UPDATE outbox SET state = 'in_doubt', next_attempt_at = ?, updated_at = ?,"
                " claimed_by = NULL, lease_until = NULL"
                " WHERE state = 'sending' AND lease_until <= ?",
                (stamp, stamp, stamp),
            )
        return cursor.rowcount

    def renew_leases(self, by: str, *, until: datetime) -> int:
        """The heartbeat: every row `by` is sending stays its own until `until`."""
        with self._db.write() as db:
            cursor = db.execute(
                "UPDATE outbox SET lease_until = ? WHERE state = 'sending' AND claimed_by = ?",
                (ts(until), by),
            )
        return cursor.rowcount


def _last_error(code: int | None, reply: str | None) -> str:
    if reply is None:
        return ""
    return "; last error: " + ("" if code is None else f"{code} ") + reply
