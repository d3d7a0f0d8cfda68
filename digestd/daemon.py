"""The long-running shell: APScheduler wakes the pipeline; signals stop it without cutting a send in half."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from digestd import app, health, periods, pipeline
from digestd.alerts import AdminAlerts, AlertPolicy
from digestd.errors import ConfigError, DigestdError
from digestd.metrics import MeteredMailer, Metrics
from digestd.pipeline import Deps
from digestd.reload import Changes, Config, apply_config, load_config
from digestd.sdnotify import Notifier
from digestd.settings import format_duration
from digestd.web import WebServer

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
        config: Config | None = None,
        notifier: Notifier | None = None,
        intervals: Mapping[str, timedelta] | None = None,
    ) -> None:
        self.deps = deps
        self.poll_every = poll_every
        self.config = config
        self.notifier = notifier or Notifier()
        self.started_at = utcnow()
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
        self.metrics = Metrics(deps.store)
        deps.observer = self.metrics
        self.alerts = AdminAlerts(deps.store, self._alert_policy(), utcnow)
        self._meter_mailer()
        self._reload_wanted = asyncio.Event()
        self._stamp = config.stamp() if config else ()
        self._tasks: list[asyncio.Task[None]] = []
        self.web: WebServer | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self._start_up()
        await self._start_web()
        self._schedule()
        self.scheduler.start()
        self._background()
        self.notifier.ready(self._status())
        self._log_overdue()
        await self._guarded(self._catch_up)
        await self._stop.wait()
        await self._shutdown()
        return 0

    def request_stop(self, sig: int = signal.SIGTERM) -> None:
        if not self._stopping:
            log.info("stopping signal=%s", signal.Signals(sig).name)
            self.notifier.stopping()
        self._stopping = True
        self._stop.set()

    def request_reload(self) -> None:
        """SIGHUP: reload once the work in flight is done (several signals make one reload)."""
        self._reload_wanted.set()

    def _start_up(self) -> None:
        now = utcnow()
        recovered = self.deps.store.recover(now=now)
        if recovered:
            log.warning(
                "recovered in-doubt messages n=%d (re-sent with the same Message-ID)", recovered
            )
        self._expire_removed(now)
        log.info(
            "started subscribers=%d poll_every=%ss",
            len(self.deps.subscribers.subscribers),
            int(self.poll_every.total_seconds()),
        )

    def _schedule(self) -> None:
        add = self.scheduler.add_job
        self._schedule_polls()
        add(
            self._job(self._deliver),
            IntervalTrigger(seconds=RETRY_TICK.total_seconds()),
            id="retry",
        )
        self._schedule_digests()

    def _schedule_digests(self) -> tuple[int, int]:
        """One job per (schedule, zone) group in use; returns (groups added, groups removed)."""
        groups = {(s.schedule, s.timezone) for s in self.deps.subscribers.subscribers}
        wanted = {f"digest {zone} {schedule}": (schedule, zone) for schedule, zone in groups}
        have = {job.id for job in self.scheduler.get_jobs() if job.id.startswith("digest ")}
        for job_id in have - wanted.keys():
            self.scheduler.remove_job(job_id)
        for job_id in sorted(wanted.keys() - have):
            schedule, zone = wanted[job_id]
            self.scheduler.add_job(
                self._job(self._digests), CronSimTrigger(schedule, zone), id=job_id
            )
        return len(wanted.keys() - have), len(have - wanted.keys())

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
            self._publish_status()

    def _schedule_polls(self) -> None:
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
                self.scheduler.add_job(
                    self._job(self._poller(name)),
                    trigger,
                    id=f"poll {name}",
                    next_run_time=utcnow(),
                )
            elif job.trigger.interval != trigger.interval:
                job.reschedule(trigger)

    def _poller(self, name: str) -> Callable[[], Awaitable[None]]:
        async def _poll() -> None:
            report = await pipeline.ingest(self.deps, now=utcnow(), only=[name])
            self.metrics.poll(report.ok)
            await self.alerts.check(self._raw_mailer, now=utcnow())
            await self._deliver()

        return _poll

    async def _catch_up(self) -> None:
        """At start-up: the alerts a poll committed before a crash still owes, then the digests
        missed while down, each once."""
        pipeline.queue_owed_alerts(self.deps, now=utcnow())
        await self._digests()

    async def _digests(self) -> None:
        pipeline.compose(self.deps, now=utcnow())
        await self._deliver()

    async def _deliver(self) -> None:
        report = await pipeline.deliver_due(self.deps, now=utcnow(), clock=utcnow)
        if report.sent or report.deferred or report.failed:
            await self.alerts.check(self._raw_mailer, now=utcnow())

    async def _shutdown(self) -> None:
        # Wait for the job in flight (it stops between messages), then stop the scheduler: its
        # AsyncIOExecutor cancels running coroutines on shutdown, so none may be running by then.
        async with self._lock:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.scheduler.shutdown(wait=False)
        if self.web is not None:
            await self.web.stop()
        log.info("stopped")

    # -- service: status, watchdog, HTTP, alerts, catch-up --------------------------------

    def _status(self) -> str:
        return health.status_line(self.deps.store, now=utcnow())

    def _publish_status(self) -> None:
        if self.notifier.enabled and not self._stopping:
            self.notifier.status(self._status())

    def _background(self) -> None:
        self._spawn(self._reloader(), "reloader")
        if self.config is not None:
            self._spawn(self._watch_config(self.config), "config-watch")
        every = self.notifier.watchdog_interval()
        if every is not None:
            self._spawn(self._watchdog(every), "watchdog")

    def _spawn(self, body: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(body, name=name))

    async def _watchdog(self, every: float) -> None:
        """Ping from the loop itself, after a store query: a stalled loop or a dead store stops
        the pings, and systemd restarts the service (WatchdogSec=, Restart=on-failure)."""
        while True:
            try:
                self.deps.store.ping()
            except sqlite3.Error as exc:
                log.error("watchdog: the store does not answer error=%s", exc)
            else:
                self.notifier.watchdog()
            await asyncio.sleep(every)

    async def _start_web(self) -> None:
        listen = self.config.settings.http.listen if self.config else None
        if self.config is None or not listen:
            return
        probe = health.HealthProbe(
            store=self.deps.store,
            clock=utcnow,
            started_at=self.started_at,
            poll_every=lambda: self.poll_every,
            running=lambda: bool(self.scheduler.running) and not self._stopping,
        )
        routes = health.routes(probe, self.metrics)
        self.web = WebServer(listen, app.web_routes(self.deps, clock=utcnow, health=routes))
        try:
            await self.web.start()
        except OSError as exc:
            self.web = None
            raise DigestdError(f"http.listen {listen}: {exc}") from None

    def _alert_policy(self) -> AlertPolicy:
        if self.config is None:
            return AlertPolicy(sender=self.deps.options.sender, sign=self.deps.sign)
        s = self.config.settings
        return AlertPolicy(
            admins=tuple(s.admins),
            source_down_after=s.alerts.source_down_after,
            delivery_failures=s.alerts.delivery_failures,
            sender=s.delivery.sender,
            site_name=s.site_name,
            sign=self.deps.sign,
        )

    def _meter_mailer(self) -> None:
        """Count and time every digest send; alerts go out through the bare mailer, uncounted."""
        self._raw_mailer = self.deps.mailer
        self.deps.mailer = MeteredMailer(self._raw_mailer, self.metrics, self.alerts.record)

    def _expire_removed(self, now: datetime) -> None:
        keep = (pipeline.key(s) for s in self.deps.subscribers.subscribers)
        n = self.deps.store.expire_except(keep, at=now, reason="subscriber removed")
        if n:
            log.warning("expired unsent mail of removed subscribers n=%d", n)

    def _log_overdue(self) -> None:
        """Catch-up made explicit: which digests go out late now, and which max_late drops."""
        max_late = self.deps.options.max_late
        for late in pipeline.overdue(self.deps, now=utcnow()):
            log.warning(
                "catch-up %s n_subscribers=%d schedule=%r timezone=%s period=%s late_by=%s"
                " max_late=%s",
                "skipping digests older than max_late" if late.skipped else "sending late digests",
                late.n_subscribers, late.schedule, late.timezone, periods.period_key(late.slot),
                format_duration(late.late_by), format_duration(max_late) if max_late else "none",
            )  # fmt: skip

    # -- reload ---------------------------------------------------------------------------

    async def _reloader(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            await self.reload()

    async def _watch_config(self, first: Config) -> None:
        """Reload when either YAML file changes (mtime or size), checked every config_check_every."""
        while True:
            config = self.config or first
            every = config.settings.config_check_every.total_seconds()
            await asyncio.sleep(every if every > 0 else RETRY_TICK.total_seconds())
            stamp = (self.config or first).stamp()
            if every > 0 and stamp != self._stamp:
                self._stamp = stamp
                log.info("config files changed; reloading")
                self.request_reload()

    async def reload(self) -> bool:
        """Validate the files first; apply them between two messages; else keep the old config."""
        if self.config is None:
            log.warning("reload ignored: the daemon was started without a configuration file")
            return False
        self.notifier.reloading()
        self._stamp = self.config.stamp()
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            log.error(
                "reload refused n_errors=%d; still running on the previous configuration",
                len(exc.problems),
            )
            self.notifier.ready(self._status())
            return False
        async with self._lock:
            changes = await apply_config(self.deps, self.config, new, now=utcnow())
            self._take(new, changes)
        self.notifier.ready(self._status())
        return True

    def _take(self, new: Config, changes: Changes) -> None:
        self.config = new
        self._stamp = new.stamp()
        if changes.mailer:
            self._meter_mailer()
        self.alerts.policy = self._alert_policy()
        added, removed = self._schedule_digests()
        sources = new.settings.all_sources()
        poll_every = self.poll_every = sources[0].poll_every
        self.intervals = {src.key: src.poll_every for src in sources}
        self._schedule_polls()
        for name in changes.restart_needed:
            log.warning("reload: a change of %r needs a restart to take effect", name)
        log.info(
            "reloaded subscribers=%d added=%d removed=%d changed=%d expired=%d"
            " schedules_added=%d schedules_removed=%d poll_every=%ss",
            len(new.subscribers.subscribers), len(changes.added), len(changes.removed),
            len(changes.changed), changes.expired, added, removed,
            int(poll_every.total_seconds()),
        )  # fmt: skip


def run_daemon(
    deps: Deps,
    *,
    poll_every: timedelta,
    closer: Callable[[Deps], Awaitable[Any]],
    config: Config | None = None,
    intervals: Mapping[str, timedelta] | None = None,
) -> int:
    async def main() -> int:
        try:
            daemon = Daemon(deps, poll_every=poll_every, config=config, intervals=intervals)
            return await daemon.run()
        finally:
            await closer(deps)
            log.info("store closed")

    return asyncio.run(main())
