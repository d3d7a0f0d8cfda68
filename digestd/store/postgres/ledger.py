"""Outbox state transitions and the ledger entries they keep or release (PostgreSQL).

Every function runs inside the caller's write transaction, so a message's new state and what the
ledger says about its papers always commit together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from digestd.store.postgres.values import Conn
from digestd.store.protocols import SuspendPolicy

__all__ = ["expire", "release", "strike", "transition"]


def transition(
    db: Conn, outbox_id: int, from_states: Sequence[str], assignments: str, params: Sequence[Any]
) -> None:
    """Apply `assignments` to row `outbox_id` if it is in one of `from_states`.

    :raises ValueError: it is not (or does not exist).
    """
    cursor = db.execute(
        f"UPDATE outbox SET {assignments} WHERE id = %s AND state = ANY(%s)",
        (*params, outbox_id, list(from_states)),
    )
    if cursor.rowcount != 1:
        row = db.execute("SELECT state FROM outbox WHERE id = %s", (outbox_id,)).fetchone()
        found = "no such row" if row is None else f"state {row[0]!r}"
        raise ValueError(f"outbox row {outbox_id}: expected {'/'.join(from_states)}, {found}")


def release(db: Conn, ids: Sequence[int]) -> None:
    """The papers of rows `ids` are free again for their subscriber's next message."""
    db.execute("DELETE FROM deliveries WHERE outbox_id = ANY(%s)", (list(ids),))


def expire(db: Conn, reasons: Sequence[tuple[int, str]], stamp: str) -> int:
    """Expire each (row id, reason) and release its papers: the one way a row is given up on."""
    if not reasons:
        return 0
    db.cursor().executemany(
        "UPDATE outbox SET state = 'expired', last_reply = %s, updated_at = %s WHERE id = %s",
        [(reason, stamp, i) for i, reason in reasons],
    )
    release(db, [i for i, _ in reasons])
    return len(reasons)


def strike(
    db: Conn, email: str, stamp: str, outcome: tuple[int | None, str], suspend: SuspendPolicy
) -> bool:
    """Count a hard failure against `email`; suspend it when `suspend` says so (its other
    pending messages then expire). Returns whether it is suspended."""
    code, reply = outcome
    row = db.execute(
        """INSERT INTO suspensions (email, failures, last_code, last_reply, updated_at)
           VALUES (%s, 1, %s, %s, %s)
           ON CONFLICT (email) DO UPDATE SET failures = suspensions.failures + 1,
               last_code = excluded.last_code, last_reply = excluded.last_reply,
               updated_at = excluded.updated_at
           RETURNING failures, suspended_at""",
        (email, code, reply, stamp),
    ).fetchone()
    assert row is not None
    if row[1] is not None:
        return True
    reason = suspend(row[0])
    if reason is None:
        return False
    db.execute("UPDATE suspensions SET suspended_at = %s WHERE email = %s", (stamp, email))
    pending = db.execute(
        "SELECT id FROM outbox WHERE subscriber = %s"
        " AND state IN ('queued', 'deferred', 'in_doubt') FOR UPDATE",
        (email,),
    )
    expire(db, [(r[0], reason) for r in pending.fetchall()], stamp)
    return True
