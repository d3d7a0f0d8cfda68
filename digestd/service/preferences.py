"""`/preferences/{token}`: a reader's rules, schedule, time zone and state; edit, pause, resume, leave.

A self-registered reader edits their choices (validated like sign-up; effective from the next
digest, nothing re-sent). An address the admin's YAML lists sees its rules read-only with the
admin's contact (YAML wins, even over a reader row of the same address), and may pause, resume or
unsubscribe like anyone. Each form carries its own anti-CSRF token, bound to the page's token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from digestd.core.addresses import address_key
from digestd.core.model import Rule, Subscriber
from digestd.pipeline.feedback import forget_model, refresh_relevance
from digestd.pipeline.readers import (
    edit_reader,
    pause_reader,
    refresh_readers_async,
    resume_reader,
)
from digestd.rules.readers import validate_reader_spec
from digestd.service.formguard import Form
from digestd.service.readerform import (
    LABELS,
    WEEKDAYS,
    FormValues,
    errors_of,
    spec_of,
    values_from_form,
    values_from_spec,
)
from digestd.service.readersite import ReaderSite, Who
from digestd.service.routes import mask
from digestd.service.signup import guarded_form
from digestd.service.webpages import HEADERS, zones
from digestd.store import StateStore
from digestd.store.protocols import Pause

__all__ = ["routes"]

log = logging.getLogger(__name__)

ACTIONS = ("edit", "pause", "resume", "unsubscribe", "reset")
_NOTICES = {
    "saved": "Saved. Your next digest follows these choices.",
    "paused": "Paused: nothing is sent until the date below, or until you resume.",
    "resumed": "Resumed: your next digest comes at its usual time, without the papers of the pause.",
    "caught-up": "Resumed: your next digest also brings what you missed (up to your papers per"
    " mail).",
    "reset": "Forgotten: your ratings and what your digest learned from them.",
}
_STATES = {"active": "Subscribed", "pending": "Waiting for confirmation", "paused": "Paused"}


def routes(site: ReaderSite) -> list[BaseRoute]:
    pages = _Preferences(site)
    return [
        Route("/preferences/{token}", pages.show, methods=["GET"]),
        Route("/preferences/{token}", pages.change, methods=["POST"]),
    ]


class _Preferences:
    def __init__(self, site: ReaderSite) -> None:
        self.site = site

    async def show(self, request: Request) -> Response:
        token = request.path_params["token"]
        who = self.site.who(token, "manage")
        if who is None or self._gone(who):
            return self._bad_link()
        notice = _NOTICES.get(request.query_params.get("done", ""))
        return self._render(token, who, None, {}, notice=notice)

    async def change(self, request: Request) -> Response:
        token = request.path_params["token"]
        data = await self._form(request, token)
        if isinstance(data, Response):
            return data
        action = data.get("action")
        who = self.site.who(token, "manage")
        if who is None or self._gone(who):
            return self._bad_link()
        now = self.site.clock()
        if action == "edit":
            return await self._edit(token, who, data, now)
        if action == "pause":
            weeks = data.get("weeks")
            if not (weeks.isdigit() and 1 <= int(weeks) <= 8):
                return self._render(
                    token, who, None, {"weeks": "pause for 1 to 8 weeks"}, status=422
                )
            n = int(weeks)
            await self.site.write(lambda s: pause_reader(s, who.email, weeks=n, now=now))
            return _back(token, "paused")
        if action == "reset":  # issue #16: their ratings and model, gone
            forgotten = await forget_model(self.site.deps, who.email, write=self.site.write)
            log.info("ratings reset subscriber_id=%d n=%d", who.subscriber_id, forgotten)
            response = _back(token, "reset")
            response.background = BackgroundTask(refresh_relevance, self.site.deps, now=now)
            return response
        if action == "resume":
            catch_up = data.get("catch_up") == "on"
            await self.site.write(lambda s: resume_reader(s, who.email, now=now, catch_up=catch_up))
            return _back(token, "caught-up" if catch_up else "resumed")
        if await self.site.write(lambda s: _leave(s, who, now)):
            # What remove_reader does (their ratings go too), the small rebuild off the loop.
            await forget_model(self.site.deps, who.email, write=self.site.write)
            await refresh_readers_async(self.site.deps, now=now)
        log.info("unsubscribed subscriber_id=%d via=preferences", who.subscriber_id)
        options = self.site.deps.options
        if not self.site.signup().enabled:
            return self.site.pages.message(
                "You are unsubscribed",
                f"{mask(who.email)} will receive nothing more from {options.site_name}.",
                f"Changed your mind? Write to {options.envelope_from}.",
            )
        return self.site.pages.message(
            "You are unsubscribed",
            f"{mask(who.email)} will receive nothing more from {options.site_name}.",
            "Changed your mind? Sign up again and confirm from the mail you will get.",
            link={"url": self.site.url("/subscribe"), "text": "Sign up again"},
        )

    async def _form(self, request: Request, token: str) -> Form | Response:
        """The form of one of the page's actions, with the page's anti-CSRF token."""
        data = await guarded_form(self.site, request, "prefs", token)
        if isinstance(data, Response):
            return data
        if data.get("action") not in ACTIONS:
            return self.site.pages.message("Not a form", "Unknown action.", status=400)
        return data

    async def _edit(self, token: str, who: Who, data: Form, now: datetime) -> Response:
        if who.admin is not None or who.reader is None:
            return self.site.pages.message(
                "Kept by the editor", "Your rules are kept by the editor of"
                f" {self.site.deps.options.site_name}; write to {self.site.deps.options.envelope_from}.",
                status=403,
            )  # fmt: skip
        current = values_from_spec(who.reader.spec, email=who.email, name=who.reader.name)
        values = values_from_form(data, defaults=current)
        settings = self.site.signup()
        offered = [t for t in settings.topics if t in self.site.rule_sets()]
        spec, errors = spec_of(values, topics=offered, zones=zones(), max_papers=100)
        if not errors:
            checked = validate_reader_spec(
                spec, email=who.email, name=who.reader.name, sets=self.site.rule_sets(),
                topics=settings.topics, defaults=self.site.defaults(),
            )  # fmt: skip
            errors = errors_of(checked) if isinstance(checked, list) else {}
        if errors:
            return self._render(token, who, values, errors, status=422)
        await edit_reader(self.site.deps, who.email, spec, now=now, write=self.site.write)
        log.info("reader edited subscriber_id=%d", who.subscriber_id)
        return _back(token, "saved")

    def _gone(self, who: Who) -> bool:
        """Unsubscribed or never confirmed: the page has nothing to manage."""
        if who.admin is not None:
            return False
        return who.reader is None or who.reader.state in ("unsubscribed", "pending")

    def _render(
        self,
        token: str,
        who: Who,
        values: FormValues | None,
        errors: dict[str, str],
        *,
        status: int = 200,
        notice: str | None = None,
    ) -> Response:
        settings = self.site.signup()
        sets = self.site.rule_sets()
        sub = who.admin or self._reader_subscriber(who)
        pause = self.site.readers.pause_of(who.email)
        now = self.site.clock()
        paused_until = pause.until if pause is not None and _open(pause, now) else None
        if values is None and who.reader is not None:
            values = values_from_spec(who.reader.spec, email=who.email, name=who.reader.name)
        left = self.site.deps.store.subscribers.is_suppressed(who.email)
        state = "Unsubscribed" if left else "Paused" if paused_until else _state_words(who)
        csrf = {
            a: self.site.guard.token("prefs", token)
            for a in ("edit", "pause", "resume", "leave", "reset")
        }
        return self.site.pages.render(
            "preferences.html.j2", "Your subscription", status=status, script=False,
            who=mask(who.email), state=state, schedule=_schedule_words(sub.schedule if sub else ""),
            timezone=sub.timezone if sub else "UTC", max_papers=sub.max_papers if sub else 20,
            editable=who.admin is None and who.reader is not None, v=values or FormValues(),
            errors=errors, labels=LABELS, weekdays=WEEKDAYS, zones=zones(), max_papers_cap=100,
            topics=[(n, label) for n, label in settings.topics.items() if n in sets],
            csrf=csrf, action=f"/preferences/{token}", notice=notice, left=left,
            contact=self.site.deps.options.envelope_from,
            rule_lines=[_rule_words(r) for r in sub.rules] if sub else [],
            paused_until=paused_until.strftime("%A %d %B %Y") if paused_until else None,
            learned=self._learned(who.email),
        )  # fmt: skip

    def _learned(self, email: str) -> Learned:
        """Issue #16: how many papers they rated, and the model's strongest terms either way."""
        reader = address_key(email)
        values = [r.value for r in self.site.deps.store.ratings.ratings(reader)]
        state = self.site.deps.relevance
        model = state.models.get(reader) if state is not None else None
        positive, negative = model.top_terms(state.terms, 8) if model and state else ([], [])
        return Learned(values.count(1), values.count(-1), positive, negative)

    def _reader_subscriber(self, who: Who) -> Subscriber | None:
        if who.reader is None:
            return None
        checked = validate_reader_spec(
            who.reader.spec, email=who.email, name=who.reader.name, sets=self.site.rule_sets(),
            topics=None, defaults=self.site.defaults(),
        )  # fmt: skip
        return checked if isinstance(checked, Subscriber) else None

    def _bad_link(self) -> Response:
        return self.site.pages.message(
            "Link not valid",
            "This link no longer works: the subscription it managed has ended, or the link was"
            " cut on its way (copy it whole). A subscriber finds a fresh one at the end of"
            " their latest digest. Nothing was changed.",
            status=404,
        )


