"""`/subscribe` and `/confirm/{token}`: a reader signs up, then confirms from the mail (double opt-in).

The POST answers the same page whatever the address is (new, pending, subscribed, the admin's,
or refused by the per-address limit), so the form cannot be used to learn who reads the digest;
only what the reader typed is checked in the answer. A subscribed address is mailed "you are
subscribed, manage it here" instead of a confirmation. Only the POST of `/confirm` confirms:
link scanners GET every link in a mail.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from digestd.core.addresses import address_key, check_address
from digestd.mail import pagetokens
from digestd.pipeline.readers import confirm_reader
from digestd.rules.readers import validate_reader_spec
from digestd.service.formguard import (
    BadForm,
    BodyTooLarge,
    Form,
    client_ip,
    rate_key,
    read_form,
)
from digestd.service.readerform import (
    LABELS,
    WEEKDAYS,
    FormValues,
    errors_of,
    spec_of,
    values_from_form,
)
from digestd.service.readersite import ReaderSite, Who
from digestd.service.webpages import HEADERS, zones
from digestd.store import StateStore
from digestd.store.protocols import Reader

__all__ = ["MAX_FORM", "routes"]

log = logging.getLogger(__name__)

MAX_FORM = 32 * 1024  # a generous form is a few kB; a 1 MB keyword list is not a reader


def routes(site: ReaderSite) -> list[BaseRoute]:
    pages = _Signup(site)
    return [
        Route("/subscribe", pages.form, methods=["GET"]),
        Route("/subscribe", pages.submit, methods=["POST"]),
        Route("/subscribe/sent", pages.sent, methods=["GET"]),
        Route("/confirm/{token}", pages.confirm_page, methods=["GET"]),
        Route("/confirm/{token}", pages.confirm, methods=["POST"]),
    ]


async def guarded_form(
    site: ReaderSite, request: Request, form: str, subject: str
) -> Form | Response:
    """The POSTed form, or the page refusing it: too big, not a form, or without its CSRF token."""
    try:
        data = await read_form(request, cap=MAX_FORM)
    except BodyTooLarge:
        return site.pages.message(
            "Too much text",
            f"The form can carry at most {MAX_FORM // 1024} kB. Go back, shorten the longest"
            " field (keywords and authors are limited to 50 entries each), and send it again.",
            status=413,
        )
    except BadForm:
        return site.pages.message("Not a form", "This request is not a form we sent.", status=400)
    if not site.guard.check(data, form, subject):
        return site.pages.message(
            "This form has expired",
            "Forms are valid for a few hours, and only on this site. Nothing was changed.",
            status=403,
            link={"url": str(request.url), "text": "Load the page again"},
        )
    return data


class _Signup:
    def __init__(self, site: ReaderSite) -> None:
        self.site = site

    def _disabled(self) -> Response | None:
        if self.site.signup().enabled:
            return None
        return self.site.pages.message(
            "Sign-up is closed",
            f"{self.site.deps.options.site_name} does not take sign-ups on this page;"
            f" write to {self.site.deps.options.envelope_from} to be added.",
            status=404,
        )

    def _defaults(self) -> FormValues:
        d = self.site.signup().defaults
        hour, weekday = _hour_and_day(d.schedule)
        workdays = d.schedule.split()[-1:] == ["mon-fri"]
        frequency = "weekly" if weekday else "workdays" if workdays else "daily"
        return FormValues(
            timezone=d.timezone, max_papers=str(d.max_papers), hour=hour,
            weekday=weekday or "mon", frequency=frequency,
        )  # fmt: skip

    def _render(self, values: FormValues, errors: dict[str, str], status: int = 200) -> Response:
        settings = self.site.signup()
        sets = self.site.rule_sets()
        return self.site.pages.render(
            "subscribe.html.j2", "Subscribe", status=status, script=True,
            v=values, errors=errors, labels=LABELS, weekdays=WEEKDAYS, zones=zones(),
            topics=[(name, label) for name, label in settings.topics.items() if name in sets],
            domains=settings.allowed_domains, csrf=self.site.guard.token("subscribe"),
            action="/subscribe", max_papers_cap=100,
        )  # fmt: skip

    async def form(self, request: Request) -> Response:
        return self._disabled() or self._render(self._defaults(), {})

    async def submit(self, request: Request) -> Response:
        closed = self._disabled()
        if closed is not None:
            return closed
        data = await guarded_form(self.site, request, "subscribe", "")
        if isinstance(data, Response):
            return data
        self.site.per_ip.limit = self.site.signup().per_ip
        if not self.site.per_ip.allow(rate_key(client_ip(request)), self.site.clock()):
            return self.site.pages.message(
                "Too many sign-ups", "Too many sign-ups came from your network in the last"
                " hour. Please try again later.", status=429, headers={"Retry-After": "3600"},
            )  # fmt: skip
        if self.site.guard.is_bot(data):
            log.info("signup ignored reason=honeypot")
            return _sent()
        values = values_from_form(data, defaults=self._defaults())
        problems = self._problems(values)
        if problems:
            return self._render(values, problems, status=422)
        await self._accept(values)
        return _sent()

    def _problems(self, values: FormValues) -> dict[str, str]:
        settings = self.site.signup()
        offered = [t for t in settings.topics if t in self.site.rule_sets()]
        spec, errors = spec_of(values, topics=offered, zones=zones(), max_papers=100)
        email_error = _email_problem(values.email, settings.domain_allowed)
        if email_error:
            errors["email"] = email_error
        if errors:
            return errors
        checked = validate_reader_spec(
            spec, email=values.email, name=values.name or None, sets=self.site.rule_sets(),
            topics=settings.topics, defaults=self.site.defaults(),
        )  # fmt: skip
        return errors_of(checked) if isinstance(checked, list) else {}

    async def _accept(self, values: FormValues) -> None:
        """Store the pending reader and mail them, or mail a known address its manage link; the
        per-address limit silently drops a mail (the page says the same either way)."""
        now, email = self.site.clock(), address_key(check_address(values.email))
        settings = self.site.signup()
        allowed = await self.site.write(
            lambda store: store.readers.may_send_confirmation(
                email, at=now, every=settings.confirm_every
            )
        )
        if not allowed:
            log.info("signup mail not sent reason=per-address limit")
            return
        if self.site.blocked(email):
            log.info("signup mail not sent reason=address blocked")
            return
        offered = [t for t in settings.topics if t in self.site.rule_sets()]
        spec, _ = spec_of(values, topics=offered, zones=zones(), max_papers=100)
        name = values.name or None
        reader = self.site.readers.get(email)
        served = self.site.admin_entry(email) is not None or (
            reader is not None and reader.state in ("active", "paused")
        )
        # One who left by their own hand comes back by confirming (which lifts the suppression);
        # for the admin's address too, whose entry then serves them again.
        if served and not self.site.deps.store.subscribers.is_suppressed(email):
            await self.site.mail_already(email, to=check_address(values.email), name=name)
            return
        reader = await self.site.write(lambda store: _pending(store, email, name, spec, now))
        await self.site.mail_confirmation(reader, to=check_address(values.email))

    async def sent(self, request: Request) -> Response:
        return self.site.pages.message(
            "Check your inbox",
            "If the address can receive our mail, a message is on its way to it: open the"
            " link in it to confirm. Nothing is sent before you do.",
            "No mail after a few minutes? Look in the spam folder, or sign up again later.",
        )

    async def confirm_page(self, request: Request) -> Response:
        """GET: a page with a button; nothing changes (scanners GET every link)."""
        token = request.path_params["token"]
        who = self.site.who(token, "confirm")
        if who is None or who.reader is None:
            return self._bad_link(token)
        if who.reader.state != "pending":
            return self._confirmed(who)
        form = {"action": f"/confirm/{token}", "csrf": self.site.guard.token("confirm", token),
                "hidden": (), "button": "Confirm my subscription"}  # fmt: skip
        return self.site.pages.message(
            "Confirm your subscription", "One click and your first digest is on its way.", form=form
        )

    async def confirm(self, request: Request) -> Response:
        token = request.path_params["token"]
        data = await guarded_form(self.site, request, "confirm", token)
        if isinstance(data, Response):
            return data
        who = self.site.who(token, "confirm")
        if who is None or who.reader is None:
            return self._bad_link(token)
        if who.reader.state == "pending":
            now = self.site.clock()
            await confirm_reader(self.site.deps, who.email, now=now, write=self.site.write)
            log.info("reader confirmed subscriber_id=%d", who.subscriber_id)
        return self._confirmed(who)

    def _confirmed(self, who: Who) -> Response:
        url = self.site.manage_url(who.email)
        if who.admin is not None:  # the editor's entry serves the address (YAML wins)
            return self.site.pages.message(
                "You are subscribed",
                "The editor keeps the topics and schedule of this address: your digest comes"
                " as they set it up, from its next time.",
                link={"url": url, "text": "See your subscription, or pause"},
            )
        return self.site.pages.message(
            "You are subscribed",
            "Your first digest comes at the next time you chose, with the papers of the last days.",
            link={"url": url, "text": "Change your topics, schedule, or pause"},
        )

    def _bad_link(self, token: str) -> Response:
        again = {"url": self.site.url("/subscribe"), "text": "Sign up again"}
        parsed = pagetokens.parse_page_token(token)
        if parsed is not None and parsed.expires <= self.site.clock():
            # The expiry is readable in any token (a forger learns nothing from this page); the
            # pending sign-up itself is forgotten once `confirm_within` has passed.
            hours = int(self.site.signup().confirm_within.total_seconds() // 3600)
            return self.site.pages.message(
                "This link has expired",
                f"Confirmation links work for {hours} hours, and this one is older. Nothing"
                " was subscribed. Sign up again and open the link in the new mail.",
                status=410,
                link=again,
            )
        return self.site.pages.message(
            "Link not valid",
            "This link no longer works: a newer mail replaced it, the subscription it was for"
            " has ended, or the link was cut on its way (copy it whole). Nothing was changed.",
            status=404,
            link=again,
        )


def _pending(
    store: StateStore, email: str, name: str | None, spec: Mapping[str, object], now: datetime
) -> Reader:
    """The pending reader, and the id its confirm link carries (made here, off the loop, rather
    than by the link's `id_of` on the loop's connection)."""
    reader = store.readers.add_pending(email, name=name, spec=spec, at=now)
    store.subscribers.id_of(email)
    return reader


def _sent() -> Response:
    """The one answer to every accepted form: a redirect (POST → GET), so a reload sends nothing."""
    return RedirectResponse("/subscribe/sent", status_code=303, headers=HEADERS)


def _email_problem(email: str, allowed: object) -> str | None:
    if not email:
        return "enter your email address"
    if len(email) > 254:
        return "an address has at most 254 characters"
    try:
        checked = check_address(email)
    except ValueError as exc:
        return str(exc)
    if callable(allowed) and not allowed(checked):
        return "this address's domain may not sign up here"
    return None


def _hour_and_day(schedule: str) -> tuple[int, str | None]:
    """'0 7 * * *' → (7, None); '0 7 * * mon' → (7, 'mon'); anything else: its hour, daily."""
    parts = schedule.split()
    hour = int(parts[1]) if len(parts) == 5 and parts[1].isdigit() else 7
    day = parts[4] if len(parts) == 5 and parts[4] in dict(WEEKDAYS) else None
    return min(hour, 23), day
