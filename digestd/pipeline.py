"""Orchestration: poll → store → match → render → enqueue → deliver. The only module that knows the order."""

from __future__ import annotations

import hmac
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Literal

from digestd import periods
from digestd.errors import SourceError
from digestd.index import Matcher
from digestd.message import build_message
from digestd.model import Digest, Match, Outcome, Paper, Rendered, Subscriber, SubscriberSet
from digestd.render import Environments, RenderContext, render_digest
from digestd.sources.base import Source
from digestd.store import OutboxRow, Store
from digestd.transports.base import Mailer

__all__ = [
    "ComposeReport",
    "DeliverReport",
    "Deps",
    "IngestReport",
    "Options",
    "compose",
    "deliver_due",
    "ingest",
    "preview",
]

log = logging.getLogger(__name__)

Kind = Literal["digest", "alert"]


@dataclass(frozen=True, slots=True)
class Options:
    """The settings the pipeline needs, as plain values (the pipeline never sees the settings object)."""

    sender: str  # "Name <addr>" for the From header
    site_name: str = "Paper Digest"
    lookback: timedelta = timedelta(days=7)
    max_late: timedelta | None = None
    max_attempts: int = 8
    retry_base: timedelta = timedelta(minutes=1)
    retry_cap: timedelta = timedelta(hours=1)
    alert_ttl: timedelta = timedelta(days=1)

    @property
    def envelope_from(self) -> str:
        return parseaddr(self.sender)[1]

    @property
    def domain(self) -> str:
        return self.envelope_from.rpartition("@")[2] or "localhost"


@dataclass(slots=True)
class Deps:
    """Everything the pipeline talks to; the shells build it, tests pass real local peers."""

    store: Store
    source: Source
    mailer: Mailer
    subscribers: SubscriberSet
    envs: Environments
    options: Options
    registered: dict[str, datetime] = field(default_factory=dict)
    stopping: Callable[[], bool] = lambda: False
    matcher: Matcher | None = None  # built from `subscribers` once; see `matcher_for`


def matcher_for(deps: Deps) -> Matcher:
    """The index over the current subscribers, rebuilt only when the subscriber set was replaced."""
    if deps.matcher is None or deps.matcher.subscribers is not deps.subscribers:
        deps.matcher = Matcher.build(deps.subscribers)
    return deps.matcher


@dataclass(frozen=True, slots=True)
class IngestReport:
    ok: bool
    n_items: int = 0
    n_new: int = 0
    n_alerts: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ComposeReport:
    n_due: int = 0
    n_queued: int = 0
    n_empty: int = 0


@dataclass(slots=True)
class DeliverReport:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def register(deps: Deps, *, now: datetime) -> None:
    """Remember when each subscriber first appeared, so a newcomer's first digest starts from now."""
    deps.registered = deps.store.register_subscribers(
        (key(s) for s in deps.subscribers.subscribers), at=now
    )


async def ingest(deps: Deps, *, now: datetime) -> IngestReport:
    """Poll the source once, store what is new, and queue the alerts it triggers.

    A failed poll stores nothing and marks nothing; the error is recorded as data and logged once.
    """
    name = deps.source.name
    try:
        result = await deps.source.fetch(now=now)
    except SourceError as exc:
        deps.store.record_poll(name, at=now, ok=False, error=str(exc))
        log.warning("poll failed source=%s transient=%s error=%s", name, exc.transient, exc)
        return IngestReport(ok=False, error=str(exc))
    for problem in result.problems:
        log.warning(
            "skipped item source=%s index=%d reason=%s", name, problem.index, problem.reason
        )
    new = deps.store.record_papers(result.papers, seen_at=now)
    poll_id = deps.store.record_poll(
        name, at=now, ok=True, n_items=len(result.papers), n_new=len(new)
    )
    n_alerts = _queue_alerts(deps, new, poll_id=poll_id, now=now)
    log.info(
        "poll ok source=%s n_items=%d n_new=%d n_alerts=%d",
        name,
        len(result.papers),
        len(new),
        n_alerts,
    )
    return IngestReport(ok=True, n_items=len(result.papers), n_new=len(new), n_alerts=n_alerts)


