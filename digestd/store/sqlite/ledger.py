"""Outbox state transitions and the ledger entries they keep or release.

Every function runs inside the caller's write transaction, so a message's new state and what the
ledger says about its papers always commit together.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from digestd.store.protocols import SuspendPolicy
from digestd.store.sqlite.values import marks

__all__ = ["expire", "release", "strike", "transition"]


def transition(
    db: sqlite3.Connection,
    outbox_id: int,
    from_states: Sequence[str],
    assignments: str,
    params: Sequence[Any],
) -> None:
    """Apply `assignments` to row `outbox_id` if it is in one of `from_states`.

    :raises ValueError: it is not (or does not exist).
    """
    cursor = db.execute(
        f"UPDATE outbox SET {assignments} WHERE id = ? AND state IN ({marks(len(from_states))})",
        (*params, outbox_id, *from_states),
    )
    if cursor.rowcount != 1:
        row = db.execute("SELECT state FROM outbox WHERE id = ?", (outbox_id,)).fetchone()
        found = "no such row" if row is None else f"state {row[0]!r}"
        raise ValueError(f"outbox row {outbox_id}: expected {'/'.join(from_states)}, {found}")


def release(db: sqlite3.Connection, ids: Sequence[int]) -> None:
    """The papers of rows `ids` are free again for their subscriber's next message."""
    db.executemany("DELETE FROM deliveries WHERE outbox_id = ?", ((i,) for i in ids))


def expire(db: sqlite3.Connection, reasons: Sequence[tuple[int, str]], stamp: str) -> int:
    """Expire each (row id, reason) and release its papers: the one way a row is given up on."""
    db.executemany(
        "UPDATE outbox SET state = 'expired', last_reply = ?, updated_at = ? WHERE id = ?",
        ((reason, stamp, i) for i, reason in reasons),
    )
    release(db, [i for i, _ in reasons])
    return len(reasons)


def strike(
    db: sqlite3.Connection,
    email: str,
    stamp: str,
    outcome: tuple[int | None, str],
    suspend: SuspendPolicy,
) -> bool:
    """Count a hard failure against `email`; suspend it when `suspend` says so (its other
    pending messages then expire). Returns whether it is suspended."""
    code, reply = outcome
    row = db.execute(
        """INSERT INTO suspensions (email, failures, last_code, last_reply, updated_at)
           VALUES (?, 1, ?, ?, ?)
           ON CONFLICT (email) DO UPDATE SET failures = failures + 1,
               last_code = excluded.last_code, last_reply = excluded.last_reply,
               updated_at = excluded.updated_at
           RETURNING failures, suspended_at""",
        (email, code, reply, stamp),
    ).fetchone()
    if row[1] is not None:
        return True
    reason = suspend(row[0])
    if reason is None:
        return False
    db.execute("UPDATE suspensions SET suspended_at = ? WHERE email = ?", (stamp, email))
    pending = db.execute(
        "SELECT id FROM outbox WHERE subscriber = ? AND state IN ('queued', 'deferred', 'in_doubt')",
        (email,),
    )
    expire(db, [(r[0], reason) for r in pending.fetchall()], stamp)
    return True
