"""Compose: queue a digest for every subscriber whose period has begun, in batches a worker renders."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from digestd.core import periods
from digestd.core.addresses import address_key, check_address
from digestd.core.latex import readable_paper
from digestd.core.model import Match, Paper, Subscriber
from digestd.deliver import drain
from digestd.mail.assemble import mail_job
from digestd.mail.listheaders import MailLinks
from digestd.mail.workers import Composed, MailJob, composer
from digestd.pipeline.deps import Deps, key
from digestd.pipeline.enqueue import enqueue, enqueue_note, links_for, make_message_id, unbuilt
from digestd.pipeline.readers import sync_readers

__all__ = ["ComposeReport", "Overdue", "compose", "overdue"]

log = logging.getLogger("digestd.pipeline")  # one name for the whole pipeline, as admins filter it

# Digests queued per transaction while composing; bounded so the write lock is not held for long.
_COMPOSE_BATCH = 200


@dataclass(frozen=True, slots=True)
class ComposeReport:
    n_due: int = 0
    n_queued: int = 0
    n_empty: int = 0


def compose(
    deps: Deps, *, now: datetime, once: bool = False, only: Iterable[str] | None = None
) -> ComposeReport:
    """Queue a digest for every subscriber whose period has begun and has no digest yet.

    With `once`, the schedule is ignored: everyone gets what matched and was not sent yet.
    """
    wanted = {address_key(e) for e in only} if only is not None else None
    # A digest the relay kept deferring expires when its next period begins; releasing it first
    # puts its papers into the digest composed now, not the one after.
    deps.store.outbox.release_stale(now=now, reason=drain.STALE_REASON)
    deps.store.webcopies.prune(now=now)
    deps.store.outbox.prune(before=now - timedelta(days=deps.options.keep_days))
    sync_readers(deps, now=now)  # a reader confirmed, edited or removed by another process
    deps.observer.begin("match", len(deps.subscribers.subscribers))
    suspended = deps.store.subscribers.suspended()  # they get nothing until `digestd unsuspend`
    skipped = suspended | _paused(deps, now=now)
    todo = [
        (sub, period, expires)
        for sub, period, expires in _due(deps, now=now, once=once)
        if (wanted is None or key(sub) in wanted) and key(sub) not in skipped
    ]
    due, n_queued, n_empty = _compose_all(deps, todo, now=now)
    deps.observer.end("match", f"{due} due, {n_queued} digest(s) queued, {n_empty} empty")
    if due:
        log.info("composed n_due=%d n_queued=%d n_empty=%d", due, n_queued, n_empty)
    return ComposeReport(n_due=due, n_queued=n_queued, n_empty=n_empty)


def _paused(deps: Deps, *, now: datetime) -> set[str]:
    """Pauses that are over end now (their papers skipped, or one catch-up owed); unconfirmed
    sign-ups past `confirm_within` are forgotten. Returns who is paused: they get nothing."""
    deps.store.readers.end_pauses(at=now)
    deps.store.readers.expire_pending(before=now - deps.options.confirm_within)
    return deps.store.readers.paused(at=now)


def _compose_all(
    deps: Deps, todo: Sequence[tuple[Subscriber, str, datetime | None]], *, now: datetime
) -> tuple[int, int, int]:
    """Compose `todo` in batches; (due, queued, empty).

    A worker (see `composer`) renders batch k while this process matches k+1 and then writes k.
    A stop (`deps.stopping`) ends it after the next commit: the rest is composed next time.
    """
    totals = (0, 0, 0)
    pending: _Batch = ([], list)
    since = now - deps.options.lookback
    catch_ups = deps.store.readers.catch_ups()  # "send what I missed": back to the pause's start
    with composer(deps.envs, len(todo)) as mails:
        for start in range(0, len(todo), _COMPOSE_BATCH):
            if deps.stopping():
                log.info("compose stopped n_left=%d (composed at the next run)", len(todo) - start)
                break
            chunk = todo[start : start + _COMPOSE_BATCH]
            keys = [key(sub) for sub, _, _ in chunk]
            papers = _readable(_candidates(deps, keys, since=since, catch_ups=catch_ups))
            with deps.store.batch(sync=False):  # new ids are redone if lost, like composing
                ids = deps.store.subscribers.ids_of(keys) if deps.options.public_url else {}
            suppressed = deps.store.subscribers.suppressed_among(keys)
            known = _Known(ids=ids, suppressed=suppressed, catch_ups=catch_ups.keys() & set(keys))
            # Membership for the whole batch at once; reasons only for what reaches each reader.
            scores = deps.relevance.relevance_for if deps.relevance else None
            wanted = [(s, papers[key(s)]) for s, _, _ in chunk]
            matched = deps.audience.match_batch(wanted, relevance=scores)
            batch = [
                _prepare(deps, *it, f, known, now=now) for it, f in zip(chunk, matched, strict=True)
            ]
            collect = mails.submit([p.job for p in batch if p.job is not None])
            totals = _add(totals, _write(deps, pending, now=now))
            pending = (batch, collect)
        return _add(totals, _write(deps, pending, now=now))


def _candidates(
    deps: Deps, keys: list[str], *, since: datetime, catch_ups: dict[str, datetime]
) -> dict[str, list[Paper]]:
    """Each address's unreserved papers since `since`; a catch-up reader's since their pause."""
    found = deps.store.papers.candidates_for(keys, since=since)
    for k in catch_ups.keys() & set(keys):
        found[k] = deps.store.papers.candidates(k, since=min(since, catch_ups[k]))
    return found


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
    catch_up: bool = False  # a paused reader's "what I missed" digest
    message_id: str = ""
    links: MailLinks = field(default_factory=MailLinks)
    job: MailJob | None = None  # None: a note, an empty digest or a suppressed address
    error: Exception | None = None  # the message cannot be built: recorded, nothing reserved


@dataclass(frozen=True, slots=True)
class _Known:
    """What the store knows of a compose batch's addresses, read in one query each."""

    ids: dict[str, int]  # subscriber ids for unsubscribe tokens (empty without a public URL)
    suppressed: set[str]
    catch_ups: set[str] = field(default_factory=set)  # owed one "what I missed" digest


