"""What the pipeline talks to (`Deps`), the plain settings it reads (`Options`) and the subscribers
it serves (`Audience`: the YAML's, indexed once, and the self-registered readers, indexed apart)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.utils import parseaddr
from pathlib import Path
from types import MappingProxyType
from typing import Protocol, TypeVar

from digestd.core.addresses import address_key
from digestd.core.model import Match, Paper, Subscriber, SubscriberSet
from digestd.core.observer import NULL, Observer
from digestd.deliver.transports.base import Mailer
from digestd.mail.render import Environments
from digestd.pipeline.relevance import RelevanceState
from digestd.pipeline.webreaders import build_web
from digestd.rules.matcher import Matcher
from digestd.rules.readers import ReaderDefaults
from digestd.rules.reference import Relevance
from digestd.sources.base import Source
from digestd.store import StateStore

__all__ = [
    "Audience",
    "Deps",
    "Options",
    "Write",
    "key",
    "register",
    "swap_subscribers",
    "swap_web",
    "written",
]

_T = TypeVar("_T")


class Write(Protocol):
    """Where a page's write runs: service/readersite.py's `ReaderSite.write` runs it in a worker
    thread on a connection of its own, so the event loop never waits for the write lock."""

    def __call__(self, fn: Callable[[StateStore], _T], /) -> Awaitable[_T]: ...


async def written(deps: Deps, write: Write | None, fn: Callable[[StateStore], _T]) -> _T:
    """`fn` through `write`, or on the store itself without one (the CLI, `run --once`, tests)."""
    return fn(deps.store) if write is None else await write(fn)


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
    verp: str | None = None  # VERP base (bounces@domain): each message's own envelope sender
    reader_defaults: ReaderDefaults = ReaderDefaults()  # `signup.defaults`
    confirm_within: timedelta = timedelta(hours=48)  # then an unconfirmed sign-up is forgotten
    likes_base: Path = Path()  # `like:` files are relative to the subscribers file's folder
    instance: str | None = None  # this daemon's name: the claimant of the rows it sends
    lease: timedelta = timedelta(minutes=2)  # a claim's life without its claimant's heartbeat
    relevance_backend: str = "tfidf"  # `relevance.backend`: "tfidf" or "embeddings"

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
    """The subscribers as the pipeline serves them: the YAML's set, indexed once (`matcher`), the
    confirmed self-registered readers not in it, indexed apart (`web`, small: rebuilt alone when
    one reader changes), and when each first appeared (`registered`). Never changed in place: a
    reload or a reader's change swaps in a new one."""

    matcher: Matcher
    registered: Mapping[str, datetime] = field(default_factory=lambda: MappingProxyType({}))
    web: Matcher | None = None
    everyone: SubscriberSet | None = None  # YAML then web; None: the YAML's alone
    web_ids: frozenset[int] = frozenset()  # id() of each web reader's Subscriber

    @classmethod
    def of(cls, subscribers: SubscriberSet) -> Audience:
        return cls(Matcher.build(subscribers))

    def with_web(self, web: Matcher | None) -> Audience:
        """This audience with `web` as its readers' part (None: none)."""
        if web is None or not web.subscribers.subscribers:
            return replace(self, web=None, everyone=None, web_ids=frozenset())
        yaml = self.matcher.subscribers
        everyone = replace(yaml, subscribers=yaml.subscribers + web.subscribers.subscribers)
        ids = frozenset(id(s) for s in web.subscribers.subscribers)
        return replace(self, web=web, everyone=everyone, web_ids=ids)

    @property
    def subscribers(self) -> SubscriberSet:
        """Everyone served: the YAML's subscribers, then the web readers."""
        return self.everyone if self.everyone is not None else self.matcher.subscribers

    @property
    def yaml(self) -> SubscriberSet:
        return self.matcher.subscribers

    def match(
        self,
        papers: Sequence[Paper],
        subscriber: Subscriber,
        *,
        alerts_only: bool = False,
        relevance: Relevance | None = None,
    ) -> list[Match]:
        """`Matcher.match` by the matcher that indexed `subscriber` (`relevance`: their scores)."""
        web = self.web if id(subscriber) in self.web_ids else None
        matcher = web or self.matcher
        return matcher.match(papers, subscriber, alerts_only=alerts_only, relevance=relevance)

    def match_batch(
        self,
        wanted: Sequence[tuple[Subscriber, Sequence[Paper]]],
        *,
        relevance: Callable[[str, Sequence[Paper]], Relevance | None] | None = None,
    ) -> list[list[Match]]:
        """`match` for each pair: the YAML's subscribers through `Matcher.match_batch` (membership
        for the batch at once); web readers and readers with a relevance model one by one."""
        out: list[list[Match]] = [[] for _ in wanted]
        fast: list[int] = []
        for i, (sub, papers) in enumerate(wanted):
            scores = relevance(sub.email, papers) if relevance is not None else None
            if scores is not None or id(sub) in self.web_ids:
                out[i] = self.match(papers, sub, relevance=scores)
            else:
                fast.append(i)
        found = self.matcher.match_batch([wanted[i] for i in fast]) if fast else []
        for i, matches in zip(fast, found, strict=True):
            out[i] = matches
        return out

    def match_all(
        self, papers: Sequence[Paper], *, alerts_only: bool = False
    ) -> list[tuple[Subscriber, list[Match]]]:
        """`Matcher.match_all` over both parts: the YAML's subscribers first."""
        found = self.matcher.match_all(papers, alerts_only=alerts_only)
        if self.web is not None:
            found += self.web.match_all(papers, alerts_only=alerts_only)
        return found


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
    web_version: int = 0  # counts readers' refreshes: only the newest one swaps (pipeline/readers)
    readers_seen: int | None = None  # the store's readers version the audience was built from
    # Called after the web readers changed: the daemon adds a digest job for a new schedule.
    audience_changed: Callable[[], object] = lambda: None
    # Issue #16: the readers' relevance models (pipeline/relevance.py: refresh, load, save);
    # None: no relevance term, `similar` never holds.
    relevance: RelevanceState | None = None

    @property
    def subscribers(self) -> SubscriberSet:
        return self.audience.subscribers

    def all_sources(self) -> tuple[Source, ...]:
        return self.sources or (self.source,)