@dataclass(frozen=True, slots=True)
class Learned:
    """What the preferences page shows of the reader's relevance model."""

    likes: int
    dislikes: int
    positive: list[str]
    negative: list[str]


def _leave(store: StateStore, who: Who, now: datetime) -> bool:
    """Suppress the address; whether a reader row of theirs was removed too."""
    store.subscribers.suppress(who.email, at=now, via="preferences")
    return who.reader is not None and store.readers.remove(who.email, at=now)


def _open(pause: Pause | None, now: datetime) -> bool:
    return pause is not None and pause.resumed_at is None and pause.until > now


def _state_words(who: Who) -> str:
    if who.admin is not None:
        return "Subscribed by the editor"
    return _STATES.get(who.reader.state if who.reader else "", "Subscribed")


def _back(token: str, done: str) -> Response:
    return RedirectResponse(f"/preferences/{token}?done={done}", status_code=303, headers=HEADERS)


def _schedule_words(schedule: str) -> str:
    parts = schedule.split()
    if len(parts) != 5 or not parts[1].isdigit():
        return schedule
    at = f"{int(parts[1]):02d}:{int(parts[0]) if parts[0].isdigit() else 0:02d}"
    days = dict(WEEKDAYS)
    if parts[4] == "*":
        return f"daily at {at}"
    if parts[4] == "mon-fri":
        return f"Monday to Friday at {at}"
    if parts[4] in days:
        return f"{days[parts[4]]}s at {at}"
    return f"at {at} ({parts[4]})"


def _rule_words(rule: Rule) -> str:
    """One rule as the admin might have written it (read-only display)."""
    bits = []
    if rule.any:
        bits.append("any of: " + ", ".join(t.text for t in rule.any))
    if rule.all:
        bits.append("all of: " + ", ".join(t.text for t in rule.all))
    if rule.authors:
        bits.append("authors: " + ", ".join(rule.authors))
    if rule.categories:
        bits.append("categories: " + ", ".join(rule.categories))
    if rule.query is not None:
        bits.append("a query")
    if rule.alert:
        bits.append("(alert)")
    return "; ".join(bits) or "a rule"
