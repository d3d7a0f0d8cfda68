"""The long-running shell: APScheduler wakes the pipeline; signals stop it without cutting a send in half."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from digestd import pipeline
from digestd.config.settings import format_duration
from digestd.core import periods
from digestd.core.errors import ConfigError, DigestdError, SourceError
from digestd.core.model import Outcome, ParseResult
from digestd.pipeline import Deps
from digestd.service import health
from digestd.service import wiring as app
from digestd.service.admin_alerts import STATE, AdminAlerts, AlertPolicy
from digestd.service.metrics import MeteredMailer, Metrics
from digestd.service.reload import Changes, Config, apply_config, load_config
from digestd.service.sdnotify import Notifier
from digestd.service.web import WebServer
from digestd.sources.base import Source
from digestd.store.sqlite import AlertState, explain

__all__ = ["CronSimTrigger", "Daemon", "utcnow"]

log = logging.getLogger(__name__)

# Deferred messages wait for this tick; it is also the longest a retry can be late.
RETRY_TICK = timedelta(seconds=60)
# Without a configuration file: how long a stop waits for the job in flight (delivery.timeout's default).
STOP_WITHIN = timedelta(seconds=30)
# How often the state file is checked to still be the one open (one stat): the longest a deleted
# or replaced file goes unnoticed by /healthz readers and admins (jobs check before they start).
STATE_CHECK = 1.0


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
    """Runs until SIGTERM/SIGINT; store work takes the work lock, so a stop waits for it (bounded).

    A poll fetches outside the lock (one poll per source at a time) and takes the lock only to
    store what it fetched: a slow source delays nobody but itself, and a stop cancels its fetch.
    """

    def __init__(
        self,
        deps: Deps,
        *,
        poll_every: timedelta,
        config: Config | None = None,
        notifier: Notifier | None = None,
        intervals: Mapping[str, timedelta] | None = None,
        stuck_after: timedelta | None = None,
    ) -> None:
        self.deps = deps
        self.poll_every = poll_every
        self.config = config
        self.notifier = notifier or Notifier()
        self.started_at = utcnow()
        # Each source polls on its own rhythm; one not listed uses `poll_every`.
        self.intervals = dict(intervals or {})
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None  # the job holding the lock, and its name
        self._holder_job = ""
        self._progress_at = time.monotonic()  # the last time a job took the lock or ended a message
        self._polling: set[str] = set()  # sources whose poll is under way
        self._fetches: set[asyncio.Task[ParseResult | SourceError]] = set()
        self.stop_within, self.stuck_after = _bounds(config, stuck_after)
        self._stop = asyncio.Event()
        self._stopping = False
        # A drain stops between two messages when the state file goes (its outcomes would be
        # written to a file nobody will read again).
        deps.stopping = lambda: self._stopping or self._check_state() is not None
        self._lost: str | None = None  # why the state file is not ours any more
        self._lost_since: datetime | None = None
        self._rescued: str | None = None
        self._last_loss = ""  # the reason, still told in the "back" mail
        self._told_lost = False  # what the admins were last told about it
        self._next_tell = self.started_at
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
        # Owed alerts, then a digest missed while down, once, now; a task, so a stop can bound it
        # like a job.
        self._spawn(self._guarded(self._catch_up), "catch-up")
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
        try:
            async with self._lock:
                if self._stopping:
                    return
                if self._check_state() is not None:
                    log.debug(
                        "job skipped job=%s reason=state file lost", getattr(body, "__name__", "?")
                    )
                    return
                await self._hold(body)
                self._publish_status()
        except asyncio.CancelledError:
            # A job still waiting for the lock when the scheduler shuts down: nothing to report
            # (the scheduler would log a traceback for it).
            if not self._stopping:
                raise

    async def _hold(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run `body` as the lock's holder, known to the watchdog and to a stop that runs late."""
        self._holder = asyncio.current_task()
        self._holder_job = name = getattr(body, "__name__", "?")
        self._progressed()
        try:
            await body()
        except sqlite3.OperationalError as exc:  # read-only, full: what to do, not where
            log.error("job failed job=%s error=%s", name, explain(self.deps.store.path, exc))
        except Exception:
            log.exception("job failed job=%s", name)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Cut by a stop past its bound: a message cut mid-send is `in_doubt` at the next start
            # and re-sent with the same Message-ID (store.recover).
            log.warning("job cancelled by the stop job=%s", name)
        finally:
            self._holder = None
            self._progressed()

    def _progressed(self) -> None:
        self._progress_at = time.monotonic()

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
                # A second instance only says "still polling" and returns: no scheduler warning.
                self.scheduler.add_job(
                    self._poller(name),
                    trigger,
                    id=f"poll {name}",
                    next_run_time=utcnow(),
                    max_instances=2,
                )
            elif job.trigger.interval != trigger.interval:
                job.reschedule(trigger)

    def _poller(self, name: str) -> Callable[[], Awaitable[None]]:
        async def poll() -> None:
            if name in self._polling or self._stopping:
                log.debug("poll skipped source=%s: the previous poll is still running", name)
                return
            self._polling.add(name)
            try:
                await self._poll(name)
            finally:
                self._polling.discard(name)

        return poll

    async def _poll(self, name: str) -> None:
        """Fetch outside the work lock (bounded by the source's deadline), then store under it."""
        source = next((s for s in self.deps.all_sources() if s.name == name), None)
        if source is None:
            return
        if self._check_state() is not None:  # nowhere to store what the fetch would bring
            log.debug("job skipped job=poll source=%s reason=state file lost", name)
            return
        now = utcnow()
        fetched = await self._fetch(source, now)
        if fetched is None:
            return

        async def _store_poll() -> None:
            report = pipeline.record_poll(self.deps, name, fetched, now=now)
            self.metrics.poll(report.ok)
            await self.alerts.check(self._raw_mailer, now=utcnow())
            await self._deliver()

        await self._guarded(_store_poll)

    async def _fetch(self, source: Source, now: datetime) -> ParseResult | SourceError | None:
        """The source's reply, or None when a stop cancelled the fetch or the fetch had a bug."""
        task = asyncio.create_task(pipeline.fetch(self.deps, source, now=now))
        self._fetches.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this job itself is cancelled, not just its fetch
            log.info("poll cancelled by the stop source=%s", source.name)
            return None
        except Exception:
            log.exception("job failed job=poll source=%s", source.name)
            return None
        finally:
            self._fetches.discard(task)

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
        # Fetches hold nothing: cancel them. Wait for the job in flight (it stops between
        # messages), then stop the scheduler: its AsyncIOExecutor cancels running coroutines on
        # shutdown, so none may be running by then.
        for fetch in list(self._fetches):
            fetch.cancel()
        await self._acquire_for_stop()
        try:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.scheduler.shutdown(wait=False)
        finally:
            self._lock.release()
        if self.web is not None:
            await self.web.stop()
        log.info("stopped")

    async def _acquire_for_stop(self) -> None:
        """The work lock within `stop_within` (delivery.timeout); past it, the job is cancelled.

        systemd's stop timeout must not be the thing that ends us: a message cut mid-send is
        `in_doubt` at the next start and re-sent with the same Message-ID.
        """
        try:
            async with asyncio.timeout(self.stop_within.total_seconds()):
                await self._lock.acquire()
                return
        except TimeoutError:
            pass
        holder = self._holder
        log.warning(
            "stop: the job in flight did not end within %s; cancelling it job=%s",
            format_duration(self.stop_within),
            self._holder_job if holder else "?",
        )
        if holder is not None:
            holder.cancel()
        await self._lock.acquire()

    # -- service: status, watchdog, HTTP, alerts, catch-up --------------------------------

    def _status(self) -> str:
        if self._lost is not None:
            return f"STOPPED: {self._lost}"
        return health.status_line(self.deps.store, now=utcnow())

    def _publish_status(self) -> None:
        if self.notifier.enabled and not self._stopping:
            self.notifier.status(self._status())

    def _background(self) -> None:
        self._spawn(self._reloader(), "reloader")
        self._spawn(self._watch_state(), "state-watch")
        if self.config is not None:
            self._spawn(self._watch_config(self.config), "config-watch")
        every = self.notifier.watchdog_interval()
        if every is not None:
            self._spawn(self._watchdog(every), "watchdog")

    def _spawn(self, body: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(body, name=name)
        task.add_done_callback(_report_end)
        self._tasks.append(task)

    async def _watchdog(self, every: float) -> None:
        """Ping from the loop itself, after a store query, while jobs make progress: a stalled
        loop, a dead store or a stuck job stops the pings, and systemd restarts the service
        (WatchdogSec=, Restart=on-failure)."""
        said = False
        while True:
            why = self._stuck_why()
            if why is not None:
                if not said:
                    log.error("watchdog: not pinging; %s", why)
                said = True
            else:
                said = False
                self._ping()
            await asyncio.sleep(every)

    def _ping(self) -> None:
        try:
            self.deps.store.ping()
        except sqlite3.Error as exc:
            log.error("watchdog: the store does not answer error=%s", exc)
        else:
            self.notifier.watchdog()

    def _stuck_why(self) -> str | None:
        """Why the work is stuck: a job held the lock past `stuck_after` without progress."""
        holder = self._holder
        idle = time.monotonic() - self._progress_at
        if holder is None or idle <= self.stuck_after.total_seconds():
            return None
        return (
            f"job={self._holder_job} has held the work lock {idle:.0f}s without finishing"
            f" a message (bound {format_duration(self.stuck_after)})"
        )

    # -- the state file deleted or replaced under us --------------------------------------

    def _check_state(self) -> str | None:
        """Why the state file is no longer the one open (None: it is); acts on each change."""
        reason = self.deps.store.moved()
        if reason == self._lost:
            return reason
        if reason is None:
            log.warning(
                "state file back path=%s; composing and sending resume", self.deps.store.path
            )
        elif self._lost is None:
            log.error("%s; composing and sending stopped until it is back or a restart", reason)
            self._lost_since, self._last_loss = utcnow(), reason
            self._rescue()
        self._lost = reason
        if self.notifier.enabled:
            self.notifier.status(self._status())
        return reason

    def _rescue(self) -> None:
        """Copy out what only our open descriptor still reaches: the queue, the ledger, all."""
        try:
            path = self.deps.store.rescue(utcnow())
        except (OSError, sqlite3.Error) as exc:
            self._rescued = None
            log.error("state file not rescued error=%s", exc)
            return
        self._rescued = str(path)
        log.error(
            "state file rescued copy=%s (to go on from it: stop digestd, move it to %s, start)",
            path, self.deps.store.path,
        )  # fmt: skip

    async def _watch_state(self) -> None:
        while True:
            self._check_state()
            await self._tell_admins()
            await asyncio.sleep(STATE_CHECK)

    async def _tell_admins(self) -> None:
        """One mail when the file goes, one when it is back; kept in memory, as the store is
        what is in question (a restart on a restored file has nothing left to tell)."""
        lost = self._lost is not None
        now = utcnow()
        if lost == self._told_lost or now < self._next_tell:
            return
        detail = self._last_loss
        if self._rescued:
            detail += f". A copy of the file as digestd last had it: {self._rescued}"
        state = AlertState(STATE, firing=lost, since=self._lost_since, detail=detail)
        async with self._lock:  # the mailer's connections are not shared with a job's sends
            try:
                told = await self.alerts.tell(state, self._raw_mailer, now=now)
            except Exception as exc:  # the watch must go on: retried at the next tick
                log.error("admin alert failed alert=%s error=%s", STATE, exc)
                told = False
        if told:
            self._told_lost = lost
        else:
            self._next_tell = now + RETRY_TICK

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
        http = self.config.settings.http
        self.web = WebServer(
            listen,
            app.web_routes(self.deps, clock=utcnow, health=routes),
            request_timeout=http.request_timeout.total_seconds(),
            max_connections=http.max_connections,
        )
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
        self.deps.mailer = MeteredMailer(self._raw_mailer, self.metrics, self._on_outcome)

    def _on_outcome(self, outcome: Outcome) -> None:
        self._progressed()
        self.alerts.record(outcome)

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
        """Serves every SIGHUP and file change: a reload that fails, however, leaves it running."""
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            try:
                await self.reload()
            except Exception as exc:  # a bug must not end reloading for the life of the process
                log.error(
                    "reload failed error=%s: %s; the next SIGHUP or file change is still honoured",
                    type(exc).__name__, str(exc)[:200],
                )  # fmt: skip
                log.debug("reload failure", exc_info=True)
                self.notifier.ready(self._status())

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


def _report_end(task: asyncio.Task[None]) -> None:
    """A background task only ends at shutdown (cancelled); any other end is said, not silent."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background task %s stopped", task.get_name(), exc_info=exc)


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


def _bounds(config: Config | None, stuck_after: timedelta | None) -> tuple[timedelta, timedelta]:
    """(how long a stop waits for the job in flight, how long a job may go without progress).

    A job progresses when it ends a message; one message can take every SMTP command's
    `delivery.timeout` and the end of DATA's `data_timeout`: twice that is surely stuck.
    """
    if config is None:
        return STOP_WITHIN, stuck_after or 2 * (STOP_WITHIN * 6 + timedelta(minutes=10))
    d = config.settings.delivery
    return d.timeout, stuck_after or 2 * (d.timeout * 6 + d.data_timeout)