def _queue_alerts(deps: Deps, new: Sequence[Paper], *, poll_id: int, now: datetime) -> int:
    if not new:
        return 0
    queued = 0
    # Paper-major: each new paper is scanned once and reaches its subscribers through the index.
    for sub, found in matcher_for(deps).match_all(new, alerts_only=True):
        if found and _enqueue(
            deps,
            sub,
            "alert",
            f"poll-{poll_id}",
            found,
            now=now,
            expires=now + deps.options.alert_ttl,
        ):
            queued += 1
    return queued


def compose(
    deps: Deps, *, now: datetime, once: bool = False, only: Iterable[str] | None = None
) -> ComposeReport:
    """Queue a digest for every subscriber whose period has begun and has no digest yet.

    With `once`, the schedule is ignored: everyone gets what matched and was not sent yet.
    """
    wanted = {e.casefold() for e in only} if only is not None else None
    due = n_queued = n_empty = 0
    for sub, period, expires in _due(deps, now=now, once=once):
        if wanted is not None and sub.email.casefold() not in wanted:
            continue
        due += 1
        papers = deps.store.candidates(key(sub), since=now - deps.options.lookback)
        found = matcher_for(deps).match(papers, sub)
        if _enqueue(deps, sub, "digest", period, found, now=now, expires=expires):
            n_queued += bool(found)
            n_empty += not found
    if due:
        log.info("composed n_due=%d n_queued=%d n_empty=%d", due, n_queued, n_empty)
    return ComposeReport(n_due=due, n_queued=n_queued, n_empty=n_empty)


def _due(
    deps: Deps, *, now: datetime, once: bool
) -> Iterable[tuple[Subscriber, str, datetime | None]]:
    """(subscriber, period key, expiry) for each digest to compose now; one slot per (schedule, zone)."""
    slots: dict[tuple[str, str], tuple[datetime, datetime]] = {}
    for sub in deps.subscribers.subscribers:
        if once:
            yield sub, f"once-{now.isoformat()}", None
            continue
        key = (sub.schedule, sub.timezone)
        if key not in slots:
            latest = periods.latest_slot(sub.schedule, sub.timezone, now)
            slots[key] = (latest, periods.next_slot(sub.schedule, sub.timezone, latest))
        latest, following = slots[key]
        if _is_due(deps, sub, latest, now=now):
            yield sub, periods.period_key(latest), following


def _is_due(deps: Deps, sub: Subscriber, slot: datetime, *, now: datetime) -> bool:
    registered = deps.registered.get(key(sub))
    if registered is not None and slot < registered:
        return (
            False  # a newcomer's first digest is their next slot, not one from before they joined
        )
    max_late = deps.options.max_late
    if max_late is not None and now - slot > max_late:
        return False
    return not deps.store.has_period(key(sub), "digest", periods.period_key(slot))


def _enqueue(
    deps: Deps,
    sub: Subscriber,
    kind: Kind,
    period: str,
    found: Sequence[Match],
    *,
    now: datetime,
    expires: datetime | None,
) -> bool:
    """Render and queue one message; every matched paper is reserved, shown or over the cap."""
    message_id = make_message_id(deps, key(sub), kind, period)
    data = _render(deps, sub, kind, found, message_id=message_id, now=now) if found else None
    row = deps.store.enqueue(
        subscriber=key(sub),
        kind=kind,
        period=period,
        message_id=message_id,
        sender=deps.options.envelope_from,
        data=data,
        paper_ids=[m.paper.id for m in found],
        at=now,
        expires_at=expires,
    )
    return row is not None


def digest_for(sub: Subscriber, kind: Kind, found: Sequence[Match]) -> Digest:
    shown = tuple(found[: sub.max_papers])
    return Digest(subscriber=sub, kind=kind, matches=shown, more=len(found) - len(shown))


