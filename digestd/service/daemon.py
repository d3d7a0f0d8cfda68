"""The long-running shell: start-up, run until a signal, stop without cutting a send in half.

The work is done by collaborators: `WorkLock` (one job at a time, stuck detection, the bounded
stop), `Jobs` (what a job does), `Schedule` (when), `StateWatch` (the state file going away),
`Reloader` (SIGHUP and file changes), `StatusLine` (what systemd shows).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from typing import Any

from digestd import pipeline
from digestd.config.sections import SignupSettings, format_duration
from digestd.core import periods
from digestd.core.errors import DigestdError
from digestd.core.model import Outcome
from digestd.pipeline import Deps
from digestd.service import health
from digestd.service import wiring as app
from digestd.service.admin_alerts import AdminAlerts, AlertPolicy
from digestd.service.bounces import schedule_bounces
from digestd.service.clock import utcnow
from digestd.service.instance import Instance, default_name
from digestd.service.jobs import Jobs
from digestd.service.metrics import MeteredMailer, Metrics
from digestd.service.reload import Changes, Config
from digestd.service.reloader import Reloader
from digestd.service.schedule import Schedule
from digestd.service.sdnotify import Notifier
from digestd.service.statewatch import StateWatch
from digestd.service.status import StatusLine
from digestd.service.watchdog import watchdog
from digestd.service.web import WebServer
from digestd.service.worklock import WorkLock, bounds

__all__ = ["Daemon", "run_daemon"]

log = logging.getLogger(__name__)


class Daemon:
    """Runs until SIGTERM/SIGINT; store work takes the work lock, so a stop waits for it (bounded)."""

    state: StateWatch  # declared here: the work lock and the status line read it once it exists

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
        self.notifier = notifier or Notifier()
        self.started_at = utcnow()
        self._stop = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.web: WebServer | None = None
        self.metrics = Metrics(deps.store)
        deps.observer = self.metrics
        self.alerts = AdminAlerts(deps.store, _alert_policy(deps, config), utcnow)
        self._meter_mailer()
        self._wire(config, poll_every, intervals or {}, stuck_after)
        # A drain stops between two messages when the state file goes (its outcomes would be
        # written to a file nobody will read again).
        deps.stopping = lambda: self._stopping or self.state.check() is not None

    def _wire(
        self,
        config: Config | None,
        poll_every: timedelta,
        intervals: Mapping[str, timedelta],
        stuck_after: timedelta | None,
    ) -> None:
        """The collaborators, each told only what it reads of the others."""
        stopping = lambda: self._stopping  # noqa: E731
        lost = lambda: self.state.check()  # noqa: E731
        alert_mailer = lambda: self._raw_mailer  # noqa: E731
        self.status = StatusLine(
            self.notifier, self.deps.store, state_lost=lambda: self.state.lost, stopping=stopping
        )
        stop_within, stuck = bounds(config, stuck_after)
        self.work_lock = WorkLock(
            store_path=self.deps.store.path, stopping=stopping, state_lost=lost,
            after_job=self.status.publish, stop_within=stop_within, stuck_after=stuck,
        )  # fmt: skip
        self.state = StateWatch(
            self.deps.store, self.work_lock, alerts=self.alerts, alert_mailer=alert_mailer,
            on_change=self.status.tell,
        )  # fmt: skip
        options = self.deps.options
        name = options.instance or default_name()
        self.instance = Instance(
            self.deps.store, name=name, lease=options.lease,
            leader=self.deps.store.leadership(name), state_lost=lambda: self.state.lost,
            sources=lambda: [s.name for s in self.deps.all_sources()], every=self._poll_seconds,
        )  # fmt: skip
        self.jobs = Jobs(
            self.deps, self.work_lock, metrics=self.metrics, alerts=self.alerts,
            alert_mailer=alert_mailer, stopping=stopping, state_lost=lost,
            leads=self.instance.try_lead,
        )  # fmt: skip
        self.schedule = Schedule(
            self.deps, self.work_lock, self.jobs, poll_every=poll_every, intervals=intervals
        )
        self.reloader = Reloader(
            self.deps, config, self.work_lock, notifier=self.notifier, status=self.status.text,
            adopt=self._adopt,
        )  # fmt: skip

    @property
    def config(self) -> Config | None:
        """The configuration in force (the latest one a reload took)."""
        return self.reloader.config

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self._start_up()
        await self._start_web()
        self._schedule()
        self.schedule.scheduler.start()
        self._background()
        self.notifier.ready(self.status.text())
        # 20,000 lookups: in the compose thread, so the pages answer meanwhile. Only a log line:
        # a failure here (a state file gone already) is the jobs' to report, not a reason to stop.
        try:
            await self.jobs.offloop.run(self._log_overdue)
        except Exception as exc:
            log.warning("catch-up not listed error=%s", exc)
        # Owed alerts, then a digest missed while down, once, now; a task, so a stop can bound it
        # like a job.
        self._spawn(self.work_lock.run(self.jobs.catch_up), "catch-up")
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
        self.reloader.request()

    def _start_up(self) -> None:
        now = utcnow()
        # On a shared database the others' rows in 'sending' are theirs: only this instance's
        # own (an earlier run under its name) and expired leases are taken back.
        mine = self.instance.name if self.deps.store.shared else None
        recovered = self.deps.store.outbox.recover(now=now, by=mine)
        if recovered:
            log.warning(
                "recovered in-doubt messages n=%d (re-sent with the same Message-ID)", recovered
            )
        self._expire_removed(now)
        log.info(
            "started subscribers=%d poll_every=%ss instance=%s",
            len(self.deps.subscribers.subscribers),
            int(self.schedule.poll_every.total_seconds()),
            self.instance.name,
        )

    def _schedule(self) -> None:
        self.schedule.add_all()
        if self.config is not None:  # the bounce inboxes come from the settings at start-up
            schedule_bounces(self.schedule, self.deps, self.config.settings)
        # A reader confirmed or edited on the web may bring a (schedule, zone) without a job.
        self.deps.audience_changed = self.schedule.digests

    async def _shutdown(self) -> None:
        # Fetches hold nothing: cancel them. Wait for the job in flight (it stops between
        # messages), then stop the scheduler: its AsyncIOExecutor cancels running coroutines on
        # shutdown, so none may be running by then.
        self.jobs.cancel_fetches()
        await self.work_lock.acquire_for_stop()
        try:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.schedule.scheduler.shutdown(wait=False)
            await self.jobs.aclose()
            self.instance.stop()
        finally:
            self.work_lock.release()
        if self.web is not None:
            await self.web.stop()
        log.info("stopped")

    def _background(self) -> None:
        self.instance.start_leading()
        self._spawn(self.instance.run(), "heartbeat")
        self._spawn(self.reloader.serve(), "reloader")
        self._spawn(self.state.watch(), "state-watch")
        if self.config is not None:
            self._spawn(self.reloader.watch_files(self.config), "config-watch")
        every = self.notifier.watchdog_interval()
        if every is not None:
            self._spawn(watchdog(self.notifier, self.deps.store, self.work_lock, every), "watchdog")

    def _spawn(self, body: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(body, name=name)
        task.add_done_callback(_report_end)
        self._tasks.append(task)

    async def _start_web(self) -> None:
        listen = self.config.settings.http.listen if self.config else None
        if self.config is None or not listen:
            return
        probe = health.HealthProbe(
            store=self.deps.store,
            clock=utcnow,
            started_at=self.started_at,
            poll_every=lambda: self.schedule.poll_every,
            running=lambda: bool(self.schedule.scheduler.running) and not self._stopping,
            lost=lambda: self.state.lost,
        )
        routes = health.routes(probe, self.metrics)
        http = self.config.settings.http
        self.web = WebServer(
            listen,
            app.web_routes(
                self.deps, clock=utcnow, health=routes, signup=self._signup, wake=self._wake
            ),
            request_timeout=http.request_timeout.total_seconds(),
            max_connections=http.max_connections,
        )
        try:
            await self.web.start()
        except OSError as exc:
            self.web = None
            raise DigestdError(f"http.listen {listen}: {exc}") from None

    def _signup(self) -> SignupSettings:
        """The `signup:` settings in force (a reload swaps `config`)."""
        return self.config.settings.signup if self.config is not None else SignupSettings()

    def _wake(self) -> None:
        """A page queued a mail: run the delivery job now rather than at the next retry tick."""
        job = self.schedule.scheduler.get_job("retry")
        if job is not None and not self._stopping:
            job.modify(next_run_time=utcnow())

    def _meter_mailer(self) -> None:
        """Count and time every digest send; alerts go out through the bare mailer, uncounted."""
        self._raw_mailer = self.deps.mailer
        self.deps.mailer = MeteredMailer(self._raw_mailer, self.metrics, self._on_outcome)

    def _on_outcome(self, outcome: Outcome) -> None:
        self.work_lock.progressed()
        self.alerts.record(outcome)

    def _poll_seconds(self) -> float:
        """The shortest poll interval: how often the leadership is asked for."""
        return min([self.schedule.poll_every, *self.schedule.intervals.values()]).total_seconds()

    def _expire_removed(self, now: datetime) -> None:
        keep = app.served_keys(self.deps)
        n = self.deps.store.outbox.expire_except(keep, at=now, reason="subscriber removed")
        if n:
            log.warning("expired unsent mail of removed subscribers n=%d", n)

    def _log_overdue(self, deps: Deps) -> None:
        """Catch-up made explicit: which digests go out late now, and which max_late drops."""
        max_late = deps.options.max_late
        for late in pipeline.overdue(deps, now=utcnow()):
            log.warning(
                "catch-up %s n_subscribers=%d schedule=%r timezone=%s period=%s late_by=%s"
                " max_late=%s",
                "skipping digests older than max_late" if late.skipped else "sending late digests",
                late.n_subscribers, late.schedule, late.timezone, periods.period_key(late.slot),
                format_duration(late.late_by), format_duration(max_late) if max_late else "none",
            )  # fmt: skip

    def _adopt(self, new: Config, changes: Changes) -> None:
        """A reload applied `new` (under the work lock): follow it in the mailer, the alert
        policy and the schedule."""
        if changes.mailer:
            self._meter_mailer()
        self.alerts.policy = _alert_policy(self.deps, new)
        added, removed = self.schedule.digests()
        sources = new.settings.all_sources()
        poll_every = self.schedule.poll_every = sources[0].poll_every
        self.schedule.intervals = {src.key: src.poll_every for src in sources}
        self.schedule.polls()
        for name in changes.restart_needed:
            log.warning("reload: a change of %r needs a restart to take effect", name)
        log.info(
            "reloaded subscribers=%d added=%d removed=%d changed=%d expired=%d"
            " schedules_added=%d schedules_removed=%d poll_every=%ss",
            len(new.subscribers.subscribers), len(changes.added), len(changes.removed),
            len(changes.changed), changes.expired, added, removed,
            int(poll_every.total_seconds()),
        )  # fmt: skip


def _alert_policy(deps: Deps, config: Config | None) -> AlertPolicy:
    if config is None:
        return AlertPolicy(sender=deps.options.sender, sign=deps.sign)
    s = config.settings
    return AlertPolicy(
        admins=tuple(s.admins),
        source_down_after=s.alerts.source_down_after,
        delivery_failures=s.alerts.delivery_failures,
        sender=s.delivery.sender,
        site_name=s.site_name,
        sign=deps.sign,
    )


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
