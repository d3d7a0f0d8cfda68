"""What the sign-up and preference pages share: the reader repository, the settings in force, the
page tokens (confirm, manage) and the two mails a page sends.

Those mails go through the same path as digests: rendered from templates/web/, built by
mail/mime.py with their own Message-ID, DKIM-signed like any message, queued in the outbox (kind
'notice', period 'signup-…', no papers) and sent by the delivery job, which `wake` starts at once.
A notice reaches an address that unsubscribed by its own hand (the person asked again, double
opt-in); `blocked` addresses (a complaint, bounces, the admin) are not mailed at all.

The pages read on the loop's connection (WAL: a compose writing meanwhile does not block a read),
but every write of theirs goes through `write`: a worker thread on a connection of its own, since
a write may wait for a compose batch's commit (service/offloop.py) and the loop must not wait.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from digestd.config.sections import SignupSettings
from digestd.core.addresses import address_key
from digestd.core.model import Rendered, Rule, Subscriber
from digestd.mail import linktokens, pagetokens
from digestd.mail.mime import build_message
from digestd.mail.parts import signed
from digestd.pipeline import Deps
from digestd.pipeline.readers import manage_address
from digestd.rules.readers import ReaderDefaults
from digestd.service.formguard import FormGuard, RateLimiter
from digestd.service.webpages import Pages, mail_environment
from digestd.store import StateStore
from digestd.store.protocols import SELF_SERVICE_VIAS, Reader, ReaderRepository

__all__ = ["ReaderSite", "Who"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Who:
    """The verified owner of a page token: their address key, id, and reader row (None for an
    address the admin's YAML lists and that never signed up)."""

    email: str
    subscriber_id: int
    reader: Reader | None
    admin: Subscriber | None


@dataclass
class ReaderSite:
    """One daemon's reader pages: everything they read. What they change goes through
    pipeline/readers.py, which keeps the live audience current."""

    deps: Deps
    signup: Callable[[], SignupSettings]
    clock: Callable[[], datetime]
    secret: bytes
    wake: Callable[[], None] = lambda: None  # deliver what was just queued, soon
    pages: Pages = field(init=False)
    guard: FormGuard = field(init=False)
    per_ip: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.pages = Pages(self.deps.options.site_name)
        self.guard = FormGuard(self.secret, self.clock)
        # Its limit is set from the settings in force at each request.
        self.per_ip = RateLimiter(0, timedelta(hours=1))
        self._manage_key = linktokens.derive_key(self.secret, "manage")
        self._text = mail_environment(html=False)
        self._html = mail_environment(html=True)

    async def write(self, fn: Callable[[StateStore], _T]) -> _T:
        """`fn`'s writes, committed on a connection of its own in a worker thread (see the top);
        an in-memory state has no second connection, so there they run on the store itself."""
        store = self.deps.store
        if str(store.path) == ":memory:":
            return fn(store)

        def aside() -> _T:
            with store.side() as side:
                return fn(side)

        return await asyncio.to_thread(aside)

    # -- who is who --------------------------------------------------------------------------

    @property
    def readers(self) -> ReaderRepository:
        return self.deps.store.readers

    def admin_entry(self, email: str) -> Subscriber | None:
        """The admin's YAML entry for `email`, if any: it wins over a reader's own."""
        return self.deps.audience.yaml.by_email(email)

    def blocked(self, email: str) -> bool:
        """Whether no page may mail `email`: suppressed other than by its own hand (a complaint,
        the admin), or suspended after bounces. The page answers the same either way."""
        key = address_key(email)
        if key in self.deps.store.subscribers.suspended():
            return True
        return any(
            s.email == key and s.via not in SELF_SERVICE_VIAS
            for s in self.deps.store.subscribers.suppressions()
        )

    def rule_sets(self) -> Mapping[str, tuple[Rule, ...]]:
        return dict(self.deps.audience.yaml.named_sets)

    def defaults(self) -> ReaderDefaults:
        d = self.signup().defaults
        return ReaderDefaults(schedule=d.schedule, timezone=d.timezone, max_papers=d.max_papers)

    def who(self, token: str, purpose: str) -> Who | None:
        """The owner of a valid `purpose` token ("confirm" or "manage"); None for anything else:
        forged, expired, another purpose's, or its reader removed since (the id is retired)."""
        if purpose == "manage":
            return self._manager(token)
        parsed = pagetokens.parse_page_token(token)
        # Confirming a reader who had unsubscribed retires their id (`unsuppress`); their link,
        # opened again, must still say "you are subscribed", so a retired id is looked up too.
        subscribers = self.deps.store.subscribers
        email = (
            subscribers.email_of(parsed.subscriber_id)
            or subscribers.retired_email(parsed.subscriber_id)
            if parsed
            else None
        )
        reader = self.readers.get(email) if email else None
        if parsed is None or email is None or reader is None:
            return None
        # Bound to the pending row: a sign-up made again voids the older links.
        key = pagetokens.page_key(self.secret, "confirm")
        if not parsed.verify(key, email, _binding(reader), now=self.clock()):
            return None
        return Who(email, parsed.subscriber_id, reader, self.admin_entry(email))

    def _manager(self, token: str) -> Who | None:
        """The digests' own Manage link, checked as pipeline/readers signs it."""
        email = manage_address(self.deps, token)
        if email is None:
            return None
        reader, admin = self.readers.get(email), self.admin_entry(email)
        if reader is None and admin is None:
            return None
        return Who(email, self.deps.store.subscribers.id_of(email), reader, admin)

    def confirm_token(self, reader: Reader) -> str:
        sub_id = self.deps.store.subscribers.id_of(reader.email)
        expires = self.clock() + self.signup().confirm_within
        return pagetokens.page_token(
            self.secret, "confirm", sub_id, reader.email, _binding(reader), expires
        )

    def url(self, path: str) -> str:
        base = (self.deps.options.public_url or "").rstrip("/")
        return f"{base}{path}"

    def manage_url(self, email: str) -> str:
        """The page a digest's "Manage your subscription" link opens (the same token)."""
        sub_id = self.deps.store.subscribers.id_of(email)
        return self.url(f"/preferences/{linktokens.manage_token(self._manage_key, sub_id, email)}")

    # -- mails ---------------------------------------------------------------------------------

    async def mail_confirmation(self, reader: Reader, *, to: str) -> bool:
        within = self.signup().confirm_within
        link = self.url(f"/confirm/{self.confirm_token(reader)}")
        hours = int(within.total_seconds() // 3600)
        lines = (
            f"Someone, probably you, asked to receive {self.deps.options.site_name} at this"
            " address. Confirm by opening the link below; until you do, we send nothing else.",
            f"The link works for {hours} hours. If this was not you, ignore this mail.",
        )
        subject = f"Confirm your subscription to {self.deps.options.site_name}"
        return await self._queue(
            to, reader.name, subject, lines, link, "Confirm my subscription", "confirm"
        )

    async def mail_already(self, email: str, *, to: str, name: str | None) -> bool:
        """'You are subscribed already — manage it here': what a known address gets instead."""
        link = self.manage_url(email)
        lines = (
            f"Someone, probably you, asked to subscribe this address to"
            f" {self.deps.options.site_name}. It is subscribed already: nothing changed.",
            "To change your topics or schedule, pause or leave, open the link below.",
        )
        subject = f"You are subscribed to {self.deps.options.site_name}"
        return await self._queue(to, name, subject, lines, link, "Manage my subscription", "known")

    async def _queue(
        self,
        to: str,
        name: str | None,
        subject: str,
        lines: tuple[str, ...],
        link: str,
        button: str,
        what: str,
    ) -> bool:
        now = self.clock()
        email = address_key(to)
        period = f"signup-{what}-{now.strftime('%Y%m%dT%H%M%S%f')}"
        context = {
            "subject": subject, "site_name": self.deps.options.site_name, "lines": lines,
            "url": link, "button": button, "greeting": f"Hello {name}," if name else "Hello,",
            "footer": f"You get this mail because this address was entered on {self.url('/subscribe')}.",
        }  # fmt: skip
        rendered = Rendered(
            subject=subject,
            text=self._text.get_template("web/confirm_mail.txt.j2").render(**context),
            html=self._html.get_template("web/confirm_mail.html.j2").render(**context),
        )
        secret = self.deps.options.secret or self.deps.store.secret()
        message_id = _message_id(secret, email, period, self.deps.options.domain)
        message = build_message(
            rendered, sender=self.deps.options.sender, to=to, to_name=name,
            message_id=message_id, date=now, headers={"Auto-Submitted": "auto-generated"},
        )  # fmt: skip
        data = signed(self.deps.sign, message) if self.deps.sign else message
        expires = now + self.signup().confirm_within
        row = await self.write(
            lambda store: store.outbox.enqueue(
                subscriber=email, kind="notice", period=period, message_id=message_id,
                sender=self.deps.options.envelope_from, data=data, paper_ids=[], at=now,
                expires_at=expires,
            )
        )  # fmt: skip
        log.info("reader notice queued what=%s", what)
        self.wake()
        return row is not None


def _binding(reader: Reader | None) -> str:
    """What ties a token to one reader row: made again, the row has a new creation time."""
    return reader.created_at.isoformat() if reader is not None else "admin"


def _message_id(secret: bytes, email: str, period: str, domain: str) -> str:
    mac = hmac.new(secret, f"{email}|signup|{period}".encode(), "sha256").hexdigest()[:24]
    return f"<signup.{period}.{mac}@{domain}>"
