"""Admin alerts: one mail when the source or delivery breaks down, one when it recovers.

Each alert is a row in the store with two flags: `firing` (the condition as last evaluated) and
`notified` (what the admins were last told). A mail goes out only when they differ, and `notified`
flips only once a mail was accepted: so one mail per transition, never one per failed attempt, a
lost alert is retried at the next check, and a restart remembers what the admins already know.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.utils import make_msgid

from digestd.core.model import Outcome, Rendered
from digestd.deliver.transports.base import Mailer
from digestd.mail.mime import build_message
from digestd.mail.parts import signed
from digestd.store import StateStore
from digestd.store.protocols import AlertState

__all__ = ["AdminAlerts", "AlertPolicy"]

log = logging.getLogger(__name__)

SOURCE = "source"
DELIVERY = "delivery"
STATE = "state"  # the state file was deleted or replaced: kept in memory (`tell`), not the store
DATABASE = "database"  # the state database does not answer: in memory too, per instance


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    admins: tuple[str, ...] = ()
    source_down_after: timedelta = timedelta(hours=2)
    delivery_failures: int = 5
    sender: str = "digestd <digestd@localhost>"
    site_name: str = "Paper Digest"
    sign: Callable[[bytes], bytes] | None = None  # DKIM, as for the digests


class AdminAlerts:
    """Tracks the delivery failure streak and mails the admins on each transition."""

    def __init__(
        self, store: StateStore, policy: AlertPolicy, clock: Callable[[], datetime]
    ) -> None:
        self.store = store
        self.policy = policy
        self._clock = clock
        self._streak = store.alerts.state(DELIVERY).streak

    def record(self, outcome: Outcome) -> None:
        """Count a send attempt: any outcome but "sent" extends the streak, "sent" ends it."""
        if outcome.status == "sent":
            if self._streak:
                self._streak = 0
                self._save_streak(None)
            return
        self._streak += 1
        code = f"{outcome.code} " if outcome.code else ""
        self._save_streak(f"{outcome.status}: {code}{outcome.reply}"[:300])

    def _save_streak(self, detail: str | None) -> None:
        state = self.store.alerts.state(DELIVERY)
        state = replace(state, streak=self._streak, detail=detail or state.detail)
        self.store.alerts.save(state, at=self._clock())

    async def check(self, mailer: Mailer, *, now: datetime) -> None:
        """Evaluate both conditions and mail the admins about whatever changed."""
        down_since = self.store.polls.down_since()
        source_firing = down_since is not None and now - down_since >= self.policy.source_down_after
        last = self.store.polls.last()
        await self._evaluate(
            SOURCE, source_firing, down_since, last.error if last and not last.ok else None,
            mailer, now=now,
        )  # fmt: skip
        delivery = self.store.alerts.state(DELIVERY)
        await self._evaluate(
            DELIVERY, self._streak >= self.policy.delivery_failures, delivery.since or now,
            delivery.detail, mailer, now=now,
        )  # fmt: skip

    async def _evaluate(
        self,
        name: str,
        firing: bool,
        since: datetime | None,
        detail: str | None,
        mailer: Mailer,
        *,
        now: datetime,
    ) -> None:
        old = self.store.alerts.state(name)
        new = replace(
            old,
            firing=firing,
            since=(old.since or since) if firing else None,
            detail=detail if firing else old.detail,
        )
        if new.firing != new.notified and self.policy.admins:
            if await self._mail(new, mailer, now=now):
                new = replace(new, notified=new.firing)
        elif not self.policy.admins:
            new = replace(new, notified=new.firing)  # nobody to tell: nothing owed later
        if new != old:
            self.store.alerts.save(new, at=now)

    async def tell(self, state: AlertState, mailer: Mailer, *, now: datetime) -> bool:
        """Mail the admins about `state` without reading or writing the store (which may be the
        problem); True when one of them got it, or when there is nobody to tell."""
        return not self.policy.admins or await self._mail(state, mailer, now=now)

    async def _mail(self, state: AlertState, mailer: Mailer, *, now: datetime) -> bool:
        """Tell every admin; True when at least one of them got it."""
        rendered = compose(state, self.policy, now=now)
        sender = self.policy.sender
        envelope = sender.rpartition("<")[2].rstrip(">").strip()
        domain = envelope.rpartition("@")[2] or "localhost"
        accepted = 0
        for admin in self.policy.admins:
            message = build_message(
                rendered, sender=sender, to=admin, to_name=None,
                message_id=make_msgid("digestd-alert", domain=domain), date=now,
            )  # fmt: skip
            if self.policy.sign is not None:
                message = signed(self.policy.sign, message)
            data = message.whole()
            outcome = await mailer.send(envelope, admin, data, canonical=message.canonical)
            accepted += outcome.status == "sent"
            if outcome.status != "sent":
                log.warning(
                    "admin alert not delivered alert=%s outcome=%s smtp_code=%s reply=%s",
                    state.name, outcome.status, outcome.code, outcome.reply[:200],
                )  # fmt: skip
        what = "problem" if state.firing else "recovered"
        log.warning(
            "admin alert alert=%s state=%s delivered=%d/%d",
            state.name, what, accepted, len(self.policy.admins),
        )  # fmt: skip
        return accepted > 0


def compose(state: AlertState, policy: AlertPolicy, *, now: datetime) -> Rendered:
    """The alert mail: a subject an admin can filter on, and the facts in plain text."""
    site = policy.site_name
    if state.name == SOURCE:
        problem = "the paper source keeps failing"
        fixed = "the paper source answers again"
        hint = "Check the source URL, the network and `digestd status`. Nothing is lost: the next good poll catches up."
    elif state.name == STATE:
        problem = "the state file was deleted or replaced; digestd stopped composing and sending"
        fixed = "the state file is back; digestd composes and sends again"
        hint = (
            "Put the original file back under its name (digestd resumes by itself), or stop"
            " digestd, restore the rescued copy named in its log, and start it again."
        )
    elif state.name == DATABASE:
        problem = "the state database does not answer; this instance stopped composing and sending"
        fixed = "the state database answers again; this instance composes and sends again"
        hint = (
            "Check the PostgreSQL server and the network to it. Nothing is lost: queued mail"
            " waits in the database, and each instance resumes by itself when it answers."
        )
    else:
        problem = f"deliveries keep failing ({policy.delivery_failures}+ attempts in a row)"
        fixed = "the relay accepts mail again"
        hint = "Check the relay (delivery.host) and `digestd status`. Failed sends are retried with backoff."
    if state.firing:
        subject = f"[{site}] PROBLEM: {problem}"
        since = f"Since: {state.since.isoformat() if state.since else 'unknown'}\n"
        text = f"{problem.capitalize()}.\n\n{since}Last error: {state.detail or '-'}\n\n{hint}\n"
    else:
        subject = f"[{site}] RECOVERED: {fixed}"
        text = f"Recovered: {fixed} (at {now.isoformat()}).\n\nThe last error was: {state.detail or '-'}\n"
    body = html.escape(text)
    page = f"<!doctype html><html><body><pre>{body}</pre></body></html>"
    return Rendered(subject=subject, text=text, html=page)
