"""Wiring for the shells: settings in, a ready `Deps` out (store opened, source, mailer, templates, rules)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from starlette.routing import BaseRoute

from digestd.config.sections import SignupSettings, SourceSettings
from digestd.config.settings import Settings, read_config_text
from digestd.core.errors import ConfigError
from digestd.core.gcpause import gc_paused
from digestd.core.model import SubscriberSet
from digestd.deliver.transports.base import Mailer
from digestd.deliver.transports.maildir import MaildirMailer
from digestd.deliver.transports.pool import MailerPool
from digestd.deliver.transports.smtp import SmtpMailer
from digestd.mail.dkim import load_signer
from digestd.mail.listheaders import normalise_list_id
from digestd.mail.render import make_environments
from digestd.pipeline import Audience, Deps, Options, key
from digestd.pipeline import register as register_subscribers
from digestd.rules.readers import ReaderDefaults, topic_problems
from digestd.rules.subscribers import load_subscribers
from digestd.service import feedback, preferences
from digestd.service import routes as unsubscribe
from digestd.service import signup as signup_pages
from digestd.service.instance import default_name
from digestd.service.readersite import ReaderSite
from digestd.sources import FileSource, HuggingFaceSource, Source, make_client
from digestd.sources.arxiv import ArxivApiSource, category_query
from digestd.sources.arxiv_rss import ArxivRssSource
from digestd.sources.feed import FeedSource
from digestd.sources.http import HttpGetter, Throttle, ValidatorStore
from digestd.sources.huggingface import HF_ACCEPT, HF_MAX_BODY
from digestd.store import open_store

__all__ = [
    "check_signup",
    "close",
    "load_subscriber_file",
    "make_mailer",
    "make_sources",
    "open_deps",
    "options",
    "web_routes",
]

log = logging.getLogger(__name__)


def load_subscriber_file(path: Path) -> SubscriberSet:
    """:raises ConfigError: when the file is unreadable or invalid, with every problem positioned."""
    text = read_config_text(path)
    # The set lives as long as the process: the collector need not rescan its millions of objects
    # (for 100,000 subscribers one full collection costs seconds, and matching triggers many).
    with gc_paused(freeze=True):
        return load_subscribers(text, file=str(path))


def check_signup(path: Path, settings: Settings, subs: SubscriberSet) -> None:
    """`signup.topics` must name rule sets of the subscribers file (`check` and reloads).

    :raises ConfigError: each unknown one at its place in the settings file `path`.
    """
    if not settings.signup.topics:
        return
    text = read_config_text(path)
    if problems := topic_problems(settings.signup.topics, subs, text=text, file=str(path)):
        raise ConfigError(problems)


def make_sources(settings: Settings, cache: ValidatorStore | None = None) -> list[Source]:
    """Every configured source; arXiv's sources share one throttle (its terms count them together)."""
    throttles: dict[float, Throttle] = {}
    return [_one_source(src, cache, throttles) for src in settings.all_sources()]


def _one_source(
    src: SourceSettings, cache: ValidatorStore | None, throttles: dict[float, Throttle]
) -> Source:
    name = src.key
    if src.kind == "file":
        return FileSource(Path(src.url), name=name)
    getter = _getter(src, cache, throttles)
    if src.kind == "huggingface":
        return HuggingFaceSource(getter, url=src.url, name=name, days=src.days, listing=src.listing)
    if src.kind == "arxiv":
        query = src.query or category_query(src.categories)
        return ArxivApiSource(
            getter, query=query, url=src.url, name=name,
            page_size=src.page_size, max_results=src.max_results,
        )  # fmt: skip
    if src.kind == "arxiv_rss":
        return ArxivRssSource(
            getter, categories=src.categories, announce_types=src.announce_types,
            base_url=src.url, name=name,
        )  # fmt: skip
    return FeedSource(getter, url=src.url, name=name)


def _getter(
    src: SourceSettings, cache: ValidatorStore | None, throttles: dict[float, Throttle]
) -> HttpGetter:
    """The source's HTTP client; arXiv's kinds share a throttle, Hugging Face sends its token."""
    seconds = src.timeout.total_seconds()
    client = make_client(timeout=seconds)
    if src.kind == "huggingface":
        token = src.token.get_secret_value() if src.token else None
        return HttpGetter(
            client, name=src.key, retries=src.retries, deadline=seconds,
            accept=HF_ACCEPT, token=token, max_body=HF_MAX_BODY,
        )  # fmt: skip
    throttle = None
    if src.kind in ("arxiv", "arxiv_rss"):
        interval = src.min_interval.total_seconds()
        throttle = throttles.setdefault(interval, Throttle(interval))
    return HttpGetter(
        client, name=src.key, retries=src.retries, deadline=seconds,
        max_body=src.max_bytes, throttle=throttle, cache=cache,
    )  # fmt: skip


