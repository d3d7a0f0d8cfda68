"""What the pipeline talks to (`Deps`), the plain settings it reads (`Options`) and the subscribers
it serves (`Audience`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.utils import parseaddr
from types import MappingProxyType

from digestd.core.addresses import address_key
from digestd.core.model import Subscriber, SubscriberSet
from digestd.core.observer import NULL, Observer
from digestd.deliver.transports.base import Mailer
from digestd.mail.render import Environments
from digestd.rules.matcher import Matcher
from digestd.sources.base import Source
from digestd.store import StateStore

__all__ = ["Audience", "Deps", "Options", "key", "register", "swap_subscribers"]


@dataclass(frozen=True, slots=True)
class Options:
    """The settings the pipeline needs, as plain values (the pipeline never sees the settings object)."""

    sender: str  # "Name <addr>" for the From header
    site_name: str = "Paper Digest"
    lookback: timedelta = timedelta(days=7)
    max_late: timedelta | None = None
    max_attempts: int = 8
    retry_base: timedelta = timedelta(minutes=1)
    retry_cap: timedelta = timedelta(hours=1)
    alert_ttl: timedelta = timedelta(days=1)
    public_url: str | None = None  # base of the unsubscribe and web-copy links
    list_id: str | None = None  # None: derived from site_name and the sender's domain
    unsubscribe_mailto: str | None = None
    view_days: int = 30
    secret: bytes | None = field(default=None, repr=False)  # None: the store's own secret
    connections: int = 1  # parallel senders; the mailer must be a pool at least that large
    suspend_after: int | None = 3  # consecutive hard failures before an address is suspended
    keep_days: int = 7  # then the bytes of a message that ended are dropped (`StateStore.prune`)
    instance: str | None = None  # this daemon's name: the claimant of the rows it sends
    lease: timedelta = timedelta(minutes=2)  # a claim's life without its claimant's heartbeat

    @property
    def envelope_from(self) -> str:
        return _envelope(self.sender)

    @property
    def domain(self) -> str:
        return self.envelope_from.rpartition("@")[2] or "localhost"


@functools.lru_cache(maxsize=16)  # read several times per message; parseaddr costs ~0.1 ms
def _envelope(sender: str) -> str:
    return parseaddr(sender)[1]


@dataclass(frozen=True, slots=True)
class Audience:
    """The subscribers as the pipeline serves them: the set, indexed once (`matcher`), and when
    each first appeared (`registered`). Never changed in place: a reload swaps in a new one."""

    matcher: Matcher
    registered: Mapping[str, datetime] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, subscribers: SubscriberSet) -> Audience:
        return cls(Matcher.build(subscribers))

    @property
    def subscribers(self) -> SubscriberSet:
        return self.matcher.subscribers


@dataclass(slots=True)
class Deps:
    """Everything the pipeline talks to; the shells build it, tests pass real local peers.

    The pipeline only reads it; the service swaps whole parts on reload (`swap_subscribers`).
    """

    store: StateStore
    source: Source
    mailer: Mailer
    audience: Audience
    envs: Environments
    options: Options
    stopping: Callable[[], bool] = lambda: False
    sign: Callable[[bytes], bytes] | None = None  # DKIM, applied before the bytes are queued
    observer: Observer = NULL  # progress bars and metrics; the pipeline only reports to it
    sources: tuple[Source, ...] = ()  # every configured source; empty: just `source`

    @property
    def subscribers(self) -> SubscriberSet:
        return self.audience.subscribers

    def all_sources(self) -> tuple[Source, ...]:
        return self.sources or (self.source,)


def register(deps: Deps, *, now: datetime) -> None:
    """Remember when each subscriber first appeared, so a newcomer's first digest starts from now."""
    deps.audience = _registered(deps.store, deps.audience, now=now)


def swap_subscribers(deps: Deps, subscribers: SubscriberSet, *, now: datetime) -> None:
    """Serve `subscribers` from now on (a reload): indexed once here, newcomers registered, and
    swapped in whole only then, so a failure leaves the old audience in place."""
    deps.audience = _registered(deps.store, Audience.of(subscribers), now=now)


def _registered(store: StateStore, audience: Audience, *, now: datetime) -> Audience:
    emails = (key(s) for s in audience.subscribers.subscribers)
    registered = store.subscribers.register(emails, at=now)
    return replace(audience, registered=MappingProxyType(registered))


def key(sub: Subscriber) -> str:
    """The store's key for a subscriber: addresses compare case-insensitively."""
    return address_key(sub.email)
