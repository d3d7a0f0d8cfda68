"""The snapshot `digestd status` shows, read from every repository in one read transaction."""

from __future__ import annotations

import sqlite3
from typing import cast

from digestd.store.protocols import (
    STATES,
    InstanceRepository,
    OutboxProblem,
    PaperRepository,
    PollRepository,
    StoreStatus,
    SubscriberRepository,
)
from digestd.store.sqlite.database import Database
from digestd.store.sqlite.values import dt, marks

__all__ = ["store_status"]

_PROBLEMS = ("failed", "deferred", "in_doubt", "expired")
# Enough to spot a pattern in `digestd status` without flooding the screen.
_STATUS_PROBLEMS = 20


def _problem_from_row(row: sqlite3.Row) -> OutboxProblem:
    return OutboxProblem(
        subscriber=row["subscriber"],
        kind=row["kind"],
        period=row["period"],
        state=row["state"],
        attempts=row["attempts"],
        last_code=row["last_code"],
        last_reply=row["last_reply"],
        updated_at=dt(row["updated_at"]),
    )


def store_status(
    database: Database,
    papers: PaperRepository,
    polls: PollRepository,
    subscribers: SubscriberRepository,
    instances: InstanceRepository | None = None,
) -> StoreStatus:
    """A snapshot for `digestd status` (reads only: one snapshot of every table)."""
    with database.read() as db:
        counts = dict.fromkeys(STATES, 0)
        for state, n in db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
            counts[state] = n
        problems = db.execute(
            f"""SELECT * FROM outbox WHERE state IN ({marks(len(_PROBLEMS))})
                ORDER BY updated_at DESC, id DESC LIMIT ?""",
            (*_PROBLEMS, _STATUS_PROBLEMS),
        )
        return StoreStatus(
            papers=papers.count(),
            last_poll=polls.last(),
            last_success_at=polls.last_success_at(),
            outbox=cast(dict[str, int], counts),
            subscribers=subscribers.count(),
            problems=[_problem_from_row(row) for row in problems],
            suspended=[s for s in subscribers.suspensions() if s.suspended_at is not None],
            sources=polls.source_status(),
            ratings=_ratings(db),
            instances=instances.all() if instances is not None else [],
        )


def _ratings(db: sqlite3.Connection) -> tuple[int, int]:
    row = db.execute(
        "SELECT COALESCE(SUM(value = 1), 0), COALESCE(SUM(value = -1), 0) FROM ratings"
    ).fetchone()
    return int(row[0]), int(row[1])
