"""The pages the links in a mail lead to: one-click unsubscribe (RFC 8058) and the web copy.

`POST /unsubscribe/{token}` records the suppression and commits it before answering 200: no
redirect (a redirected POST becomes a GET), no cookies, whatever the form encoding of the body.
`GET` on the same URL only shows a page with a button, because link scanners and prefetchers GET
every link in a mail and must not unsubscribe anyone. `GET /view/{token}` serves a stored copy.

The handlers are coroutines, so they run on the daemon's loop thread, the only thread that
uses the store's connection; each store call is one short transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from digestd.mail import linktokens as tokens
from digestd.mail.webcopy import stored_page
from digestd.store import StateStore

__all__ = ["routes"]

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # the body is "List-Unsubscribe=One-Click"; anything big is not a client

_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:;"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0;
  padding: 32px 16px; line-height: 1.5; background: #eef0f3; color: #1f2328; }}
main {{ max-width: 480px; margin: 0 auto; background: #fff; padding: 24px; border-radius: 8px; }}
h1 {{ font-size: 22px; margin: 0 0 12px; }}
button {{ font: inherit; font-weight: 600; padding: 10px 20px; border: 0; border-radius: 6px;
  background: #b42318; color: #fff; cursor: pointer; }}
@media (prefers-color-scheme: dark) {{ body {{ background: #0d1117; color: #e6edf3; }}
  main {{ background: #161b22; }} }}
</style></head>
<body><main><h1>{title}</h1>{body}</main></body></html>
"""


def routes(
    store: StateStore, *, secret: bytes, site_name: str, contact: str, clock: Callable[[], datetime]
) -> list[BaseRoute]:
    """The routes for the daemon's listener; `clock` stamps suppressions and expires web copies."""
    pages = _Pages(store, tokens.derive_key(secret, "unsubscribe"), site_name, contact, clock)
    return [
        Route("/unsubscribe/{token}", pages.confirm, methods=["GET"]),
        Route("/unsubscribe/{token}", pages.unsubscribe, methods=["POST"]),
        Route("/view/{token}", pages.view, methods=["GET"]),
    ]


class _Pages:
    def __init__(
        self,
        store: StateStore,
        key: bytes,
        site_name: str,
        contact: str,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.key = key
        self.site_name = site_name
        self.contact = contact
        self.clock = clock

    def who(self, token: str) -> tuple[int, str] | Response:
        """(id, address) this token was made for, or the page to answer: forged or altered, or
        made before the address resubscribed (its id is retired: the link does nothing)."""
        parsed = tokens.parse_unsubscribe(token)
        if parsed is None:
            return _invalid(self.site_name, self.contact)
        email = self.store.subscribers.email_of(parsed.subscriber_id)
        current = email is not None
        if not current:
            email = self.store.subscribers.retired_email(parsed.subscriber_id)
        # Verify even when the id is unknown so timing does not tell ids apart.
        if not parsed.verify(self.key, email or "") or email is None:
            return _invalid(self.site_name, self.contact)
        if not current:
            return _stale(self.site_name, self.contact)
        return parsed.subscriber_id, email

    async def confirm(self, request: Request) -> Response:
        """GET: a page with a button; it never unsubscribes (scanners GET every link)."""
        found = self.who(request.path_params["token"])
        if isinstance(found, Response):
            return found
        email = found[1]
        if self.store.subscribers.is_suppressed(email):
            return _done(self.site_name, self.contact, email)
        body = Markup(
            "<p>Stop all email from {site} to <strong>{who}</strong>?</p>"
            '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'
        ).format(site=self.site_name, who=mask(email))
        return _page("Unsubscribe", body)

    async def unsubscribe(self, request: Request) -> Response:
        """POST (RFC 8058): any body encoding; the suppression is committed before the 200."""
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                return _page("Request too large", Markup(""), status=413)
        found = self.who(request.path_params["token"])
        if isinstance(found, Response):
            return found
        sub_id, email = found
        if self.store.moved() is not None:
            # It would be written to a file nobody reads again: the client should retry.
            body = Markup("<p>We cannot record this right now. Please try again later.</p>")
            return _page("Try again later", body, status=503, retry=True)
        if self.store.subscribers.suppress(email, at=self.clock(), via="one-click"):
            log.info("unsubscribed subscriber_id=%d via=one-click", sub_id)
        return _done(self.site_name, self.contact, email)

    async def view(self, request: Request) -> Response:
        token = request.path_params["token"]
        html = None
        if tokens.is_view_token(token):
            html = web_page(self.store, token, now=self.clock())
        if html is None:
            body = Markup("<p>This copy has expired or never existed; the email has it all.</p>")
            return _page("Not found", body, status=404)
        return HTMLResponse(html, headers=_HEADERS)


def web_page(store: StateStore, token: str, *, now: datetime) -> str | None:
    """The web copy `token` names, as a page; None when unknown or expired."""
    copy = store.webcopies.find(token, now=now)
    if copy is None:
        return None
    return stored_page(copy.whole, copy.template, copy.slots or "", copy.fills or "")


def mask(email: str) -> str:
    """'alice@example.org' → 'a••••@example.org': enough to recognise, not to harvest."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}{'•' * min(max(len(local) - 1, 1), 6)}@{domain}"


def _done(site_name: str, contact: str, email: str) -> Response:
    body = Markup(
        "<p><strong>{who}</strong> will receive nothing more from {site}.</p>"
        "<p>Changed your mind? Write to {contact}.</p>"
    ).format(who=mask(email), site=site_name, contact=contact)
    return _page("You are unsubscribed", body)


def _invalid(site_name: str, contact: str) -> Response:
    body = Markup(
        "<p>This unsubscribe link is not valid: it may have been cut or changed on its way.</p>"
        "<p>Use the link from the email itself, or write to {contact} to leave {site}.</p>"
    ).format(contact=contact, site=site_name)
    return _page("Link not valid", body, status=404)


def _stale(site_name: str, contact: str) -> Response:
    body = Markup(
        "<p>This unsubscribe link is out of date: it comes from an email sent before you"
        " subscribed again, and it no longer does anything.</p>"
        "<p>To leave {site}, use the link in your latest email, or write to {contact}.</p>"
    ).format(site=site_name, contact=contact)
    return _page("Link out of date", body, status=410)


def _page(title: str, body: Markup, *, status: int = 200, retry: bool = False) -> Response:
    html = _PAGE.format(title=escape(title), body=body)
    headers = {**_HEADERS, "Retry-After": "300"} if retry else _HEADERS
    return HTMLResponse(html, status_code=status, headers=headers)
