"""Draining the outbox: parallel workers, batch claims, and one durable outcome per message.

`pipeline.deliver_due` calls `drain`. The promise (README, "Delivery guarantees"): every state
change is committed before the next network step on that connection, so a crash at any instant
loses nothing, and only a message whose DATA reached the relay can go out twice (same Message-ID).

* Claims come in batches (one write transaction each, so a row is claimed once); the workers share
  the batch. Rows claimed but not handed out when the drain stops are given back (`unclaim`); after
  a crash they are `in_doubt` and re-sent once, which is harmless: they never reached a relay.
* Each worker sends on its own connection (the mailer is a pool) and commits the outcome — SQLite
  calls are synchronous on the loop thread, so the commit completes before that worker's next send.
* `stopping()` is checked before each claim hand-out: a stop finishes the messages in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from digestd.model import Outcome
from digestd.store import OutboxRow, Store

if TYPE_CHECKING:
    from digestd.pipeline import Deps

__all__ = ["DeliverReport", "backoff", "drain"]

log = logging.getLogger("digestd.pipeline")

# Claimed rows per worker and batch: enough to amortise the claim's commit, few enough that a
# crash leaves only a handful of never-sent rows flagged in doubt.
_CLAIM_PER_WORKER = 8


@dataclass(slots=True)
class DeliverReport:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    suspended: int = 0  # addresses suspended by this drain's hard failures
    suppressed: int = 0  # messages dropped because the address unsubscribed after they were queued
    counts: dict[str, int] = field(default_factory=dict)


class _Claimer:
    """Hands claimed rows to workers one at a time, claiming the next batch when empty."""

    def __init__(self, store: Store, *, now: datetime, batch: int) -> None:
        self.store = store
        self.now = now
        self.batch = batch
        self.claimed: deque[OutboxRow] = deque()
        self.exhausted = False

    def next(self) -> OutboxRow | None:
        if not self.claimed and not self.exhausted:
            rows = self.store.claim_due(now=self.now, limit=self.batch)
            self.exhausted = len(rows) < self.batch
            self.claimed.extend(rows)
        return self.claimed.popleft() if self.claimed else None

    def give_back(self) -> None:
        if self.claimed:
            self.store.unclaim(self.claimed)
            self.claimed.clear()


class _Committer:
    """Group commit: outcomes that arrive in the same loop turn share one transaction.

    A worker awaits `record` until its outcome is committed, so the promise holds per connection
    (committed before that connection's next network step) with one fsync for several messages.
    """

    def __init__(self, deps: Deps, report: DeliverReport) -> None:
        self.deps = deps
        self.report = report
        self.pending: list[tuple[OutboxRow, Outcome, datetime]] = []
        self.flushed: asyncio.Future[None] | None = None

    async def record(self, row: OutboxRow, outcome: Outcome, at: datetime) -> None:
        self.pending.append((row, outcome, at))
        if self.flushed is None:
            self.flushed = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._flush)
        await asyncio.shield(self.flushed)

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        flushed, self.flushed = self.flushed, None
        assert flushed is not None
        try:
            with self.deps.store.batch():
                for row, outcome, at in batch:
                    record(self.deps, row, outcome, at=at, report=self.report)
        except Exception as exc:  # every waiter of this batch sees the failure
            flushed.set_exception(exc)
        else:
            flushed.set_result(None)


async def drain(
    deps: Deps, *, now: datetime, clock: Callable[[], datetime], workers: int
) -> DeliverReport:
    """Send every due message with `workers` parallel senders; returns what happened."""
    report = DeliverReport()
    deps.store.release_stale(now=now)
    deps.observer.begin("send", deps.store.due_count(now=now))
    claimer = _Claimer(deps.store, now=now, batch=max(1, workers) * _CLAIM_PER_WORKER)
    committer = _Committer(deps, report)
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, workers)):
                group.create_task(_worker(deps, claimer, committer, clock))
    finally:
        claimer.give_back()
    deps.observer.end(
        "send", f"sent {report.sent}, deferred {report.deferred}, failed {report.failed}"
    )
    return report


async def _worker(
    deps: Deps, claimer: _Claimer, committer: _Committer, clock: Callable[[], datetime]
) -> None:
    while not deps.stopping():
        row = claimer.next()
        if row is None:
            return
        if deps.store.is_suppressed(row.subscriber):
            # Queued before the address left; RFC 8058 readers expect nothing more after a POST.
            deps.store.mark_expired(row.id, at=clock(), reason="unsubscribed")
            committer.report.suppressed += 1
            log.info("skipped kind=%s period=%s reason=unsubscribed", row.kind, row.period)
            continue
        outcome = await deps.mailer.send(row.sender, row.subscriber, row.data)
        await committer.record(row, outcome, clock())
        deps.observer.advance("send")


def record(
    deps: Deps, row: OutboxRow, outcome: Outcome, *, at: datetime, report: DeliverReport
) -> None:
    """Commit what the relay said about `row` (sent, failed, deferred), then log one line."""
    store, options = deps.store, deps.options
    status = outcome.status
    if status == "sent":
        store.mark_sent(row.id, at=at, code=outcome.code, reply=outcome.reply)
        report.sent += 1
    elif status == "permanent" or row.attempts >= options.max_attempts:
        hard = options.suspend_after if status == "permanent" else None
        if store.mark_failed(
            row.id, at=at, code=outcome.code, reply=outcome.reply, suspend_after=hard
        ):
            report.suspended += 1
            log.warning("address suspended kind=%s period=%s", row.kind, row.period)
        report.failed += 1
    else:
        retry_at = at + backoff(row.attempts, options.retry_base, options.retry_cap)
        mark = store.mark_in_doubt if status == "in_doubt" else store.mark_deferred
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


def backoff(attempt: int, base: timedelta, cap: timedelta) -> timedelta:
    """Exponential backoff with full jitter in its upper half, so retries of many rows spread out."""
    doublings = min(max(attempt - 1, 0), 30)  # 2**30 minutes is past any sane cap already
    ceiling = min(cap, base * (2**doublings))
    jitter = 0.5 + random.random() / 2  # jitter, not security
    return timedelta(seconds=ceiling.total_seconds() * jitter)
