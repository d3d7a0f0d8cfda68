"""Orchestration: poll → store → match → render → enqueue → deliver. The only module that knows the order."""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Literal

from digestd.core import periods
from digestd.core.addresses import address_key, check_address
from digestd.core.errors import SourceError
from digestd.core.latex import readable_paper
from digestd.core.model import (
    Digest,
    Match,
    Paper,
    ParseResult,
    Rendered,
    Spliced,
    Subscriber,
    SubscriberSet,
)
from digestd.core.observer import NULL, Observer
from digestd.core.redact import safe_text, secrets_of
from digestd.deliver import drain as delivery
from digestd.deliver.drain import DeliverReport
from digestd.deliver.transports.base import Mailer
from digestd.mail import linktokens as tokens
from digestd.mail.empty_note import SourceActivity, empty_note
from digestd.mail.listheaders import MailLinks, default_list_id, list_headers, mail_links
from digestd.mail.mime import build_message
from digestd.mail.render import Environments, RenderContext, render_digest
from digestd.mail.workers import Composed, MailJob, WebCopy, assemble, composer
from digestd.pipeline.paper_merge import record_papers
from digestd.rules.matcher import Matcher
from digestd.sources.base import Source
from digestd.store.protocols import LedgerConflict
from digestd.store.sqlite import Store

__all__ = [
    "ComposeReport",
    "DeliverReport",
    "Deps",
    "IngestReport",
    "Options",
    "Overdue",
    "compose",
    "deliver_due",
    "fetch",
    "ingest",
    "overdue",
    "preview",
    "queue_owed_alerts",
    "record_poll",
]

log = logging.getLogger(__name__)

Kind = Literal["digest", "alert"]

# Digests queued per transaction while composing; bounded so the write lock is not held for long.
_COMPOSE_BATCH = 200


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
    public_url: str | None = None  # base of the unsubscribe and web-copy links
    list_id: str | None = None  # None: derived from site_name and the sender's domain
    unsubscribe_mailto: str | None = None
    view_days: int = 30
    secret: bytes | None = field(default=None, repr=False)  # None: the store's own secret
    connections: int = 1  # parallel senders; the mailer must be a pool at least that large
    suspend_after: int | None = 3  # consecutive hard failures before an address is suspended
    keep_days: int = 7  # then the bytes of a message that ended are dropped (`outbox.prune`)

    @property
    def envelope_from(self) -> str:
        return _envelope(self.sender)

    @property
    def domain(self) -> str:
        return self.envelope_from.rpartition("@")[2] or "localhost"


@functools.lru_cache(maxsize=16)  # read several times per message; parseaddr costs ~0.1 ms
def _envelope(sender: str) -> str:
    return parseaddr(sender)[1]


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
    sign: Callable[[bytes], bytes] | None = None  # DKIM, applied before the bytes are queued
    observer: Observer = NULL  # progress bars and metrics; the pipeline only reports to it
    sources: tuple[Source, ...] = ()  # every configured source; empty: just `source`
    matcher: Matcher | None = None  # built from `subscribers` once; see `matcher_for`

    def all_sources(self) -> tuple[Source, ...]:
        return self.sources or (self.source,)


def matcher_for(deps: Deps) -> Matcher:
    """The index over the current subscribers, rebuilt only when the subscriber set was replaced."""
    if deps.matcher is None or deps.matcher.subscribers is not deps.subscribers:
        deps.matcher = Matcher.build(deps.subscribers)
    return deps.matcher


@dataclass(frozen=True, slots=True)
class IngestReport:
    """One poll of one or several sources; `ok` only if every source's poll succeeded."""

    ok: bool
    n_items: int = 0
    n_new: int = 0
    n_alerts: int = 0
    error: str | None = None
    source: str | None = None
    per_source: tuple[IngestReport, ...] = ()
    not_modified: bool = False


@dataclass(frozen=True, slots=True)
class ComposeReport:
    n_due: int = 0
    n_queued: int = 0
    n_empty: int = 0


