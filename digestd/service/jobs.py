"""What the daemon's jobs do: poll a source (fetch outside the work lock, store under it), compose
due digests, deliver what is due, and catch up at start-up; each is a pipeline call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from digestd import pipeline
from digestd.core.errors import SourceError
from digestd.core.model import ParseResult
from digestd.deliver.transports.base import Mailer
from digestd.pipeline import Deps, readers
from digestd.pipeline.feedback import refresh_relevance
from digestd.pipeline.likes import import_likes
from digestd.service.admin_alerts import AdminAlerts
from digestd.service.clock import utcnow
from digestd.service.metrics import Metrics
from digestd.service.offloop import OffLoop
from digestd.service.worklock import WorkLock
from digestd.sources.base import Source
from digestd.sources.http import HttpGetter, Throttle, make_client

__all__ = ["Jobs"]

log = logging.getLogger(__name__)


class Jobs:
    """The bodies the scheduler runs under the work lock.

    A poll fetches outside the lock (one poll per source at a time) and takes the lock only to
    store what it fetched: a slow source delays nobody but itself, and a stop cancels its fetch.
    Storing a poll, queueing owed alerts and composing run in `offloop`'s thread, so the loop
    keeps answering HTTP meanwhile; delivering stays on the loop (its store work is threaded).
    """

    def __init__(
        self,
        deps: Deps,
        lock: WorkLock,
        *,
        metrics: Metrics,
        alerts: AdminAlerts,
        alert_mailer: Callable[[], Mailer],
        stopping: Callable[[], bool],
        state_lost: Callable[[], str | None],
        leads: Callable[[str], bool] = lambda source: True,
    ) -> None:
        self.deps = deps
        self._leads = leads  # poll leadership: among several instances, one polls a source
        self._lock = lock
        self._metrics = metrics
        self._alerts = alerts
        self._alert_mailer = alert_mailer  # the bare mailer: alerts are not counted as digests
        self._stopping = stopping
        self._state_lost = state_lost
        self._polling: set[str] = set()  # sources whose poll is under way
        self._sharing = False  # a follower's drain is under way
        self._fetches: set[asyncio.Task[ParseResult | SourceError]] = set()
        self._likes_getter: HttpGetter | None = None  # arXiv's API, for `like:` papers (#16)
        self._likes_asked: set[str] = set()  # ids requested once already
        self.offloop = OffLoop(deps, stopping=stopping)

    def poller(self, name: str) -> Callable[[], Awaitable[None]]:
        async def poll() -> None:
            if name in self._polling or self._stopping():
                log.debug("poll skipped source=%s: the previous poll is still running", name)
                return
            if self._state_lost() is not None:  # nothing to lead, nothing to send: skipped
                log.debug("job skipped job=poll source=%s reason=state lost", name)
                return
            if not self._leads(name):
                # Another instance polls it; this tick sends what is due instead, so every
                # instance shares the sending (claims skip each other's rows) and takes over
                # the claims of one that died within a lease and a poll interval.
                log.debug("poll skipped source=%s: another instance leads it", name)
                await self._share_sending()
                return
            self._polling.add(name)
            try:
                await self._poll(name)
            finally:
                self._polling.discard(name)

        return poll

    async def _share_sending(self) -> None:
        """A follower's tick: one drain at a time, so a long one never holds back the next
        ticks, which must keep asking for the leadership."""
        if self._sharing:
            return
        self._sharing = True
        try:
            await self._lock.run(self.deliver)
        finally:
            self._sharing = False

    async def _poll(self, name: str) -> None:
        """Fetch outside the work lock (bounded by the source's deadline), then store under it."""
        source = next((s for s in self.deps.all_sources() if s.name == name), None)
        if source is None:
            return
        if self._state_lost() is not None:  # nowhere to store what the fetch would bring
            log.debug("job skipped job=poll source=%s reason=state file lost", name)
            return
        now = utcnow()
        fetched = await self._fetch(source, now)
        if fetched is None:
            return

        async def _store_poll() -> None:
            report = await self.offloop.run(
                lambda deps: pipeline.record_poll(deps, name, fetched, now=now)
            )
            self._metrics.poll(report.ok)
            await self._check_alerts()
            await self.deliver()

        await self._lock.run(_store_poll)

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

    def cancel_fetches(self) -> None:
        """At a stop: fetches hold nothing, so they are cut rather than waited for."""
        for fetch in list(self._fetches):
            fetch.cancel()

    async def catch_up(self) -> None:
        """At start-up: the alerts a poll committed before a crash still owes, then the digests
        missed while down, each once."""
        now = utcnow()
        await self.offloop.run(lambda deps: pipeline.queue_owed_alerts(deps, now=now))
        await self.digests()

    async def digests(self) -> None:
        await readers.sync_readers_async(self.deps, now=utcnow())
        try:
            await self.import_likes()
        except Exception:  # a like list is teaching material, never a reason not to send
            log.exception("like: lists not imported this time")
        await self.refresh_relevance()
        now = utcnow()
        await self.offloop.run(lambda deps: pipeline.compose(deps, now=now))
        await self.deliver()

    async def aclose(self) -> None:
        """At a stop, once no job runs: a step the stop cut ends at its next commit."""
        await self.offloop.aclose()

    async def import_likes(self) -> None:
        """Issue #16: every `like:` list into imported likes, missing papers fetched from arXiv
        (its 3 s pace); problems are logged, the rest goes on."""
        subs = [s for s in self.deps.subscribers.subscribers if s.likes or s.like_files]
        if not subs:
            return
        if self._likes_getter is None:
            self._likes_getter = HttpGetter(
                make_client(timeout=30.0), name="arxiv-likes", throttle=Throttle(3.0)
            )
        report = await import_likes(
            self.deps.store, self._likes_getter, subs, now=utcnow(),
            base=self.deps.options.likes_base, asked=self._likes_asked,
        )  # fmt: skip
        for problem in report.problems:
            log.warning("like: %s", problem)
        if report.fetch_error or report.unknown or report.liked:
            log.info(
                "likes imported=%d fetched=%d unknown=%s error=%s", report.liked,
                report.fetched, ",".join(report.unknown) or "-", report.fetch_error or "-",
            )  # fmt: skip

    async def refresh_relevance(self) -> None:
        """Issue #16: the readers' models brought up to date before composing, off the loop."""
        await refresh_relevance(self.deps, now=utcnow())

    async def deliver(self) -> None:
        # Every retry tick: a reader another process confirmed or edited gets their digest job.
        await readers.sync_readers_async(self.deps, now=utcnow())
        report = await pipeline.deliver_due(self.deps, now=utcnow(), clock=utcnow)
        if report.sent or report.deferred or report.failed:
            await self._check_alerts()

    async def _check_alerts(self) -> None:
        await self._alerts.check(self._alert_mailer(), now=utcnow())
