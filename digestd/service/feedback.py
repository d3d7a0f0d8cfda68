"""`/feedback/{token}`: the "more like this" / "less like this" links under each paper of a mail.

A GET never records: link scanners open every link of a mail. It shows a tiny page whose form
records by POST, sent at once by a script (allowed by its hash) and by a button where script does
not run. The POST carries the page's anti-CSRF token; it records the verdict (a later click on
the other link replaces it), says what changed, and retrains the reader's model off the event loop
after the answer has gone, so the next digest ranks by it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from digestd.core.latex import readable_paper
from digestd.core.text import clean_header
from digestd.mail import linktokens
from digestd.pipeline.feedback import rate, refresh_relevance
from digestd.service.readersite import ReaderSite
from digestd.service.signup import guarded_form
from digestd.service.webpages import FEEDBACK_SCRIPT

__all__ = ["routes"]

log = logging.getLogger(__name__)

_TITLE_CHARS = 120


@dataclass(frozen=True, slots=True)
class _Click:
    """A verified feedback token: whose, which paper (its readable title), which verdict."""

    email: str
    subscriber_id: int
    paper_id: str
    title: str
    value: int


def routes(site: ReaderSite) -> list[BaseRoute]:
    pages = _Feedback(site)
    return [
        Route("/feedback/{token}", pages.show, methods=["GET"]),
        Route("/feedback/{token}", pages.record, methods=["POST"]),
    ]


class _Feedback:
    def __init__(self, site: ReaderSite) -> None:
        self.site = site
        self._key = linktokens.derive_key(site.secret, "feedback")

    async def show(self, request: Request) -> Response:
        token = request.path_params["token"]
        click = self._click(token)
        if click is None:
            return self._bad_link()
        verb = "more" if click.value > 0 else "fewer"
        return self.site.pages.message(
            "Teach your digest",
            f"Show {verb} papers like ‘{click.title}’?",
            "Nothing is recorded until you confirm.",
            form={
                "action": f"/feedback/{token}",
                "csrf": self.site.guard.token("feedback", token),
                "hidden": [],
                "button": "More like this" if click.value > 0 else "Less like this",
                "id": "feedback-form",
            },
            script=FEEDBACK_SCRIPT,
        )

    async def record(self, request: Request) -> Response:
        token = request.path_params["token"]
        data = await guarded_form(self.site, request, "feedback", token)
        if isinstance(data, Response):
            return data
        click = self._click(token)
        if click is None:
            return self._bad_link()
        now = self.site.clock()
        await self.site.write(
            lambda store: rate(store, click.email, click.paper_id, click.value, now=now)
        )
        log.info("feedback recorded subscriber_id=%d value=%+d", click.subscriber_id, click.value)
        said = (
            f"You'll see more papers like ‘{click.title}’."
            if click.value > 0
            else f"You'll see fewer papers like ‘{click.title}’."
        )
        # After the answer: the model is retrained in a thread, the loop keeps serving.
        retrain = BackgroundTask(refresh_relevance, self.site.deps, now=now)
        response = self.site.pages.message(
            "Thank you",
            said,
            "Your next digest ranks by it. Changed your mind? The other link under the paper"
            " replaces this choice.",
            link={"url": self.site.manage_url(click.email), "text": "What your digest learned"},
        )
        response.background = retrain
        return response

    def _click(self, token: str) -> _Click | None:
        """The token's click when its MAC holds for a current subscriber and a stored paper;
        None for anything else (forged, another purpose's, another reader's, a reader gone)."""
        parsed = linktokens.parse_feedback(token)
        if parsed is None:
            return None
        store = self.site.deps.store
        email = store.subscribers.email_of(parsed.subscriber_id)
        if email is None or not parsed.verify(self._key, email):
            return None
        if not self._current(email):
            return None
        found = store.papers.get([parsed.paper_id])
        if not found:
            return None
        title = clean_header(readable_paper(found[0]).title, limit=_TITLE_CHARS)
        return _Click(email, parsed.subscriber_id, parsed.paper_id, title, parsed.value)

    def _current(self, email: str) -> bool:
        """Still subscribed: the admin's YAML lists them or they are a confirmed reader, and they
        have not unsubscribed (a removed reader's ratings are gone; a late click must not return)."""
        if self.site.deps.store.subscribers.is_suppressed(email):
            return False
        if self.site.admin_entry(email) is not None:
            return True
        reader = self.site.readers.get(email)
        return reader is not None and reader.state not in ("unsubscribed", "pending")

    def _bad_link(self) -> Response:
        return self.site.pages.message(
            "Link not valid",
            "This link was cut on its way, or its paper or subscription is gone. Nothing was"
            " recorded.",
            status=404,
        )