def register(deps: Deps, *, now: datetime) -> None:
    """Remember when each subscriber first appeared, so a newcomer's first digest starts from now."""
    deps.registered = deps.store.subscribers.register(
        (key(s) for s in deps.subscribers.subscribers), at=now
    )


async def ingest(deps: Deps, *, now: datetime, only: Iterable[str] | None = None) -> IngestReport:
    """Poll every source (or those named in `only`), all at once, each on its own, and sum up.

    A source whose poll fails stores nothing and marks nothing; the others go on.
    """
    wanted = set(only) if only is not None else None
    chosen = [s for s in deps.all_sources() if wanted is None or s.name in wanted]
    # Fetched side by side, so a slow source delays only itself; stored one after the other.
    fetched = await asyncio.gather(*(fetch(deps, source, now=now) for source in chosen))
    reports = [
        record_poll(deps, source.name, result, now=now)
        for source, result in zip(chosen, fetched, strict=True)
    ]
    errors = [f"{r.source}: {r.error}" for r in reports if not r.ok]
    return IngestReport(
        ok=not errors,
        n_items=sum(r.n_items for r in reports),
        n_new=sum(r.n_new for r in reports),
        n_alerts=sum(r.n_alerts for r in reports),
        error="; ".join(errors) or None,
        per_source=tuple(reports),
    )


async def ingest_one(deps: Deps, source: Source, *, now: datetime) -> IngestReport:
    """Poll one source, store what is new (merged with what other sources said), queue alerts."""
    return record_poll(deps, source.name, await fetch(deps, source, now=now), now=now)


async def fetch(deps: Deps, source: Source, *, now: datetime) -> ParseResult | SourceError:
    """The network half of a poll: it touches no store, so it may run beside other work."""
    deps.observer.begin("poll")
    try:
        return await source.fetch(now=now)
    except SourceError as exc:
        # The text is the server's (control bytes) around our URL (credentials): cleaned once,
        # before anything stores, logs or shows it.
        error = safe_text(str(exc), known=secrets_of(getattr(source, "url", "")))
        return SourceError(error, transient=exc.transient, status=exc.status)


def record_poll(
    deps: Deps, name: str, fetched: ParseResult | SourceError, *, now: datetime
) -> IngestReport:
    """The store half of a poll: store what is new, queue alerts; brief, no network.

    A failed poll stores nothing and marks nothing; the error is recorded as data and logged once.
    """
    if isinstance(fetched, SourceError):
        error = str(fetched)
        deps.store.polls.record(name, at=now, ok=False, error=error)
        log.warning("poll failed source=%s transient=%s error=%s", name, fetched.transient, error)
        deps.observer.end("poll", f"failed: {error}")
        return IngestReport(ok=False, error=error, source=name)
    result = fetched
    if result.not_modified:
        deps.store.polls.record(name, at=now, ok=True)
        deps.observer.end("poll", "not modified")
        log.info("poll not modified source=%s", name)
        return IngestReport(ok=True, source=name, not_modified=True)
    for problem in result.problems:
        log.warning(
            "skipped item source=%s index=%d reason=%s",
            name,
            problem.index,
            safe_text(problem.reason),
        )
    papers = [replace(p, sources=(name,)) for p in result.papers]
    # One transaction: the papers, the validators (a 304 next time must never hide papers that
    # were not stored), the poll and the alerts it owes. Whatever fails after this commit, the
    # alerts stay owed until `queue_owed_alerts` has queued them.
    with deps.store.batch():
        new = record_papers(deps.store, papers, seen_at=now)
        deps.store.polls.save_validators(result.validators, at=now)
        poll_id = deps.store.polls.record(
            name, at=now, ok=True, n_items=len(papers), n_new=len(new)
        )
        if new:
            deps.store.polls.owe_alerts(poll_id, [p.id for p in new], at=now)
    n_alerts = queue_owed_alerts(deps, now=now)
    log.info(
        "poll ok source=%s n_items=%d n_new=%d n_alerts=%d",
        name,
        len(papers),
        len(new),
        n_alerts,
    )
    deps.observer.end("poll", f"{len(papers)} papers, {len(new)} new")
    return IngestReport(
        ok=True, n_items=len(papers), n_new=len(new), n_alerts=n_alerts, source=name
    )


