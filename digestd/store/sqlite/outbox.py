"""The outbox: messages queued with the ledger of the papers they carry, claimed, sent or given up.

Writes that must be atomic across tables run in one transaction here: enqueue (row, bytes, parts,
ledger), mark-sent (state and the ledger's stamp), fail and expire (state and release).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import cast

from digestd.core.addresses import address_key
from digestd.mail.parts import Spliced
from digestd.store.protocols import SELF_SERVICE_VIAS, LedgerConflict, OutboxKind, OutboxRow
from digestd.store.sqlite.bodies import Body, PartCache, queue_body, read_bodies
from digestd.store.sqlite.database import Database
from digestd.store.sqlite.outcomes import SqliteOutcomes
from digestd.store.sqlite.pruning import PRUNE_ROWS, prune_outbox
from digestd.store.sqlite.values import chunks, marks, opt_dt, opt_ts, ts

__all__ = ["SqliteOutbox"]

_CLAIMABLE = ("queued", "deferred", "in_doubt")
_PENDING = ("queued", "sending", "deferred", "in_doubt")


def _outbox_from_row(row: sqlite3.Row, *, attempts: int, body: Body = (b"", False)) -> OutboxRow:
    return OutboxRow(
        id=row["id"],
        subscriber=row["subscriber"],
        kind=row["kind"],
        period=row["period"],
        message_id=row["message_id"],
        sender=row["sender"],
        data=body[0],
        attempts=attempts,
        state=row["state"],
        suppressed=bool(row["suppressed"]),
        canonical=body[1],
    )


class SqliteOutbox(SqliteOutcomes):
    """The outbox, outbox_bodies, message_parts, outbox_parts and deliveries (ledger) tables:
    queueing and claiming here, what became of a message in `SqliteOutcomes`."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._parts = PartCache()

    # -- queueing --------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        subscriber: str,
        kind: OutboxKind,
        period: str,
        message_id: str,
        sender: str,
        data: bytes | Spliced | None,
        paper_ids: Sequence[str],
        at: datetime,
        expires_at: datetime | None = None,
    ) -> int | None:
        """Queue one message and reserve its papers for `subscriber`, atomically.

        `data=None` records an empty period (state 'empty') so it is not composed again.
        `data` may come `Spliced`: its parts are stored once however many messages share them,
        and claims hand out the whole message (`OutboxRow.canonical` if it was marked so).
        Returns the outbox id, or None, changing nothing, when (subscriber, kind, period) exists.

        :raises ValueError: `data` is None but `paper_ids` is not empty.
        :raises LedgerConflict: a paper is already reserved for the subscriber by another
            message; nothing of this one is kept (inside a `batch`, the rest of it is).
        """
        ids = list(dict.fromkeys(paper_ids))
        if data is None and ids:
            raise ValueError("an empty outbox row (data=None) cannot carry papers")
        key, stamp = address_key(subscriber), ts(at)
        with self._db.write() as db:
            # Not RETURNING: it doubles the cost of this insert (~25 µs, the most of any here).
            cursor = db.execute(
                """INSERT INTO outbox (subscriber, kind, period, message_id, sender, data, n_papers,
                                       state, attempts, next_attempt_at, created_at, updated_at,
                                       expires_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)
                   ON CONFLICT (subscriber, kind, period) DO NOTHING""",
                (key, kind, period, message_id, sender, None, len(ids),
                 "empty" if data is None else "queued", stamp, stamp, stamp, opt_ts(expires_at)),
            )  # fmt: skip
            if cursor.rowcount != 1:
                return None
            outbox_id = cast(int, cursor.lastrowid)
            if data is not None:
                queue_body(self._db, outbox_id, data)
            _reserve(db, key, outbox_id, ids)
        return outbox_id

    def record_unbuilt(
        self,
        *,
        subscriber: str,
        kind: OutboxKind,
        period: str,
        message_id: str,
        sender: str,
        error: str,
        at: datetime,
    ) -> bool:
        """Record a message that could not be built as failed, with `error` as its reply, so that
        `digestd status` shows it; it reserves no paper. False when (subscriber, kind, period)
        exists already."""
        stamp = ts(at)
        with self._db.write() as db:
            cursor = db.execute(
                """INSERT INTO outbox (subscriber, kind, period, message_id, sender, data, n_papers,
                                       state, attempts, next_attempt_at, last_reply, created_at,
                                       updated_at)
                   VALUES (?, ?, ?, ?, ?, NULL, 0, 'failed', 0, ?, ?, ?, ?)
                   ON CONFLICT (subscriber, kind, period) DO NOTHING""",
                (address_key(subscriber), kind, period, message_id, sender, stamp, error[:500],
                 stamp, stamp),
            )  # fmt: skip
        return cursor.rowcount == 1

    def reserved_among(
        self, subscribers: Iterable[str], paper_ids: Sequence[str]
    ) -> set[tuple[str, str]]:
        """(subscriber, paper id) for each of these papers already reserved for these subscribers
        (a primary-key lookup per pair, whatever the size of the ledger)."""
        keys = list(dict.fromkeys(address_key(s) for s in subscribers))
        papers = json.dumps(list(paper_ids))
        found: set[tuple[str, str]] = set()
        for chunk in chunks(keys):
            found.update(
                (row[0], row[1])
                for row in self._db.conn.execute(
                    f"SELECT subscriber, paper_id FROM deliveries"
                    f" WHERE subscriber IN ({marks(len(chunk))})"
                    " AND paper_id IN (SELECT value FROM json_each(?))",
                    (*chunk, papers),
                )
            )
        return found

    def last_digest_at(self, subscriber: str) -> datetime | None:
        """When the subscriber's latest digest (or empty period) was composed."""
        return opt_dt(
            self._db.scalar(
                "SELECT MAX(created_at) FROM outbox WHERE subscriber = ? AND kind = 'digest'",
                (address_key(subscriber),),
            )
        )

    def has_period(self, subscriber: str, kind: OutboxKind, period: str) -> bool:
        """Whether a message (or an empty marker) exists for this key, whatever its state."""
        row = self._db.conn.execute(
            "SELECT 1 FROM outbox WHERE subscriber = ? AND kind = ? AND period = ?",
            (address_key(subscriber), kind, period),
        ).fetchone()
        return row is not None

    # -- claiming --------------------------------------------------------------------------

    def claim_due(
        self,
        *,
        now: datetime,
        limit: int = 100,
        bodies: bool = True,
        by: str | None = None,
        lease_until: datetime | None = None,
    ) -> list[OutboxRow]:
        """Move due rows to 'sending' (attempts + 1) and return them, oldest due first, committed.

        Each row is claimed once: the selection and the update are one write transaction.
        `bodies=False`: the rows come with empty `data`, for `with_bodies` to fill in outside the
        write transaction (and on another connection, if the caller likes).
        `by` and `lease_until` record the claimant and how long its claim holds without renewal
        (`recover_expired`).
        """
        stamp = ts(now)
        lease = (by, opt_ts(lease_until))
        with self._db.write() as db:
            ids = _due_ids(db, stamp, limit)
            rows = _rows_by_id(db, ids)
            data = read_bodies(db, ids, self._parts) if bodies else dict.fromkeys(ids, (b"", False))
            db.executemany(
                "UPDATE outbox SET state = 'sending', attempts = attempts + 1, updated_at = ?,"
                " claimed_by = ?, lease_until = ? WHERE id = ?",
                ((stamp, *lease, row["id"]) for row in rows),
            )
            # A row without bytes raises here (KeyError), inside the claim: it stays queued.
            return [
                _outbox_from_row(row, attempts=row["attempts"] + 1, body=data[row["id"]])
                for row in rows
            ]

    def with_bodies(self, rows: Sequence[OutboxRow]) -> list[OutboxRow]:
        """`rows` (claimed with `bodies=False`) with their message bytes, whole.

        :raises KeyError: a row has no bytes.
        """
        with self._db.read() as db:
            found = read_bodies(db, [row.id for row in rows], self._parts)
        return [replace(row, data=found[row.id][0], canonical=found[row.id][1]) for row in rows]

    def unclaim(self, rows: Iterable[OutboxRow]) -> int:
        """Give claimed rows that were never handed to a mailer back their state and attempt."""
        with self._db.write() as db:
            cursor = db.executemany(
                "UPDATE outbox SET state = ?, attempts = attempts - 1"
                " WHERE id = ? AND state = 'sending'",
                ((row.state, row.id) for row in rows),
            )
        return cursor.rowcount

    # -- counts ----------------------------------------------------------------------------

    def due_count(self, *, now: datetime) -> int:
        """Rows `claim_due` would hand out now (for a progress bar's total)."""
        return cast(
            int,
            self._db.scalar(
                f"SELECT COUNT(*) FROM outbox WHERE state IN ({marks(len(_CLAIMABLE))})"
                " AND next_attempt_at <= ?",
                (*_CLAIMABLE, ts(now)),
            ),
        )

    def pending_count(self) -> int:
        """Rows not final yet: queued, sending, deferred, in_doubt."""
        return cast(
            int,
            self._db.scalar(
                f"SELECT COUNT(*) FROM outbox WHERE state IN ({marks(len(_PENDING))})", _PENDING
            ),
        )

    def last_sent_at(self) -> datetime | None:
        """When the relay last accepted a message."""
        return opt_dt(self._db.scalar("SELECT MAX(sent_at) FROM outbox WHERE state = 'sent'"))

    def prune(self, *, before: datetime, limit: int = PRUNE_ROWS) -> int:
        """See `prune_outbox`: the bytes of messages ended before `before` go, rows stay."""
        return prune_outbox(self._db, before=before, limit=limit)


