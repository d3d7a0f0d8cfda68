"""The outbox on PostgreSQL: messages queued with the ledger of the papers they carry, claimed
with `FOR UPDATE SKIP LOCKED` (several instances claim disjoint rows), sent or given up.

The same behaviour as `store/sqlite/outbox.py`; what differs is how rows are claimed: SQLite has
one writer at a time, PostgreSQL many, so a claim locks its rows and skips those another
transaction holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, cast

from digestd.core.addresses import address_key
from digestd.mail.parts import Spliced
from digestd.store.postgres.bodies import Body, PartCache, part_columns, read_bodies, store_parts
from digestd.store.postgres.database import PgDatabase
from digestd.store.postgres.outcomes import PgOutcomes
from digestd.store.postgres.pruning import prune_outbox
from digestd.store.postgres.values import dicts
from digestd.store.protocols import SELF_SERVICE_VIAS, LedgerConflict, OutboxKind, OutboxRow
from digestd.store.sqlite.pruning import PRUNE_ROWS
from digestd.store.sqlite.values import opt_dt, opt_ts, ts

__all__ = ["PgOutbox"]

_CLAIMABLE = ["queued", "deferred", "in_doubt"]
_PENDING = ["queued", "sending", "deferred", "in_doubt"]

# Oldest due first; rows another transaction holds are skipped, not waited for. The CTE keeps
# each row's state before the claim (`OutboxRow.state`: in_doubt = may be a resend).
_CLAIM = """
WITH due AS (
    SELECT id, state AS before, next_attempt_at FROM outbox
    WHERE state = ANY(%(claimable)s) AND next_attempt_at <= %(now)s
    ORDER BY next_attempt_at, id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox o SET state = 'sending', attempts = o.attempts + 1, updated_at = %(now)s,
    claimed_by = %(by)s, lease_until = %(lease_until)s
FROM due WHERE o.id = due.id
RETURNING o.id, o.subscriber, o.kind, o.period, o.message_id, o.sender, o.attempts,
          due.before AS state, due.next_attempt_at,
          -- A notice the person asked for from the sign-up form still reaches an address that
          -- left by its own hand (double opt-in back in); any other suppression blocks it.
          EXISTS (SELECT 1 FROM suppressions s WHERE s.email = o.subscriber
                  AND NOT (o.kind = 'notice' AND s.via = ANY(%(self_vias)s))) AS suppressed
"""


# One round trip per message: the row, its own bytes, where its shared parts go and the ledger's
# reservations, as one statement (the shared parts themselves are stored once, before). A
# (subscriber, kind, period) that exists already yields no row and nothing else happens.
_ENQUEUE = """
WITH o AS (
    INSERT INTO outbox (subscriber, kind, period, message_id, sender, data, n_papers, state,
                        attempts, next_attempt_at, created_at, updated_at, expires_at)
    VALUES (%(subscriber)s, %(kind)s, %(period)s, %(message_id)s, %(sender)s, NULL,
            %(n_papers)s, %(state)s, 0, %(now)s, %(now)s, %(now)s, %(expires_at)s)
    ON CONFLICT (subscriber, kind, period) DO NOTHING RETURNING id
), b AS (
    INSERT INTO outbox_bodies (outbox_id, data, zlib, canonical)
    SELECT id, %(own)s, 0, %(canonical)s FROM o WHERE %(has_body)s
), p AS (
    INSERT INTO outbox_parts (outbox_id, seq, at, part)
    SELECT o.id, x.seq, x.at, x.part
    FROM o, unnest(%(seqs)s::int[], %(ats)s::int[], %(keys)s::text[]) AS x(seq, at, part)
), d AS (
    INSERT INTO deliveries (subscriber, paper_id, outbox_id)
    SELECT %(subscriber)s, paper, o.id FROM o, unnest(%(papers)s::text[]) AS paper
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT (SELECT id FROM o), (SELECT COUNT(*) FROM d)
"""


def _outbox_from_row(row: dict[str, Any], body: Body = (b"", False)) -> OutboxRow:
    return OutboxRow(
        id=row["id"],
        subscriber=row["subscriber"],
        kind=row["kind"],
        period=row["period"],
        message_id=row["message_id"],
        sender=row["sender"],
        data=body[0],
        attempts=row["attempts"],
        state=row["state"],
        suppressed=bool(row["suppressed"]),
        canonical=body[1],
    )


class PgOutbox(PgOutcomes):
    """The outbox, outbox_bodies, message_parts, outbox_parts and deliveries (ledger) tables."""

    def __init__(self, db: PgDatabase) -> None:
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
        """Queue one message and reserve its papers, atomically (see `SqliteOutbox.enqueue`).

        Returns the outbox id, or None, changing nothing, when (subscriber, kind, period) exists
        (another instance composing the same period waits for its commit, then gets None).

        :raises ValueError: `data` is None but `paper_ids` is not empty.
        :raises LedgerConflict: a paper is already reserved for the subscriber by another message.
        """
        ids = list(dict.fromkeys(paper_ids))
        if data is None and ids:
            raise ValueError("an empty outbox row (data=None) cannot carry papers")
        key, stamp = address_key(subscriber), ts(at)
        message = None if data is None else data if isinstance(data, Spliced) else Spliced(data)
        with self._db.write() as db:
            if message is not None:
                store_parts(self._db, message)
            row = db.execute(
                _ENQUEUE,
                {
                    "subscriber": key, "kind": kind, "period": period, "message_id": message_id,
                    "sender": sender, "n_papers": len(ids), "now": stamp,
                    "state": "empty" if message is None else "queued",
                    "expires_at": opt_ts(expires_at), "has_body": message is not None,
                    "own": b"" if message is None else message.own,
                    "canonical": int(message is not None and message.canonical),
                    **part_columns(message),
                    "papers": ids,
                },
            ).fetchone()  # fmt: skip
            if row is None or row[0] is None:
                return None
            outbox_id, reserved = cast(int, row[0]), int(row[1])
            if reserved != len(ids):
                # Another message carries one of them (another instance composed it meanwhile:
                # the insert waited for its commit, then saw the conflict): this one goes, with
                # its body, parts and reservations (the foreign keys cascade).
                db.execute("DELETE FROM outbox WHERE id = %s", (outbox_id,))
                raise LedgerConflict("a paper of this message is already reserved by another")
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
        """Record a message that could not be built as failed (see `SqliteOutbox`)."""
        stamp = ts(at)
        with self._db.write() as db:
            cursor = db.execute(
                """INSERT INTO outbox (subscriber, kind, period, message_id, sender, data,
                                       n_papers, state, attempts, next_attempt_at, last_reply,
                                       created_at, updated_at)
                   VALUES (%s, %s, %s, %s, %s, NULL, 0, 'failed', 0, %s, %s, %s, %s)
                   ON CONFLICT (subscriber, kind, period) DO NOTHING""",
                (address_key(subscriber), kind, period, message_id, sender, stamp, error[:500],
                 stamp, stamp),
            )  # fmt: skip
        return cursor.rowcount == 1

    def reserved_among(
        self, subscribers: Iterable[str], paper_ids: Sequence[str]
    ) -> set[tuple[str, str]]:
        """(subscriber, paper id) for each of these papers already reserved for these subscribers."""
        keys = list(dict.fromkeys(address_key(s) for s in subscribers))
        rows = self._db.conn.execute(
            "SELECT subscriber, paper_id FROM deliveries"
            " WHERE subscriber = ANY(%s) AND paper_id = ANY(%s)",
            (keys, list(paper_ids)),
        )
        return {(row[0], row[1]) for row in rows}

    def last_digest_at(self, subscriber: str) -> datetime | None:
        return opt_dt(
            self._db.scalar(
                "SELECT MAX(created_at) FROM outbox WHERE subscriber = %s AND kind = 'digest'",
                (address_key(subscriber),),
            )
        )

    def has_period(self, subscriber: str, kind: OutboxKind, period: str) -> bool:
        row = self._db.conn.execute(
            "SELECT 1 FROM outbox WHERE subscriber = %s AND kind = %s AND period = %s",
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

        Each row is claimed once however many instances claim at the same time: the selection
        locks its rows (`FOR UPDATE SKIP LOCKED`) and another claim passes them by.
        `bodies=False`: rows with empty `data`, for `with_bodies` to fill in after the commit.
        `by`, `lease_until`: the claimant and how long its claim holds unrenewed (SQLite's doc).
        """
        params = {
            "claimable": _CLAIMABLE, "now": ts(now), "limit": limit,
            "self_vias": list(SELF_SERVICE_VIAS),
            "by": by, "lease_until": None if lease_until is None else ts(lease_until),
        }  # fmt: skip
        with self._db.write() as db:
            rows = sorted(dicts(db, _CLAIM, params), key=lambda r: (r["next_attempt_at"], r["id"]))
            if not bodies:
                return [_outbox_from_row(row) for row in rows]
            data = read_bodies(db, [row["id"] for row in rows], self._parts)
            # A row without bytes raises here (KeyError), inside the claim: it stays queued.
            return [_outbox_from_row(row, data[row["id"]]) for row in rows]

    def with_bodies(self, rows: Sequence[OutboxRow]) -> list[OutboxRow]:
        """`rows` (claimed with `bodies=False`) with their message bytes, whole.

        :raises KeyError: a row has no bytes.
        """
        with self._db.read() as db:
            found = read_bodies(db, [row.id for row in rows], self._parts)
        return [replace(row, data=found[row.id][0], canonical=found[row.id][1]) for row in rows]

    def unclaim(self, rows: Iterable[OutboxRow]) -> int:
        """Give claimed rows that were never handed to a mailer back their state and attempt."""
        given = [(row.state, row.id) for row in rows]
        if not given:
            return 0
        with self._db.write() as db:
            cursor = db.cursor()
            cursor.executemany(
                "UPDATE outbox SET state = %s, attempts = attempts - 1"
                " WHERE id = %s AND state = 'sending'",
                given,
            )
        return cursor.rowcount

    # -- counts ----------------------------------------------------------------------------

    def due_count(self, *, now: datetime) -> int:
        return cast(
            int,
            self._db.scalar(
                "SELECT COUNT(*) FROM outbox WHERE state = ANY(%s) AND next_attempt_at <= %s",
                (_CLAIMABLE, ts(now)),
            ),
        )

    def pending_count(self) -> int:
        return cast(
            int, self._db.scalar("SELECT COUNT(*) FROM outbox WHERE state = ANY(%s)", (_PENDING,))
        )

    def last_sent_at(self) -> datetime | None:
        return opt_dt(self._db.scalar("SELECT MAX(sent_at) FROM outbox WHERE state = 'sent'"))

    def prune(self, *, before: datetime, limit: int = PRUNE_ROWS) -> int:
        return prune_outbox(self._db, before=before, limit=limit)