def queue_owed_alerts(deps: Deps, *, now: datetime) -> int:
    """Queue every alert a committed poll still owes (after each poll, at start-up, `run --once`).

    Each poll's alerts are queued in the transaction that settles them, so they are queued once
    however often this runs or crashes; past `alert_ttl` they are dropped unsent and their papers
    go into the digests. Returns the number of alerts queued.
    """
    queued = 0
    for owed in deps.store.polls.owed_alerts():
        expires = owed.at + deps.options.alert_ttl
        papers = deps.store.papers.get(owed.paper_ids) if expires > now else []
        with deps.store.batch(sync=False):  # lost with a crash: then owed still, and redone
            if expires > now:
                queued += _queue_alerts(
                    deps, papers, poll_id=owed.poll_id, now=now, expires=expires
                )
            else:
                log.warning(
                    "alerts expired unsent poll=%d n_papers=%d", owed.poll_id, len(owed.paper_ids)
                )
            deps.store.polls.settle_alerts(owed.poll_id)
    return queued


def _queue_alerts(
    deps: Deps, new: Sequence[Paper], *, poll_id: int, now: datetime, expires: datetime
) -> int:
    if not new:
        return 0
    suspended = deps.store.subscribers.suspended()
    # Paper-major: each new paper is scanned once and reaches its subscribers through the index;
    # matched on the text the reader sees (LaTeX as Unicode).
    readable = [readable_paper(p) for p in new]
    matched = [
        (sub, found)
        for sub, found in matcher_for(deps).match_all(readable, alerts_only=True)
        if found and key(sub) not in suspended
    ]
    # A paper reserved already (a digest composed before these owed alerts were queued) is not
    # sent again: at most once per subscriber.
    reserved = deps.store.outbox.reserved_among((key(s) for s, _ in matched), [p.id for p in new])
    queued = 0
    for sub, found in matched:
        fresh = [m for m in found if (key(sub), m.paper.id) not in reserved]
        if fresh:
            deps.observer.matched("alert", len(fresh))
            queued += _enqueue_alert(deps, sub, f"poll-{poll_id}", fresh, now=now, expires=expires)
    return queued


def _enqueue_alert(
    deps: Deps,
    sub: Subscriber,
    period: str,
    found: Sequence[Match],
    *,
    now: datetime,
    expires: datetime,
) -> bool:
    """Build and queue one alert; a message that cannot be built is that subscriber's recorded
    failure (its papers stay unreserved), never the others'."""
    try:
        return _enqueue(deps, sub, "alert", period, found, now=now, expires=expires)
    except sqlite3.Error:
        raise  # the store's, not the subscriber's: the batch rolls back and the alerts stay owed
    except Exception as exc:  # anything building this one subscriber's message
        _unbuilt(deps, sub, "alert", period, exc, now=now)
        return False


def _unbuilt(
    deps: Deps, sub: Subscriber, kind: Kind, period: str, exc: Exception, *, now: datetime
) -> None:
    """Log (without the address, as delivery does) and record, for `digestd status`, a message
    that could not be built."""
    log.error(
        "cannot build message kind=%s period=%s error=%s (see digestd status)",
        kind,
        period,
        type(exc).__name__,
    )
    deps.store.outbox.record_unbuilt(
        subscriber=key(sub), kind=kind, period=period,
        message_id=make_message_id(deps, key(sub), kind, period),
        sender=deps.options.envelope_from, error=f"cannot build the message: {exc}", at=now,
    )  # fmt: skip


