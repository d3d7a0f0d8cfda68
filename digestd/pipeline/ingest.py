"""Ingest: poll the sources, store what is new, queue the alerts it owes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from digestd.core.errors import SourceError
from digestd.core.latex import readable_paper
from digestd.core.model import Match, Paper, ParseResult, Subscriber
from digestd.core.redact import safe_text, secrets_of
from digestd.pipeline.deps import Deps, key
from digestd.pipeline.enqueue import enqueue_alert
from digestd.pipeline.paper_merge import record_papers
from digestd.pipeline.readers import sync_readers
from digestd.sources.base import Source

__all__ = ["IngestReport", "fetch", "ingest", "queue_owed_alerts", "record_poll"]

log = logging.getLogger("digestd.pipeline")  # one name for the whole pipeline, as admins filter it


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
    sync_readers(deps, now=now)
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


def _alert_matches(deps: Deps, papers: Sequence[Paper]) -> list[tuple[Subscriber, list[Match]]]:
    """Everyone's alert matches, paper-major; a reader with a relevance model and an alert rule
    is matched again with their scores (issue #16): `similar` holds in their alert rules, the
    model ranks the alert, and its why names the nearest liked paper. Those readers are few (an
    alert rule and likes), each costs one small product: cheap beside a poll."""
    found = deps.audience.match_all(papers, alerts_only=True)
    state = deps.relevance
    if state is None or not state.models:
        return found
    taught = [
        s for s in deps.audience.subscribers.subscribers if s.has_alerts and key(s) in state.models
    ]
    if not taught:
        return found
    ids = {id(s) for s in taught}
    rest = [(sub, matches) for sub, matches in found if id(sub) not in ids]
    for sub in taught:
        scores = state.relevance_for(sub.email, papers)
        ranked = deps.audience.match(papers, sub, alerts_only=True, relevance=scores)
        shown = state.with_why(deps.store, sub.email, ranked[: sub.max_papers])
        rest.append((sub, shown + ranked[sub.max_papers :]))
    return rest


def _queue_alerts(
    deps: Deps, new: Sequence[Paper], *, poll_id: int, now: datetime, expires: datetime
) -> int:
    if not new:
        return 0
    # Suspended and paused addresses get no alert (a pause's papers are skipped or caught up).
    suspended = deps.store.subscribers.suspended() | deps.store.readers.paused(at=now)
    # Paper-major: each new paper is scanned once and reaches its subscribers through the index;
    # matched on the text the reader sees (LaTeX as Unicode).
    readable = [readable_paper(p) for p in new]
    matched = [
        (sub, found)
        for sub, found in _alert_matches(deps, readable)
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
            queued += enqueue_alert(deps, sub, f"poll-{poll_id}", fresh, now=now, expires=expires)
    return queued
