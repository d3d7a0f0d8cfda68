"""When the daemon's jobs run: APScheduler with one poll job per source on its own interval, the
retry tick, and one digest job per (cron schedule, zone) in use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from digestd.core import periods
from digestd.pipeline import Deps
from digestd.service.clock import utcnow
from digestd.service.jobs import Jobs
from digestd.service.worklock import WorkLock

__all__ = ["RETRY_TICK", "CronSimTrigger", "Schedule"]

# Deferred messages wait for this tick; it is also the longest a retry can be late.
RETRY_TICK = timedelta(seconds=60)


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


class Schedule:
    """The scheduler and its jobs; `polls` and `digests` follow a reload's new sources and groups."""

    def __init__(
        self,
        deps: Deps,
        lock: WorkLock,
        jobs: Jobs,
        *,
        poll_every: timedelta,
        intervals: Mapping[str, timedelta],
    ) -> None:
        self.deps = deps
        self._lock = lock
        self._jobs = jobs
        self.poll_every = poll_every
        # Each source polls on its own rhythm; one not listed uses `poll_every`.
        self.intervals = dict(intervals)
        self.scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    def add_all(self) -> None:
        self.polls()
        self.scheduler.add_job(
            self._job(self._jobs.deliver),
            IntervalTrigger(seconds=RETRY_TICK.total_seconds()),
            id="retry",
        )
        self.digests()

    def digests(self) -> tuple[int, int]:
        """One job per (schedule, zone) group in use; returns (groups added, groups removed)."""
        groups = {(s.schedule, s.timezone) for s in self.deps.subscribers.subscribers}
        wanted = {f"digest {zone} {schedule}": (schedule, zone) for schedule, zone in groups}
        have = {job.id for job in self.scheduler.get_jobs() if job.id.startswith("digest ")}
        for job_id in have - wanted.keys():
            self.scheduler.remove_job(job_id)
        for job_id in sorted(wanted.keys() - have):
            schedule, zone = wanted[job_id]
            self.scheduler.add_job(
                self._job(self._jobs.digests), CronSimTrigger(schedule, zone), id=job_id
            )
        return len(wanted.keys() - have), len(have - wanted.keys())

    def polls(self) -> None:
        """One poll job per source, on its own interval; a new source polls at once."""
        wanted = {
            s.name: self.intervals.get(s.name, self.poll_every) for s in self.deps.all_sources()
        }
        for job in self.scheduler.get_jobs():
            name = job.id.removeprefix("poll ")
            if job.id.startswith("poll ") and name not in wanted:
                job.remove()
        for name, every in wanted.items():
            trigger = IntervalTrigger(seconds=every.total_seconds())
            job = self.scheduler.get_job(f"poll {name}")
            if job is None:
                # A second instance only says "still polling" and returns: no scheduler warning.
                self.scheduler.add_job(
                    self._jobs.poller(name),
                    trigger,
                    id=f"poll {name}",
                    next_run_time=utcnow(),
                    max_instances=2,
                )
            elif job.trigger.interval != trigger.interval:
                job.reschedule(trigger)

    def locked(self, body: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """`body` as a job that runs under the work lock (a job added from outside, e.g. bounces)."""
        return self._job(body)

    def _job(self, body: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            await self._lock.run(body)

        return job
