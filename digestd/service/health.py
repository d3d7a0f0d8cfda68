"""`/healthz` and `/metrics` for the daemon's HTTP listener, and the one-line status systemd shows.

Health is "the loop answers, the store answers, the scheduler runs, and the source was polled
successfully within 3 × poll_every". Handlers are `async def` on purpose: they then run on the
event loop's thread, the only one allowed to use the store's SQLite connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from digestd.service.metrics import CONTENT_TYPE, Metrics
from digestd.store import StateStore, store_errors
from digestd.store.protocols import SourceStatus

__all__ = ["HealthProbe", "routes", "source_problems", "status_line"]

# A poll may fail twice in a row (a blip at the source) before health says so.
STALE_POLLS = 3


@dataclass(slots=True)
class HealthProbe:
    """What `/healthz` looks at; callables because poll_every and the scheduler change on reload."""

    store: StateStore
    clock: Callable[[], datetime]
    started_at: datetime
    poll_every: Callable[[], timedelta]
    running: Callable[[], bool]
    # Why work stopped, as the state watch last found (a moved file, a database that does not
    # answer): said without asking the store again, which may wait seconds for a connection.
    lost: Callable[[], str | None] = lambda: None

    def problems(self) -> list[str]:
        """Why the daemon is unhealthy; empty when it is healthy."""
        lost = self.lost()
        if lost is not None:
            return [f"{lost}; composing and sending are stopped"]
        moved = self.store.moved()
        if moved is not None:
            return [f"{moved}; composing and sending are stopped"]
        if not self.running():
            return ["the scheduler is not running (starting or stopping)"]
        try:
            self.store.ping()
            last = self.store.polls.last_success_at()
        except store_errors() as exc:
            return [f"the store does not answer: {exc}"]
        now, limit = self.clock(), self.poll_every() * STALE_POLLS
        since = last or self.started_at
        if now - since <= limit:
            return []
        what = f"last successful poll {_ago(now - since)} ago" if last else "no successful poll yet"
        return [f"{what} (limit {_ago(limit)})"]


def source_problems(sources: Sequence[SourceStatus]) -> list[str]:
    """A line per source whose latest poll failed: what `digestd status` counts and `/healthz`
    lists, so the two never disagree."""
    return [
        f"source {s.source}: last poll failed: {s.error}; last successful poll "
        + (s.last_success_at.isoformat(timespec="seconds") if s.last_success_at else "never")
        for s in sources
        if s.error
    ]


def routes(probe: HealthProbe, metrics: Metrics) -> list[BaseRoute]:
    async def healthz(request: Request) -> Response:
        problems = probe.problems()
        last, failing = None, []
        if probe.lost() is None:  # else the store is what is in question: not asked again
            try:
                last = probe.store.polls.last_success_at()
                failing = source_problems(probe.store.polls.source_status())
            except store_errors():  # already among the reasons
                last, failing = None, []
        body = {
            "status": "unhealthy" if problems else "ok",
            "reasons": problems,
            # Whatever the verdict: the reason may name it, and it is a fact, not a judgement.
            "last_successful_poll": last.isoformat() if last else None,
            "failing_sources": failing,
        }
        return JSONResponse(body, status_code=503 if problems else 200)

    async def metrics_page(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics_page, methods=["GET"]),
    ]


def status_line(store: StateStore, *, now: datetime) -> str:
    """'polled 2 min ago, 54 papers, 0 queued' (+ the source's failure when the last poll failed)."""
    last = store.polls.last()
    if last is None:
        polled = "not polled yet"
    elif last.ok:
        polled = f"polled {_ago(now - last.at)} ago"
    else:
        down = store.polls.down_since()
        polled = f"poll failing since {_ago(now - (down or last.at))} ago"
    return f"{polled}, {store.papers.count()} papers, {store.outbox.pending_count()} queued"


def _ago(delta: timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"