def make_mailer(settings: Settings) -> Mailer:
    d = settings.delivery
    if d.kind == "maildir":
        return MaildirMailer(d.path)
    for warning in d.warnings():  # as `digestd check` says; again at every start and reload
        log.warning("%s", warning.removeprefix("! "))
    password = settings.smtp_password() if d.username else None
    connections = [
        SmtpMailer(
            d.host,
            d.port,
            security=d.security,
            username=d.username,
            password=password,
            timeout=d.timeout.total_seconds(),
            data_timeout=d.data_timeout.total_seconds(),
            validate_certs=d.validate_certs,
            max_per_connection=d.max_per_connection,
        )
        for _ in range(d.connections)
    ]
    if len(connections) == 1 and not d.rate_limit:
        return connections[0]
    return MailerPool(connections, rate_limit=d.rate_limit)


def options(settings: Settings) -> Options:
    return Options(
        sender=settings.delivery.sender,
        site_name=settings.site_name,
        lookback=settings.lookback,
        max_late=settings.max_late,
        max_attempts=settings.delivery.max_attempts,
        public_url=settings.http.public_url,
        list_id=normalise_list_id(settings.delivery.list_id) if settings.delivery.list_id else None,
        unsubscribe_mailto=settings.delivery.unsubscribe_mailto,
        view_days=settings.http.view_days,
        secret=settings.http_secret(),
        # A Maildir is one local writer: parallel senders would only interleave file writes.
        connections=settings.delivery.connections if settings.delivery.kind == "smtp" else 1,
        suspend_after=settings.delivery.suspend_after,
        verp=settings.delivery.verp,
        keep_days=settings.delivery.keep_days,
        reader_defaults=ReaderDefaults(**settings.signup.defaults.model_dump()),
        confirm_within=settings.signup.confirm_within,
        likes_base=settings.subscribers.parent,
        instance=settings.instance or default_name(),
        lease=settings.lease,
        relevance_backend=settings.relevance.backend,
    )


def open_deps(
    settings: Settings,
    *,
    now: datetime,
    subscribers: SubscriberSet | None = None,
    register: bool = True,
) -> Deps:
    """Validate the subscribers and templates first, then open the store: bad config touches no state."""
    subs = subscribers if subscribers is not None else load_subscriber_file(settings.subscribers)
    envs = make_environments(settings.templates)
    opts = options(settings)
    sign = load_signer(settings.delivery.dkim) if settings.delivery.dkim else None
    store = open_store(settings.state, password=settings.state_secret())
    sources = make_sources(settings, cache=store.polls)
    deps = Deps(
        store=store,
        source=sources[0],
        sources=tuple(sources),
        mailer=make_mailer(settings),
        audience=Audience.of(subs),
        envs=envs,
        options=opts,
        sign=sign,
    )
    if register:
        register_subscribers(deps, now=now)
    return deps


async def close(deps: Deps) -> None:
    await deps.mailer.aclose()
    for source in deps.all_sources():
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
    deps.store.close()


def served_keys(deps: Deps) -> set[str]:
    """Whose unsent mail a restart or reload keeps: everyone served, and the readers still to
    confirm (their confirmation mail is queued like any other)."""
    served = {key(s) for s in deps.subscribers.subscribers}
    return served | {r.email for r in deps.store.readers.pending()}


def web_routes(
    deps: Deps,
    *,
    clock: Callable[[], datetime],
    health: Sequence[BaseRoute] = (),
    signup: Callable[[], SignupSettings] = SignupSettings,
    wake: Callable[[], None] = lambda: None,
) -> list[BaseRoute]:
    """Every route of the daemon's HTTP listener (`http.listen`); each feature adds its own here.

    `signup`: the `signup:` settings in force (read at each request, so a reload applies);
    `wake`: start delivering now (a confirmation mail was queued).
    """
    secret = deps.options.secret or deps.store.secret()
    site = ReaderSite(deps, signup=signup, clock=clock, secret=secret, wake=wake)
    pages = unsubscribe.routes(
        deps.store,
        secret=secret,
        site_name=deps.options.site_name,
        contact=deps.options.envelope_from,
        clock=clock,
        rejoin=lambda: site.url("/subscribe") if signup().enabled else None,
    )
    return [
        *health,
        *pages,
        *signup_pages.routes(site),
        *preferences.routes(site),
        *feedback.routes(site),
    ]
