"""Pruning the outbox (PostgreSQL): the bytes of messages that ended go; their rows stay."""

from __future__ import annotations

from datetime import datetime

from digestd.store.postgres.bodies import drop_bodies
from digestd.store.postgres.database import PgDatabase
from digestd.store.sqlite.pruning import PRUNE_ROWS
from digestd.store.sqlite.values import ts

__all__ = ["prune_outbox"]

_ENDED = ("sent", "failed", "expired", "empty")  # nothing more will be sent: bytes may go
_PRUNE_LOCK = 0x64696766  # advisory lock: one instance prunes at a time (the mark is shared)


def prune_outbox(db: PgDatabase, *, before: datetime, limit: int = PRUNE_ROWS) -> int:
    """As `store/sqlite/pruning.prune_outbox`: from the `pruned_through` mark, at most `limit`
    rows, up to the first queued since `before`. Returns how many messages lost their bytes."""
    stamp = ts(before)
    with db.write() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PRUNE_LOCK,))
        start = int(db.meta("pruned_through") or 0)
        ended: list[int] = []
        through = stalled = None
        for row_id, state, created, updated in conn.execute(
            "SELECT id, state, created_at, updated_at FROM outbox WHERE id > %s ORDER BY id"
            " LIMIT %s",
            (start, limit),
        ).fetchall():
            if created >= stamp:
                break
            if state in _ENDED and updated < stamp:
                ended.append(row_id)
            elif stalled is None:
                stalled = row_id
            through = row_id
        dropped = drop_bodies(conn, ended) if ended else 0
        if ended:
            conn.execute(
                "DELETE FROM message_parts WHERE NOT EXISTS"
                " (SELECT 1 FROM outbox_parts r WHERE r.part = message_parts.key)"
            )
        mark = stalled - 1 if stalled is not None else through
        if mark is not None and mark > start:
            db.set_meta("pruned_through", str(mark))
    return dropped