def _prepare(
    deps: Deps,
    sub: Subscriber,
    period: str,
    expires: datetime | None,
    found: Sequence[Match],
    known: _Known,
    *,
    now: datetime,
) -> _Prepared:
    item = _Prepared(sub, period, expires, found, suppressed=key(sub) in known.suppressed)
    item.catch_up = key(sub) in known.catch_ups
    try:
        # The address is the one input of the builder that is each subscriber's own: checked
        # here, so one bad address is that subscriber's error, not the whole batch's.
        check_address(sub.email)
    except ValueError as exc:
        item.error = exc
        return item
    if found and not item.suppressed:
        item.message_id = make_message_id(deps, key(sub), "digest", period)
        item.links = links_for(deps, sub, item.message_id, sub_id=known.ids.get(key(sub)))
        item.job = mail_job(
            deps.options, sub, "digest", found, links=item.links, message_id=item.message_id,
            now=now,
        )  # fmt: skip
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
                unbuilt(deps, sub, "digest", item.period, item.error, now=now)
            elif not found and sub.send_empty:
                n_queued += enqueue_note(deps, sub, item.period, now=now, expires=item.expires)
            else:
                composed = next(rendered) if item.job is not None else None
                if enqueue(
                    deps, sub, "digest", item.period, found, now=now, expires=item.expires,
                    prepared=(item.message_id, item.links, composed) if item.job is not None else None,
                ):  # fmt: skip
                    n_queued += bool(found)
                    n_empty += not found
                    deps.observer.matched("digest", len(found))
            deps.observer.advance("match")
            if item.catch_up:  # the one digest of what they missed is composed: settled with it
                deps.store.readers.settle_catch_up(key(sub))
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
    registered = deps.audience.registered.get(key(sub))
    if registered is not None and slot < registered:
        return (
            False  # a newcomer's first digest is their next slot, not one from before they joined
        )
    max_late = deps.options.max_late
    if max_late is not None and now - slot > max_late:
        return False
    return not deps.store.outbox.has_period(key(sub), "digest", periods.period_key(slot))


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
            if not (deps.audience.registered.get(key(s), slot) > slot)
            and not deps.store.outbox.has_period(key(s), "digest", period)
        ]
        if owed:
            late = now - slot
            skipped = max_late is not None and late > max_late
            found.append(Overdue(schedule, zone, slot, late, len(owed), skipped))
    return found