def compose(
    deps: Deps, *, now: datetime, once: bool = False, only: Iterable[str] | None = None
) -> ComposeReport:
    """Queue a digest for every subscriber whose period has begun and has no digest yet.

    With `once`, the schedule is ignored: everyone gets what matched and was not sent yet.
    """
    wanted = {address_key(e) for e in only} if only is not None else None
    # A digest the relay kept deferring expires when its next period begins; releasing it first
    # puts its papers into the digest composed now, not the one after.
    deps.store.outbox.release_stale(now=now, reason=delivery.STALE_REASON)
    deps.store.webcopies.prune(now=now)
    deps.store.outbox.prune(before=now - timedelta(days=deps.options.keep_days))
    deps.observer.begin("match", len(deps.subscribers.subscribers))
    suspended = deps.store.subscribers.suspended()  # they get nothing until `digestd unsuspend`
    todo = [
        (sub, period, expires)
        for sub, period, expires in _due(deps, now=now, once=once)
        if (wanted is None or key(sub) in wanted) and key(sub) not in suspended
    ]
    due, n_queued, n_empty = _compose_all(deps, todo, now=now)
    deps.observer.end("match", f"{due} due, {n_queued} digest(s) queued, {n_empty} empty")
    if due:
        log.info("composed n_due=%d n_queued=%d n_empty=%d", due, n_queued, n_empty)
    return ComposeReport(n_due=due, n_queued=n_queued, n_empty=n_empty)


def _compose_all(
    deps: Deps, todo: Sequence[tuple[Subscriber, str, datetime | None]], *, now: datetime
) -> tuple[int, int, int]:
    """Compose `todo` in batches; (due, queued, empty).

    A worker (see `composer`) renders batch k while this process matches k+1 and then writes k.
    """
    totals = (0, 0, 0)
    pending: _Batch = ([], list)
    since = now - deps.options.lookback
    with composer(deps.envs, len(todo)) as mails:
        for start in range(0, len(todo), _COMPOSE_BATCH):
            chunk = todo[start : start + _COMPOSE_BATCH]
            keys = [key(sub) for sub, _, _ in chunk]
            papers = _readable(deps.store.papers.candidates_for(keys, since=since))
            with deps.store.batch(sync=False):  # new ids are redone if lost, like composing
                ids = deps.store.subscribers.ids_of(keys) if deps.options.public_url else {}
            known = _Known(ids=ids, suppressed=deps.store.subscribers.suppressed_among(keys))
            batch = [_prepare(deps, *it, papers[key(it[0])], known, now=now) for it in chunk]
            collect = mails.submit([p.job for p in batch if p.job is not None])
            totals = _add(totals, _write(deps, pending, now=now))
            pending = (batch, collect)
        return _add(totals, _write(deps, pending, now=now))


def _readable(papers: dict[str, list[Paper]]) -> dict[str, list[Paper]]:
    """Each subscriber's candidates with their LaTeX as text (`latex`), as rules should match
    and readers read them. The store shares one object per paper between subscribers: each is
    converted once."""
    seen: dict[int, Paper] = {}

    def one(paper: Paper) -> Paper:
        found = seen.get(id(paper))
        if found is None:
            found = seen[id(paper)] = readable_paper(paper)
        return found

    return {k: [one(p) for p in found] for k, found in papers.items()}


