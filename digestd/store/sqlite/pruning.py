"""Pruning the outbox: the bytes of messages that ended go; their rows stay for the ledger."""

from __future__ import annotations

from datetime import datetime

from digestd.store.sqlite.bodies import drop_bodies
from digestd.store.sqlite.database import Database
from digestd.store.sqlite.values import chunks, ts

__all__ = ["PRUNE_ROWS", "prune_outbox"]

PRUNE_ROWS = 20_000  # outbox rows one prune looks at: a day's run of a large list
_ENDED = ("sent", "failed", "expired", "empty")  # nothing more will be sent: bytes may go


def prune_outbox(db: Database, *, before: datetime, limit: int = PRUNE_ROWS) -> int:
    """Drop the bytes of messages that ended (sent, failed, expired) before `before`, and
    the shared parts no message names any more; rows stay for the ledger and status.

    Rows are visited in id order from where the last prune had to stop (the first row then
    still pending or too recent; `meta.pruned_through`) up to the first row queued since
    `before`, at most `limit` of them (a long backlog goes over several calls, none holding
    the write lock for long), so a prune reads a few rows however long the outbox has grown.
    Returns how many messages lost their bytes.
    """
    stamp = ts(before)
    with db.write() as conn:
        start = int(db.meta("pruned_through") or 0)
        ended: list[int] = []
        through = stalled = None
        for row_id, state, created, updated in conn.execute(
            "SELECT id, state, created_at, updated_at FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (start, limit),
        ):
            if created >= stamp:
                break
            if state in _ENDED and updated < stamp:
                ended.append(row_id)
            elif stalled is None:
                stalled = row_id
            through = row_id
        dropped = sum(drop_bodies(conn, chunk) for chunk in chunks(ended))
        if ended:
            conn.execute(
                "DELETE FROM message_parts WHERE NOT EXISTS"
                " (SELECT 1 FROM outbox_parts r WHERE r.part = message_parts.key)"
            )
        mark = stalled - 1 if stalled is not None else through
        if mark is not None and mark > start:
            db.set_meta("pruned_through", str(mark))
    return dropped
