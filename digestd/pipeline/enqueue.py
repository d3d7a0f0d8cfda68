"""Queueing one message: its bytes signed, its papers reserved, its web copy stored; or, when it
cannot be built, the failure recorded as that subscriber's own."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from digestd.core.model import Match, Subscriber
from digestd.mail import assemble, workers
from digestd.mail.assemble import Kind
from digestd.mail.empty_note import SourceActivity, empty_note
from digestd.mail.listheaders import MailLinks
from digestd.mail.mime import build_message
from digestd.mail.parts import Spliced, signed
from digestd.mail.workers import Composed, WebCopy
from digestd.pipeline.deps import Deps, key
from digestd.store import store_errors
from digestd.store.protocols import LedgerConflict

__all__ = ["enqueue", "enqueue_alert", "enqueue_note", "links_for", "make_message_id", "unbuilt"]

log = logging.getLogger("digestd.pipeline")  # one name for the whole pipeline, as admins filter it

# A message composed already: its (Message-ID, links, rendered message), possibly from a worker.
Prepared = tuple[str, MailLinks, Composed | None]


def make_message_id(deps: Deps, email: str, kind: str, period: str) -> str:
    """Stable per (subscriber, kind, period), unguessable to outsiders (delivery.md §1.4)."""
    return assemble.message_id(deps.store.secret(), deps.options, email, kind, period)


def links_for(
    deps: Deps, sub: Subscriber, message_id: str, *, sub_id: int | None = None
) -> MailLinks:
    """The unsubscribe and web-copy links of one message; a mailto when there is no listener.

    `sub_id`: the subscriber's id when the caller already read it (`Store.subscriber_ids`).
    """
    options = deps.options
    if options.public_url and sub_id is None:
        sub_id = deps.store.subscribers.id_of(key(sub))
    secret = options.secret or deps.store.secret()
    return assemble.message_links(secret, options, key(sub), message_id, sub_id=sub_id)


def enqueue_alert(
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
        return enqueue(deps, sub, "alert", period, found, now=now, expires=expires)
    except store_errors():
        raise  # the store's, not the subscriber's: the batch rolls back and the alerts stay owed
    except Exception as exc:  # anything building this one subscriber's message
        unbuilt(deps, sub, "alert", period, exc, now=now)
        return False


def unbuilt(
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


def enqueue(
    deps: Deps,
    sub: Subscriber,
    kind: Kind,
    period: str,
    found: Sequence[Match],
    *,
    now: datetime,
    expires: datetime | None,
    prepared: Prepared | None = None,
) -> bool:
    """Render and queue one message; every matched paper is reserved, shown or over the cap.

    Nothing is queued for a suppressed address, whatever the subscribers file says. `prepared`:
    the (Message-ID, links, rendered message) `compose` already made, possibly in a worker.
    """
    if prepared is None and deps.store.subscribers.is_suppressed(
        key(sub)
    ):  # else `compose` checked
        return False
    message_id, links, composed = prepared or _composed_here(deps, sub, kind, period, found, now)
    data = _signed(deps, composed.message) if composed is not None else None
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


def _composed_here(
    deps: Deps, sub: Subscriber, kind: Kind, period: str, found: Sequence[Match], now: datetime
) -> Prepared:
    """One message rendered in this process (an alert): an empty period queues no bytes."""
    message_id = make_message_id(deps, key(sub), kind, period)
    links = links_for(deps, sub, message_id)
    if not found:
        return message_id, links, None
    job = assemble.mail_job(
        deps.options, sub, kind, found, links=links, message_id=message_id, now=now
    )
    return message_id, links, workers.assemble(job, deps.envs)


def _signed(deps: Deps, message: Spliced) -> Spliced:
    """Signed when queued (DKIM), so every retry sends the same signature."""
    return signed(deps.sign, message) if deps.sign else message


def enqueue_note(
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
        data=_signed(deps, message),
    )  # fmt: skip
    return row is not None


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