def _reserve(db: sqlite3.Connection, key: str, outbox_id: int, paper_ids: Sequence[str]) -> None:
    """Reserve `paper_ids` for subscriber `key` in the ledger, for message `outbox_id`.

    :raises LedgerConflict: another message carries one of them (e.g. a concurrent process
        composed from an older snapshot): this one goes, with its body, parts and reservations
        (the foreign keys cascade). Costs nothing when there is no conflict.
    """
    reserved = db.executemany(
        "INSERT OR IGNORE INTO deliveries (subscriber, paper_id, outbox_id) VALUES (?, ?, ?)",
        ((key, paper_id, outbox_id) for paper_id in paper_ids),
    ).rowcount
    if reserved != len(paper_ids):
        db.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,))
        raise LedgerConflict("a paper of this message is already reserved by another")


def _due_ids(db: sqlite3.Connection, stamp: str, limit: int) -> list[int]:
    """Due ids from the (state, next_attempt_at) index alone, one ordered range per state.

    A single `state IN (...) ORDER BY` query sorts every due row and reads past each row's
    message bytes to do so; three index ranges merged here cost O(limit).
    """
    due: list[tuple[str, int]] = []
    for state in _CLAIMABLE:
        due += (
            (row[0], row[1])
            for row in db.execute(
                "SELECT next_attempt_at, id FROM outbox INDEXED BY outbox_due"
                " WHERE state = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, id"
                " LIMIT ?",
                (state, stamp, limit),
            )
        )
    return [row_id for _, row_id in sorted(due)[:limit]]


def _rows_by_id(db: sqlite3.Connection, ids: Sequence[int]) -> list[sqlite3.Row]:
    if not ids:
        return []
    sql = (
        "SELECT o.id, o.subscriber, o.kind, o.period, o.message_id, o.sender, o.attempts,"
        " o.state,"
        # A notice the person asked for from the sign-up form still reaches an address that
        # left by its own hand (double opt-in back in); any other suppression blocks it.
        " EXISTS (SELECT 1 FROM suppressions s WHERE s.email = o.subscriber"
        f" AND NOT (o.kind = 'notice' AND s.via IN ({marks(len(SELF_SERVICE_VIAS))})))"
        f" AS suppressed FROM outbox o WHERE o.id IN ({marks(len(ids))})"
    )
    found = {row["id"]: row for row in db.execute(sql, (*SELF_SERVICE_VIAS, *ids))}
    return [found[i] for i in ids]
