"""The long-running shell: APScheduler wakes the pipeline; signals stop it without cutting a send in half."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from digestd import periods, pipeline
from digestd.pipeline import Deps

__all__ = ["CronSimTrigger", "Daemon", "utcnow"]

log = logging.getLogger(__name__)

# Deferred messages wait for this tick; it is also the longest a retry can be late.
RETRY_TICK = timedelta(seconds=60)


def utcnow() -> datetime:
    return datetime.now(UTC)


class CronSimTrigger(BaseTrigger):  # type: ignore[misc]
    """Standard 5-field cron in a subscriber's zone, via the same `periods` code that keys digests.

    APScheduler 3's own CronTrigger numbers weekdays from Monday (0 = mon), unlike cron; sharing
    `periods` keeps "when it fires" and "which period it is" the same computation.
    """

    def __init__(self, schedule: str, timezone: str) -> None:
        self.schedule = schedule
        self.timezone = timezone

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        after = now if previous_fire_time is None else max(previous_fire_time, now)
        return periods.next_slot(self.schedule, self.timezone, after)

    def __str__(self) -> str:
        return f"cron[{self.schedule!r} {self.timezone}]"


class Daemon:
    """Runs until SIGTERM/SIGINT; every job body takes the work lock, so a stop waits for it."""

    def __init__(
        self,
        deps: Deps,
        *,
        poll_every: timedelta,
        intervals: Mapping[str, timedelta] | None = None,
    ) -> None:
        self.deps = deps
        self.poll_every = poll_every
        # Each source polls on its own rhythm; one not listed uses `poll_every`.
        self.intervals = dict(intervals or {})
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._stopping = False
        deps.stopping = lambda: self._stopping
        self.scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        self._start_up()
        self._schedule()
        self.scheduler.start()
        await self._guarded(self._digests)  # a digest missed while down goes out once, now
        await self._stop.wait()
        await self._shutdown()
        return 0

    def request_stop(self, sig: int = signal.SIGTERM) -> None:
        if not self._stopping:
            log.info("stopping signal=%s", signal.Signals(sig).name)
        self._stopping = True
        self._stop.set()

    def _start_up(self) -> None:
        now = utcnow()
        recovered = self.deps.store.recover(now=now)
        if recovered:
            log.warning(
                "recovered in-doubt messages n=%d (re-sent with the same Message-ID)", recovered
            )
        log.info(
            "started subscribers=%d poll_every=%ss",
            len(self.deps.subscribers.subscribers),
            int(self.poll_every.total_seconds()),
        )

    def _schedule(self) -> None:
        add = self.scheduler.add_job
        for source in self.deps.all_sources():
            every = self.intervals.get(source.name, self.poll_every)
            add(
                self._job(self._poller(source.name)),
                IntervalTrigger(seconds=every.total_seconds()),
                id=f"poll {source.name}",
                next_run_time=utcnow(),
            )
        add(
            self._job(self._deliver),
            IntervalTrigger(seconds=RETRY_TICK.total_seconds()),
            id="retry",
        )
        groups = {(s.schedule, s.timezone) for s in self.deps.subscribers.subscribers}
        for schedule, zone in sorted(groups):
            add(
                self._job(self._digests),
                CronSimTrigger(schedule, zone),
                id=f"digest {zone} {schedule}",
            )

    def _job(self, body: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            await self._guarded(body)

        return job

    async def _guarded(self, body: Callable[[], Awaitable[None]]) -> None:
        """One unit of work at a time; a failure is logged and the daemon goes on to the next tick."""
        async with self._lock:
            if self._stopping:
                return
            try:
                await body()
            except Exception:
                log.exception("job failed job=%s", getattr(body, "__name__", "?"))

    def _poller(self, name: str) -> Callable[[], Awaitable[None]]:
        async def _poll() -> None:
            await pipeline.ingest(self.deps, now=utcnow(), only=[name])
            await self._deliver()

        return _poll

    async def _digests(self) -> None:
        pipeline.compose(self.deps, now=utcnow())
        await self._deliver()

    async def _deliver(self) -> None:
        await pipeline.deliver_due(self.deps, now=utcnow(), clock=utcnow)

    async def _shutdown(self) -> None:
        # Wait for the job in flight (it stops between messages), then stop the scheduler: its
        # AsyncIOExecutor cancels running coroutines on shutdown, so none may be running by then.
        async with self._lock:
            self.scheduler.shutdown(wait=False)
        log.info("stopped")


def run_daemon(
    deps: Deps,
    *,
    poll_every: timedelta,
    closer: Callable[[Deps], Awaitable[Any]],
    intervals: Mapping[str, timedelta] | None = None,
) -> int:
    async def main() -> int:
        try:
            return await Daemon(deps, poll_every=poll_every, intervals=intervals).run()
        finally:
            await closer(deps)

    return asyncio.run(main())