def register(deps: Deps, *, now: datetime) -> None:
    """Remember when each subscriber first appeared, so a newcomer's first digest starts from now;
    the confirmed web readers join the audience here."""
    deps.readers_seen = deps.store.readers.version()
    web = build_web(deps.store.readers.active(), deps.audience.yaml, deps.options.reader_defaults)
    deps.audience = _registered(deps.store, deps.audience.with_web(web), now=now)


def swap_subscribers(deps: Deps, subscribers: SubscriberSet, *, now: datetime) -> None:
    """Serve `subscribers` from now on (a reload): indexed once here, newcomers registered, and
    swapped in whole only then, so a failure leaves the old audience in place. The web readers
    are rebuilt too: an address the admin's file now lists is the admin's (YAML wins)."""
    deps.readers_seen = deps.store.readers.version()
    web = build_web(deps.store.readers.active(), subscribers, deps.options.reader_defaults)
    deps.audience = _registered(deps.store, Audience.of(subscribers).with_web(web), now=now)


def swap_web(deps: Deps, web: Matcher | None, *, now: datetime) -> None:
    """Serve `web` as the readers' part (built by `build_web`); the YAML's matcher stays, and only
    the readers are registered (a confirmed reader's first digest covers `lookback`)."""
    audience = deps.audience.with_web(web)
    emails = [key(s) for s in web.subscribers.subscribers] if web is not None else []
    found = deps.store.subscribers.register(emails, at=now)
    registered = MappingProxyType({**audience.registered, **found})
    deps.audience = replace(audience, registered=registered)
    deps.audience_changed()


def _registered(store: StateStore, audience: Audience, *, now: datetime) -> Audience:
    emails: Iterable[str] = (key(s) for s in audience.subscribers.subscribers)
    registered = store.subscribers.register(emails, at=now)
    return replace(audience, registered=MappingProxyType(registered))


def key(sub: Subscriber) -> str:
    """The store's key for a subscriber: addresses compare case-insensitively."""
    return address_key(sub.email)
