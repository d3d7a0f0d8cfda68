"""Draining the outbox: parallel workers, batch claims, and one durable outcome per message.

`pipeline.deliver_due` calls `drain`. The promise (README, "Delivery guarantees"): every state
change is committed before the next network step on that connection, so a crash at any instant
loses nothing, and only a message whose DATA reached the relay can go out twice (same Message-ID).

* Claims come in batches (one write transaction each, so a row is claimed once); the workers share
  the batch, and the next one is claimed (on the commit thread's connection) and its bodies read
  (by a reader thread) before it is needed. Rows claimed but not handed out when the drain stops
  are given back (`unclaim`); after a crash they are `in_doubt` and re-sent once, which is
  harmless: they never reached a relay.
* Each worker sends on its own connection (the mailer is a pool) and awaits the commit of its
  outcome before its next send. Outcomes are committed by a thread on a second connection to the
  same file, so one connection's fsync does not stall the others (group commit, `_Committer`).
* `stopping()` is checked before each claim hand-out: a stop finishes the messages in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from digestd.bounces.verp import BOUNCE_PURPOSE, verp_sender
from digestd.core.model import Outcome
from digestd.core.observer import Observer
from digestd.deliver.transports.base import Mailer
from digestd.mail import linktokens
from digestd.store import StateStore
from digestd.store.protocols import OutboxRow

__all__ = [
    "STALE_REASON",
    "DeliverReport",
    "Outlet",
    "RetryOptions",
    "backoff",
    "drain",
    "suspend_after",
]

log = logging.getLogger("digestd.pipeline")  # one name for the whole pipeline, as admins filter it


class RetryOptions(Protocol):
    """The settings a drain needs (the pipeline's `Options` is one)."""

    @property
    def max_attempts(self) -> int: ...
    @property
    def retry_base(self) -> timedelta: ...
    @property
    def retry_cap(self) -> timedelta: ...
    @property
    def suspend_after(self) -> int | None: ...
    @property
    def verp(self) -> str | None: ...  # VERP base address (bounces@…); None: the row's sender
    @property
    def secret(self) -> bytes | None: ...  # None: the store's own
    @property
    def instance(self) -> str | None: ...
    @property
    def lease(self) -> timedelta: ...


class Outlet(Protocol):
    """What a drain talks to (the pipeline's `Outlet` is one): declared here, so delivery does not
    import the pipeline that calls it."""

    @property
    def store(self) -> StateStore: ...
    @property
    def mailer(self) -> Mailer: ...
    @property
    def observer(self) -> Observer: ...
    @property
    def options(self) -> RetryOptions: ...
    @property
    def stopping(self) -> Callable[[], bool]: ...


# Claimed rows per worker and batch: enough to amortise the claim's commit, few enough that a
# crash leaves only a handful of never-sent rows flagged in doubt.
_CLAIM_PER_WORKER = 8
# Why a message past its expiry was never sent (its last error follows, in `digestd status`).
STALE_REASON = (
    "expired: its next period began before it could be delivered; papers go into the next digest"
)

_T = TypeVar("_T")


@dataclass(slots=True)
class DeliverReport:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    suspended: int = 0  # addresses suspended by this drain's hard failures
    suppressed: int = 0  # messages dropped because the address unsubscribed after they were queued
    counts: dict[str, int] = field(default_factory=dict)


class _Side:
    """A connection of its own to the store's file, used only from a thread of its own.

    SQLite and zlib release the GIL while they work, so what runs here overlaps the event loop.
    ":memory:" has no second connection: the work then runs inline on the store itself.
    """

    def __init__(self, store: StateStore, name: str) -> None:
        self.store = store
        self.threaded = str(store.path) != ":memory:"
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.side: StateStore | None = None  # opened, used and closed in the executor's thread only

    async def call(self, work: Callable[[StateStore], _T]) -> _T:
        if not self.threaded:
            return work(self.store)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: work(self._open()))

    def _open(self) -> StateStore:
        if self.side is None:
            # The very file the store has open: never a new empty one made under a lost name.
            self.side = self.store.side()
        return self.side

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self._close)
        self.executor.shutdown(wait=True)

    def _close(self) -> None:
        if self.side is not None:
            self.side.close()
            self.side = None


