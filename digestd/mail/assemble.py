"""What one message is made of besides its papers: its Message-ID, its links (with their tokens),
the words around the digest and the job a compose worker renders.

Pure: the caller passes the secret and the subscriber's id; the pipeline decides when and for whom.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Protocol

from digestd.core import periods
from digestd.core.model import Digest, Match, Subscriber
from digestd.mail import linktokens as tokens
from digestd.mail.listheaders import (
    FeedbackLinks,
    MailLinks,
    default_list_id,
    list_headers,
    mail_links,
)
from digestd.mail.render import RenderContext
from digestd.mail.workers import MailJob

__all__ = [
    "Kind",
    "MailOptions",
    "digest_for",
    "mail_job",
    "message_id",
    "message_links",
    "render_context",
]

Kind = Literal["digest", "alert"]


class MailOptions(Protocol):
    """The settings a message is assembled from (the pipeline's `Options` has them)."""

    @property
    def sender(self) -> str: ...  # "Name <addr>" for the From header
    @property
    def site_name(self) -> str: ...
    @property
    def public_url(self) -> str | None: ...
    @property
    def list_id(self) -> str | None: ...
    @property
    def unsubscribe_mailto(self) -> str | None: ...
    @property
    def view_days(self) -> int: ...
    @property
    def envelope_from(self) -> str: ...
    @property
    def domain(self) -> str: ...


def message_id(secret: bytes, options: MailOptions, email: str, kind: str, period: str) -> str:
    """Stable per (subscriber, kind, period), unguessable to outsiders (delivery.md §1.4)."""
    mac = hmac.new(secret, f"{email}|{kind}|{period}".encode(), "sha256")
    safe_period = "".join(c for c in period if c.isalnum() or c in "-")
    return f"<{kind}.{safe_period}.{mac.hexdigest()[:24]}@{options.domain}>"


def message_links(
    secret: bytes, options: MailOptions, email: str, message_id: str, *, sub_id: int | None
) -> MailLinks:
    """The unsubscribe and web-copy links of one message; a mailto when there is no listener.

    `email` is the store's key of the subscriber; `sub_id` their id, needed with a public URL.
    """
    unsub = view = manage = feedback = None
    if options.public_url:
        if sub_id is None:
            raise ValueError("an unsubscribe link needs the subscriber's id")
        unsub = tokens.unsubscribe_token(_key(secret, "unsubscribe"), sub_id, email)
        manage = tokens.manage_token(_key(secret, "manage"), sub_id, email)
        base = options.public_url.rstrip("/")
        feedback = FeedbackLinks(base, _key(secret, "feedback"), sub_id, email)
        if options.view_days > 0:
            view = tokens.view_token(_key(secret, "view"), message_id)
    mailto = options.unsubscribe_mailto
    if mailto is None and not options.public_url:
        mailto = options.envelope_from
    return mail_links(
        public_url=options.public_url,
        unsubscribe_token=unsub,
        view_token=view,
        mailto=mailto,
        manage_token=manage,
        feedback=feedback,
    )


@functools.lru_cache(maxsize=8)  # two per message otherwise; secrets change only on reload
def _key(secret: bytes, purpose: str) -> bytes:
    return tokens.derive_key(secret, purpose)


def digest_for(sub: Subscriber, kind: Kind, found: Sequence[Match]) -> Digest:
    shown, rest = tuple(found[: sub.max_papers]), tuple(found[sub.max_papers :])
    return Digest(subscriber=sub, kind=kind, matches=shown, more=len(rest), rest=rest)


def render_context(
    options: MailOptions,
    *,
    now: datetime,
    links: MailLinks | None = None,
    sub: Subscriber | None = None,
    web_copy: bool = False,
    papers: Sequence[Match] = (),
) -> RenderContext:
    """`papers`: the ones the mail shows, for their "more / less like this" links (not on the
    web copy, whose URL may be shared)."""
    links = links or MailLinks()
    signer = None if web_copy else links.feedback
    return RenderContext(
        site_name=options.site_name,
        # The reader's day: 23:00 UTC on Tuesday is Wednesday morning in Tokyo.
        date_label=periods.date_label(now, sub.timezone if sub is not None else "UTC"),
        unsubscribe_url=links.visible_unsubscribe,
        # The web copy's URL may be shared: it never carries the reader's manage link.
        manage_url=None if web_copy else links.manage_url,
        manage_note=(
            f"You receive this because you or an administrator subscribed you to "
            f"{options.site_name}."
            if links.manage_url
            else f"You receive this because an administrator of {options.site_name} subscribed "
            f"you. Reply to {options.envelope_from} to change your rules."
        ),
        web_url=links.view_url,
        web_copy=web_copy,
        max_papers=sub.max_papers if sub is not None else None,
        abstract_chars=sub.abstract_chars if sub is not None else None,
        feedback=tuple(signer.pair(m.paper.id) for m in papers) if signer else (),
    )


def mail_job(
    options: MailOptions,
    sub: Subscriber,
    kind: Kind,
    found: Sequence[Match],
    *,
    links: MailLinks,
    message_id: str,
    now: datetime,
) -> MailJob:
    """Everything a compose worker needs to render this subscriber's message."""
    list_id = options.list_id or default_list_id(options.site_name, options.domain)
    digest = digest_for(sub, kind, found)
    return MailJob(
        digest=digest,
        ctx=render_context(options, now=now, links=links, sub=sub, papers=digest.matches),
        sender=options.sender,
        to=sub.email,
        to_name=sub.name,
        message_id=message_id,
        date=now,
        headers=list_headers(links, list_id),
        # The page behind "view in browser": every paper of the digest, whole, no size budget.
        web=render_context(options, now=now, links=links, sub=sub, web_copy=True)
        if links.view_url
        else None,
    )
