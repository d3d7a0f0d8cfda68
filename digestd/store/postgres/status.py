"""The snapshot `digestd status` shows, from a PostgreSQL state (one read-only snapshot)."""

from __future__ import annotations

from typing import cast

from digestd.store.postgres.database import PgDatabase
from digestd.store.postgres.ratings import rating_counts
from digestd.store.postgres.values import dicts
from digestd.store.protocols import (
    STATES,
    InstanceRepository,
    PaperRepository,
    PollRepository,
    StoreStatus,
    SubscriberRepository,
)
from digestd.store.sqlite.status import _PROBLEMS, _STATUS_PROBLEMS, _problem_from_row

__all__ = ["store_status"]


def store_status(
    database: PgDatabase,
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
        problems = dicts(
            db,
            "SELECT * FROM outbox WHERE state = ANY(%s) ORDER BY updated_at DESC, id DESC LIMIT %s",
            (list(_PROBLEMS), _STATUS_PROBLEMS),
        )
        return StoreStatus(
            papers=papers.count(),
            last_poll=polls.last(),
            last_success_at=polls.last_success_at(),
            outbox=cast(dict[str, int], counts),
            subscribers=subscribers.count(),
            problems=[_problem_from_row(row) for row in problems],  # type: ignore[arg-type]
            suspended=[s for s in subscribers.suspensions() if s.suspended_at is not None],
            sources=polls.source_status(),
            ratings=rating_counts(db),
            instances=instances.all() if instances is not None else [],
        )