def _add(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


@dataclass(slots=True)
class _Prepared:
    """One due digest between matching and the outbox: its job renders while others are written."""

    sub: Subscriber
    period: str
    expires: datetime | None
    found: Sequence[Match]
    suppressed: bool = False  # unsubscribed: nothing is queued, whatever the file says
    message_id: str = ""
    links: MailLinks = field(default_factory=MailLinks)
    job: MailJob | None = None  # None: a note, an empty digest or a suppressed address
    error: Exception | None = None  # the message cannot be built: recorded, nothing reserved


@dataclass(frozen=True, slots=True)
class _Known:
    """What the store knows of a compose batch's addresses, read in one query each."""

    ids: dict[str, int]  # subscriber ids for unsubscribe tokens (empty without a public URL)
    suppressed: set[str]


def _prepare(
    deps: Deps,
    sub: Subscriber,
    period: str,
    expires: datetime | None,
    papers: Sequence[Paper],
    known: _Known,
    *,
    now: datetime,
) -> _Prepared:
    found = matcher_for(deps).match(papers, sub)
    item = _Prepared(sub, period, expires, found, suppressed=key(sub) in known.suppressed)
    try:
        # The address is the one input of the builder that is each subscriber's own: checked
        # here, so one bad address is that subscriber's error, not the whole batch's.
        check_address(sub.email)
    except ValueError as exc:
        item.error = exc
        return item
    if found and not item.suppressed:
        item.message_id = make_message_id(deps, key(sub), "digest", period)
        item.links = _links(deps, sub, item.message_id, sub_id=known.ids.get(key(sub)))
        item.job = _job(
            deps, sub, "digest", found, links=item.links, message_id=item.message_id, now=now
        )
    return item


_Batch = tuple[list[_Prepared], Callable[[], list[Composed]]]  # prepared digests, rendered


def _write(deps: Deps, pending: _Batch, *, now: datetime) -> tuple[int, int, int]:
    """Queue a prepared batch in one transaction once its bytes are back; (due, queued, empty)."""
    batch, collect = pending
    if not batch:
        return 0, 0, 0
    rendered = iter(collect())
    due = n_queued = n_empty = 0
    with deps.store.batch(sync=False):  # composing is redone if lost: one commit per batch
        for item in batch:
            due += 1
            sub, found = item.sub, item.found
            if item.suppressed:
                pass
            elif item.error is not None:
                _unbuilt(deps, sub, "digest", item.period, item.error, now=now)
            elif not found and sub.send_empty:
                n_queued += _enqueue_note(deps, sub, item.period, now=now, expires=item.expires)
            else:
                composed = next(rendered) if item.job is not None else None
                if _enqueue(
                    deps, sub, "digest", item.period, found, now=now, expires=item.expires,
                    prepared=(item.message_id, item.links, composed) if item.job is not None else None,
                ):  # fmt: skip
                    n_queued += bool(found)
                    n_empty += not found
                    deps.observer.matched("digest", len(found))
            deps.observer.advance("match")
    return due, n_queued, n_empty


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
    return not deps.store.outbox.has_period(key(sub), "digest", periods.period_key(slot))


def _enqueue(
    deps: Deps,
    sub: Subscriber,
    kind: Kind,
    period: str,
    found: Sequence[Match],
    *,
    now: datetime,
    expires: datetime | None,
    prepared: tuple[str, MailLinks, Composed | None] | None = None,
) -> bool:
    """Render and queue one message; every matched paper is reserved, shown or over the cap.

    Nothing is queued for a suppressed address, whatever the subscribers file says. `prepared`:
    the (Message-ID, links, rendered message) `compose` already made, possibly in a worker.
    """
    # Else `_prepare` checked.
    if prepared is None and deps.store.subscribers.is_suppressed(key(sub)):
        return False
    if prepared is None:
        message_id = make_message_id(deps, key(sub), kind, period)
        links = _links(deps, sub, message_id)
        composed = None  # an empty period queues no bytes
        if found:
            job = _job(deps, sub, kind, found, links=links, message_id=message_id, now=now)
            composed = assemble(job, deps.envs)
    else:
        message_id, links, composed = prepared
    data = None
    if composed is not None:
        data = _signed(deps.sign, composed.message) if deps.sign else composed.message
    try:
        row = deps.store.outbox.enqueue(
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
    except LedgerConflict as exc:
        # Another message got there first (a concurrent run): this one is dropped, the papers
        # it would have repeated are already on their way; the rest of the batch goes on.
        log.warning("not queued kind=%s period=%s reason=%s", kind, period, exc)
        return False
    if row is not None and composed is not None and composed.web is not None:
        _save_web_copy(deps, sub, composed.web, links=links, now=now)
    return row is not None


def _signed(sign: Callable[[bytes], bytes], message: Spliced) -> Spliced | bytes:
    """The message signed when queued, so every retry sends the same signature; still spliced
    when the signer only put a header before it (as DKIM does)."""
    whole = message.whole()
    signed = sign(whole)
    if not signed.endswith(whole):
        return signed
    return message.prefixed(signed[: len(signed) - len(whole)])


def _enqueue_note(
    deps: Deps, sub: Subscriber, period: str, *, now: datetime, expires: datetime | None
) -> bool:
    """Queue the short "nothing matched" note, naming the sources that had nothing new."""
    since = deps.store.outbox.last_digest_at(key(sub)) or now - deps.options.lookback
    names = [s.name for s in deps.all_sources()]
    activity = [
        SourceActivity(name=st.source, new=st.new_since, error=st.error, last_new_at=st.last_new_at)
        for st in deps.store.polls.source_status(names, since=since)
        if st.source in names
    ]
    rendered = empty_note(sub, activity, since=since, site_name=deps.options.site_name)
    message_id = make_message_id(deps, key(sub), "digest", period)
    message = build_message(
        rendered, sender=deps.options.sender, to=sub.email, to_name=sub.name,
        message_id=message_id, date=now,
    )  # fmt: skip
    row = deps.store.outbox.enqueue(
        subscriber=key(sub), kind="digest", period=period, message_id=message_id,
        sender=deps.options.envelope_from, paper_ids=[], at=now, expires_at=expires,
        data=_signed(deps.sign, message) if deps.sign else message,
    )  # fmt: skip
    return row is not None


def digest_for(sub: Subscriber, kind: Kind, found: Sequence[Match]) -> Digest:
    shown, rest = tuple(found[: sub.max_papers]), tuple(found[sub.max_papers :])
    return Digest(subscriber=sub, kind=kind, matches=shown, more=len(rest), rest=rest)


def _job(
    deps: Deps,
    sub: Subscriber,
    kind: Kind,
    found: Sequence[Match],
    *,
    links: MailLinks,
    message_id: str,
    now: datetime,
) -> MailJob:
    options = deps.options
    list_id = options.list_id or default_list_id(options.site_name, options.domain)
    return MailJob(
        digest=digest_for(sub, kind, found),
        ctx=render_context(deps, now=now, links=links, sub=sub),
        sender=options.sender,
        to=sub.email,
        to_name=sub.name,
        message_id=message_id,
        date=now,
        headers=list_headers(links, list_id),
        # The page behind "view in browser": every paper of the digest, whole, no size budget.
        web=render_context(deps, now=now, links=links, sub=sub, web_copy=True)
        if links.view_url
        else None,
    )


def _save_web_copy(
    deps: Deps, sub: Subscriber, web: WebCopy, *, links: MailLinks, now: datetime
) -> None:
    assert links.view_url is not None
    token = links.view_url.rsplit("/", 1)[1]
    expires = now + timedelta(days=deps.options.view_days)
    if web.body is not None:  # the page once per shape, the subscriber's values per copy
        deps.store.webcopies.save_fills(
            token, subscriber=key(sub), body=web.body, fills=web.fills, at=now, expires_at=expires
        )
    else:
        deps.store.webcopies.save(
            token, subscriber=key(sub), html=web.whole, at=now, expires_at=expires
        )


def _links(deps: Deps, sub: Subscriber, message_id: str, *, sub_id: int | None = None) -> MailLinks:
    """The unsubscribe and web-copy links of one message; a mailto when there is no listener.

    `sub_id`: the subscriber's id when the caller already read it (`subscribers.ids_of`).
    """
    options = deps.options
    secret = options.secret or deps.store.secret()
    unsub = view = None
    if options.public_url:
        if sub_id is None:
            sub_id = deps.store.subscribers.id_of(key(sub))
        unsub = tokens.unsubscribe_token(_key(secret, "unsubscribe"), sub_id, key(sub))
        if options.view_days > 0:
            view = tokens.view_token(_key(secret, "view"), message_id)
    mailto = options.unsubscribe_mailto
    if mailto is None and not options.public_url:
        mailto = options.envelope_from
    return mail_links(
        public_url=options.public_url, unsubscribe_token=unsub, view_token=view, mailto=mailto
    )


@functools.lru_cache(maxsize=8)  # two per message otherwise; secrets change only on reload
def _key(secret: bytes, purpose: str) -> bytes:
    return tokens.derive_key(secret, purpose)


def render_context(
    deps: Deps,
    *,
    now: datetime,
    links: MailLinks | None = None,
    sub: Subscriber | None = None,
    web_copy: bool = False,
) -> RenderContext:
    links = links or MailLinks()
    return RenderContext(
        site_name=deps.options.site_name,
        # The reader's day: 23:00 UTC on Tuesday is Wednesday morning in Tokyo.
        date_label=periods.date_label(now, sub.timezone if sub is not None else "UTC"),
        unsubscribe_url=links.visible_unsubscribe,
        manage_note=(
            f"You receive this because an administrator of {deps.options.site_name} subscribed "
            f"you. Reply to {deps.options.envelope_from} to change your rules."
        ),
        web_url=links.view_url,
        web_copy=web_copy,
        max_papers=sub.max_papers if sub is not None else None,
        abstract_chars=sub.abstract_chars if sub is not None else None,
    )


def make_message_id(deps: Deps, email: str, kind: str, period: str) -> str:
    """Stable per (subscriber, kind, period), unguessable to outsiders (delivery.md §1.4)."""
    mac = hmac.new(deps.store.secret(), f"{email}|{kind}|{period}".encode(), "sha256")
    safe_period = "".join(c for c in period if c.isalnum() or c in "-")
    return f"<{kind}.{safe_period}.{mac.hexdigest()[:24]}@{deps.options.domain}>"


async def deliver_due(deps: Deps, *, now: datetime, clock: Callable[[], datetime]) -> DeliverReport:
    """Send every queued message whose time has come, committing each outcome before the next send.

    `clock` is read after each send so the stored times are true ones; `stopping` is checked between
    messages so a shutdown finishes the messages in flight and leaves the rest queued. Up to
    `options.connections` messages are in flight at once (see `delivery`).
    """
    return await delivery.drain(deps, now=now, clock=clock, workers=deps.options.connections)


def backoff(attempt: int, options: Options) -> timedelta:
    """Exponential backoff with jitter, from `options.retry_base` up to `options.retry_cap`."""
    return delivery.backoff(attempt, options.retry_base, options.retry_cap)


def preview(deps: Deps, email: str, *, now: datetime) -> tuple[Digest, Rendered] | None:
    """What `email` would get now, rendered, without queueing or marking anything."""
    sub = deps.subscribers.by_email(email)
    if sub is None:
        return None
    papers = deps.store.papers.candidates(key(sub), since=now - deps.options.lookback)
    found = matcher_for(deps).match([readable_paper(p) for p in papers], sub)
    digest = digest_for(sub, "digest", found)
    links = replace(_links(deps, sub, "<preview@localhost>"), view_url=None)  # no copy is stored
    ctx = render_context(deps, now=now, links=links, sub=sub)
    return digest, render_digest(digest, deps.envs, ctx)


def key(sub: Subscriber) -> str:
    """The store's key for a subscriber: addresses compare case-insensitively."""
    return address_key(sub.email)


@dataclass(frozen=True, slots=True)
class Overdue:
    """Digests of one (schedule, zone) group whose slot passed while nothing composed them."""

    schedule: str
    timezone: str
    slot: datetime
    late_by: timedelta
    n_subscribers: int
    skipped: bool  # older than max_late: these are not sent at all


def overdue(deps: Deps, *, now: datetime) -> list[Overdue]:
    """What a compose now would send late (or skip for `max_late`), per group: for the start-up log.

    Same rules as `compose`: a newcomer's slot from before they joined is not owed to them.
    """
    groups: dict[tuple[str, str], list[Subscriber]] = {}
    for sub in deps.subscribers.subscribers:
        groups.setdefault((sub.schedule, sub.timezone), []).append(sub)
    found: list[Overdue] = []
    max_late = deps.options.max_late
    for (schedule, zone), subs in sorted(groups.items()):
        slot = periods.latest_slot(schedule, zone, now)
        period = periods.period_key(slot)
        owed = [
            s
            for s in subs
            if not (deps.registered.get(key(s), slot) > slot)
            and not deps.store.outbox.has_period(key(s), "digest", period)
        ]
        if owed:
            late = now - slot
            skipped = max_late is not None and late > max_late
            found.append(Overdue(schedule, zone, slot, late, len(owed), skipped))
    return found