def _render(
    deps: Deps,
    sub: Subscriber,
    kind: Kind,
    found: Sequence[Match],
    *,
    message_id: str,
    now: datetime,
) -> bytes:
    rendered = render_digest(digest_for(sub, kind, found), deps.envs, render_context(deps, now=now))
    return build_message(
        rendered,
        sender=deps.options.sender,
        to=sub.email,
        to_name=sub.name,
        message_id=message_id,
        date=now,
    )


def render_context(deps: Deps, *, now: datetime) -> RenderContext:
    return RenderContext(
        site_name=deps.options.site_name,
        date_label=now.strftime("%A %d %B %Y"),
        unsubscribe_url=None,
        manage_note=(
            f"You receive this because an administrator of {deps.options.site_name} subscribed "
            f"you. Reply to {deps.options.envelope_from} to change your rules or unsubscribe."
        ),
        web_url=None,
    )


def make_message_id(deps: Deps, email: str, kind: str, period: str) -> str:
    """Stable per (subscriber, kind, period), unguessable to outsiders (delivery.md §1.4)."""
    mac = hmac.new(deps.store.secret(), f"{email}|{kind}|{period}".encode(), "sha256")
    safe_period = "".join(c for c in period if c.isalnum() or c in "-")
    return f"<{kind}.{safe_period}.{mac.hexdigest()[:24]}@{deps.options.domain}>"


async def deliver_due(deps: Deps, *, now: datetime, clock: Callable[[], datetime]) -> DeliverReport:
    """Send every queued message whose time has come, committing each outcome before the next send.

    `clock` is read after each send so the stored times are true ones; `stopping` is checked between
    messages so a shutdown finishes the message in flight and leaves the rest queued.
    """
    report = DeliverReport()
    deps.store.release_stale(now=now)
    while not deps.stopping():
        rows = deps.store.claim_due(now=now, limit=1)
        if not rows:
            break
        row = rows[0]
        outcome = await deps.mailer.send(row.sender, row.subscriber, row.data)
        _record(deps, row, outcome, at=clock(), report=report)
    return report


def _record(
    deps: Deps, row: OutboxRow, outcome: Outcome, *, at: datetime, report: DeliverReport
) -> None:
    store = deps.store
    status = outcome.status
    if status == "sent":
        store.mark_sent(row.id, at=at, code=outcome.code, reply=outcome.reply)
        report.sent += 1
    elif status == "permanent" or row.attempts >= deps.options.max_attempts:
        store.mark_failed(row.id, at=at, code=outcome.code, reply=outcome.reply)
        report.failed += 1
    else:
        retry_at = at + backoff(row.attempts, deps.options)
        store.mark_deferred(
            row.id, at=at, retry_at=retry_at, code=outcome.code, reply=outcome.reply
        )
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


def backoff(attempt: int, options: Options) -> timedelta:
    """Exponential backoff with full jitter in its upper half, so retries of many rows spread out."""
    doublings = min(max(attempt - 1, 0), 30)  # 2**30 minutes is past any sane cap already
    ceiling = min(options.retry_cap, options.retry_base * (2**doublings))
    jitter = 0.5 + random.random() / 2  # jitter, not security
    return timedelta(seconds=ceiling.total_seconds() * jitter)


def preview(deps: Deps, email: str, *, now: datetime) -> tuple[Digest, Rendered] | None:
    """What `email` would get now, rendered, without queueing or marking anything."""
    sub = deps.subscribers.by_email(email)
    if sub is None:
        return None
    papers = deps.store.candidates(key(sub), since=now - deps.options.lookback)
    found = matcher_for(deps).match(papers, sub)
    digest = digest_for(sub, "digest", found)
    return digest, render_digest(digest, deps.envs, render_context(deps, now=now))


def key(sub: Subscriber) -> str:
    """The store's key for a subscriber: addresses compare case-insensitively."""
    return sub.email.lower()