class _Claimer:
    """Hands claimed rows to workers one at a time; the next batch is claimed ahead of need.

    The claim (a short write transaction) runs on the committer's connection, the one writer while
    sending; the rows' ~40 KB bodies are read afterwards by a reader thread on a connection of
    its own (bodies never change once queued), so neither blocks the event loop
    nor holds the write lock that the outcome commits wait for.
    """

    def __init__(
        self,
        committer: _Committer,
        *,
        now: datetime,
        batch: int,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.committer = committer
        self.reader = _Side(committer.deps.store, "digestd-read")
        self.now = now
        self.clock = clock or (lambda: now)
        self.batch = batch
        self.claimed: deque[OutboxRow] = deque()
        self.exhausted = False
        self.refill: asyncio.Task[None] | None = None

    async def next(self) -> OutboxRow | None:
        """The next claimed row; None once nothing due is left."""
        while True:
            if len(self.claimed) <= self.batch // 2:
                self._start_refill()
            if self.claimed:
                return self.claimed.popleft()
            if self.refill is None:
                return None
            await asyncio.shield(self.refill)  # other workers may take the rows first: loop

    def _start_refill(self) -> None:
        if self.refill is None and not self.exhausted:
            self.refill = asyncio.create_task(self._claim())

    async def _claim(self) -> None:
        try:
            options = self.committer.deps.options
            # The claimant's name and lease: if this process dies, another instance re-sends
            # these rows once the lease passes (the heartbeat renews it while we live).
            lease_until = self.clock() + options.lease
            heads = await self.committer.side.call(
                lambda store: store.outbox.claim_due(
                    now=self.now, limit=self.batch, bodies=False,
                    by=options.instance, lease_until=lease_until,
                )
            )  # fmt: skip
            self.exhausted = len(heads) < self.batch
            try:
                rows = await self.reader.call(lambda store: store.outbox.with_bodies(heads))
            except BaseException:
                # Never hand out a row without its bytes: back to the queue (or, if even that
                # fails, `in_doubt` at the next start, and re-sent: it never reached a relay).
                await asyncio.shield(
                    self.committer.side.call(lambda store: store.outbox.unclaim(heads))
                )
                raise
            self.claimed.extend(rows)
        finally:
            self.refill = None

    async def aclose(self, store: StateStore) -> None:
        """Unclaim what was claimed and not handed out, once a claim in progress has landed."""
        if self.refill is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.refill)
        if self.claimed:
            store.outbox.unclaim(self.claimed)
            self.claimed.clear()
        await self.reader.aclose()


class _Committer:
    """Group commit on a connection of its own, in a thread, so the fsync never blocks the loop.

    A worker awaits `record` until its outcome is committed, so the promise holds per connection
    (committed before that connection's next network step). While one transaction is being made
    durable, the loop keeps the other connections busy and their outcomes gather into the next
    transaction: one fsync for up to `workers` messages.
    """

    def __init__(self, deps: Outlet, report: DeliverReport) -> None:
        self.deps = deps
        self.report = report
        self.pending: list[tuple[OutboxRow, Outcome, datetime, asyncio.Future[None]]] = []
        self.flusher: asyncio.Task[None] | None = None
        self.side = _Side(deps.store, "digestd-commit")

    async def record(self, row: OutboxRow, outcome: Outcome, at: datetime) -> None:
        done = asyncio.get_running_loop().create_future()
        self.pending.append((row, outcome, at, done))
        if self.flusher is None:
            self.flusher = asyncio.create_task(self._flush_all())
        await done

    async def _flush_all(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                outcomes = [(row, outcome, at) for row, outcome, at, _ in batch]
                try:
                    delta = await self.side.call(lambda store: self._commit(store, outcomes))  # noqa: B023
                except Exception as exc:  # every waiter of this batch sees the failure
                    _settle(batch, exc)
                else:
                    self._merge(delta)
                    _settle(batch, None)
        finally:
            self.flusher = None

    def _commit(
        self, store: StateStore, outcomes: list[tuple[OutboxRow, Outcome, datetime]]
    ) -> DeliverReport:
        """One transaction for `outcomes`."""
        delta = DeliverReport()
        with store.batch():
            for row, outcome, at in outcomes:
                try:
                    record(self.deps, row, outcome, at=at, report=delta, store=store)
                except ValueError as exc:  # changed nothing: see `_taken_over`
                    _taken_over(row, outcome, exc)
        return delta

    def _merge(self, delta: DeliverReport) -> None:
        self.report.sent += delta.sent
        self.report.deferred += delta.deferred
        self.report.failed += delta.failed
        self.report.suspended += delta.suspended

    async def aclose(self) -> None:
        """Wait for the last transaction, then close the side connection in its own thread."""
        if self.flusher is not None:
            await asyncio.shield(self.flusher)
        await self.side.aclose()


def _taken_over(row: OutboxRow, outcome: Outcome, exc: ValueError) -> None:
    """The row left 'sending' before its outcome came: its lease passed (this instance lost the
    database, or stalled, for longer than a lease) and another instance recovered it. A "sent" is
    recorded all the same (`mark_sent` accepts in-doubt rows); any other outcome is the other
    instance's to decide, so it is only said."""
    log.warning(
        "outcome dropped kind=%s period=%s outcome=%s reason=%s",
        row.kind, row.period, outcome.status, str(exc),
    )  # fmt: skip


def _settle(
    batch: list[tuple[OutboxRow, Outcome, datetime, asyncio.Future[None]]],
    error: Exception | None,
) -> None:
    for *_, done in batch:
        if done.done():  # the worker was cancelled; the outcome is committed all the same
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


async def drain(
    deps: Outlet, *, now: datetime, clock: Callable[[], datetime], workers: int
) -> DeliverReport:
    """Send every due message with `workers` parallel senders; returns what happened."""
    report = DeliverReport()
    _recover_orphans(deps, now)
    deps.store.outbox.release_stale(now=now, reason=STALE_REASON)
    deps.observer.begin("send", deps.store.outbox.due_count(now=now))
    committer = _Committer(deps, report)
    claimer = _Claimer(committer, now=now, batch=max(1, workers) * _CLAIM_PER_WORKER, clock=clock)
    envelope = _envelope(deps)
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, workers)):
                group.create_task(_worker(deps, claimer, committer, clock, envelope))
    finally:
        await claimer.aclose(deps.store)
        await committer.aclose()
    deps.observer.end(
        "send", f"sent {report.sent}, deferred {report.deferred}, failed {report.failed}"
    )
    return report


def _envelope(deps: Outlet) -> Callable[[OutboxRow], str]:
    """Each message's envelope sender: its own VERP address when `verp` is set (a bounce then
    names the message and address), else the sender it was queued with."""
    base = deps.options.verp
    if base is None:
        return lambda row: row.sender
    key = linktokens.derive_key(deps.options.secret or deps.store.secret(), BOUNCE_PURPOSE)
    return lambda row: verp_sender(base, key, row.id, row.subscriber)


def _recover_orphans(deps: Outlet, now: datetime) -> None:
    """Rows in 'sending' that nobody is sending: this instance's own (one drain at a time runs
    per instance, so they are left from one that failed, e.g. when the database went away), and
    those of an instance whose lease passed (it died). In doubt and due now, so this drain
    re-sends them with their Message-ID."""
    recovered = deps.store.outbox.recover(now=now, by=deps.options.instance)
    if recovered:
        log.warning(
            "recovered messages left in sending n=%d (re-sent with the same Message-ID)", recovered
        )


async def _worker(
    deps: Outlet,
    claimer: _Claimer,
    committer: _Committer,
    clock: Callable[[], datetime],
    envelope: Callable[[OutboxRow], str],
) -> None:
    while not deps.stopping():
        row = await claimer.next()
        if row is None:
            return
        if row.suppressed:
            # Queued before the address left; RFC 8058 readers expect nothing more after a POST.
            deps.store.outbox.mark_expired(row.id, at=clock(), reason="unsubscribed")
            committer.report.suppressed += 1
            log.info("skipped kind=%s period=%s reason=unsubscribed", row.kind, row.period)
            continue
        outcome = await deps.mailer.send(
            envelope(row), row.subscriber, row.data, canonical=row.canonical
        )
        await committer.record(row, outcome, clock())
        deps.observer.advance("send")


def record(
    deps: Outlet,
    row: OutboxRow,
    outcome: Outcome,
    *,
    at: datetime,
    report: DeliverReport,
    store: StateStore | None = None,
) -> None:
    """Commit what the relay said about `row` (sent, failed, deferred), then log one line.

    `store`: the connection to write with (the committer's own); `deps.store` by default.
    """
    store, options = store or deps.store, deps.options
    status = outcome.status
    if status == "sent":
        store.outbox.mark_sent(row.id, at=at, code=outcome.code, reply=outcome.reply)
        report.sent += 1
    elif status == "permanent" or row.attempts >= options.max_attempts:
        hard = options.suspend_after if status == "permanent" else None
        if store.outbox.mark_failed(
            row.id, at=at, code=outcome.code, reply=outcome.reply, suspend=suspend_after(hard)
        ):
            report.suspended += 1
            log.warning("address suspended kind=%s period=%s", row.kind, row.period)
        report.failed += 1
    else:
        retry_at = at + backoff(row.attempts, options.retry_base, options.retry_cap)
        mark = store.outbox.mark_in_doubt if status == "in_doubt" else store.outbox.mark_deferred
        mark(row.id, at=at, retry_at=retry_at, code=outcome.code, reply=outcome.reply)
        report.deferred += 1
    log.info(
        "send kind=%s period=%s attempt=%d outcome=%s smtp_code=%s reply=%s",
        row.kind,
        row.period,
        row.attempts,
        status,
        outcome.code,
        outcome.reply[:200],
    )


def suspend_after(limit: int | None) -> Callable[[int], str | None] | None:
    """The suspension policy for a hard failure: an address is suspended at `limit` consecutive
    hard failures (None: hard failures do not count)."""
    if limit is None:
        return None

    def policy(failures: int) -> str | None:
        return f"address suspended after {failures} hard failures" if failures >= limit else None

    return policy


def backoff(attempt: int, base: timedelta, cap: timedelta) -> timedelta:
    """Exponential backoff with full jitter in its upper half, so retries of many rows spread out."""
    doublings = min(max(attempt - 1, 0), 30)  # 2**30 minutes is past any sane cap already
    ceiling = min(cap, base * (2**doublings))
    jitter = 0.5 + random.random() / 2  # jitter, not security
    return timedelta(seconds=ceiling.total_seconds() * jitter)
