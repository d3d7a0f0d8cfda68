"""Wiring for the shells: settings in, a ready `Deps` out (store opened, source, mailer, templates, rules)."""

from __future__ import annotations

import gc
from datetime import datetime
from pathlib import Path

from digestd.errors import ConfigError, ConfigProblem
from digestd.index import Matcher
from digestd.model import SubscriberSet
from digestd.pipeline import Deps, Options
from digestd.pipeline import register as register_subscribers
from digestd.render import make_environments
from digestd.rules import load_subscribers
from digestd.settings import Settings
from digestd.sources import FileSource, HuggingFaceSource, Source, make_client
from digestd.store import Store
from digestd.transports.base import Mailer
from digestd.transports.maildir import MaildirMailer
from digestd.transports.smtp import SmtpMailer

__all__ = ["close", "load_subscriber_file", "make_mailer", "make_source", "open_deps", "options"]


def load_subscriber_file(path: Path) -> SubscriberSet:
    """:raises ConfigError: when the file is unreadable or invalid, with every problem positioned."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = ConfigProblem(str(path), 1, 1, "", f"cannot read: {exc.strerror}")
        raise ConfigError([problem]) from exc
    subscribers = load_subscribers(text, file=str(path))
    # The set lives as long as the process: the collector need not rescan its millions of objects
    # (for 100,000 subscribers one full collection costs seconds, and matching triggers many).
    gc.freeze()
    return subscribers


def make_source(settings: Settings) -> Source:
    src = settings.source
    if src.kind == "file":
        return FileSource(Path(src.url))
    token = src.token.get_secret_value() if src.token else None
    client = make_client(timeout=src.timeout.total_seconds())
    return HuggingFaceSource(src.url, client, days=src.days, token=token)


def make_mailer(settings: Settings) -> Mailer:
    d = settings.delivery
    if d.kind == "maildir":
        return MaildirMailer(d.path)
    return SmtpMailer(
        d.host,
        d.port,
        security=d.security,
        username=d.username,
        password=settings.smtp_password() if d.username else None,
        timeout=d.timeout.total_seconds(),
        data_timeout=d.data_timeout.total_seconds(),
        validate_certs=d.validate_certs,
        max_per_connection=d.max_per_connection,
    )


def options(settings: Settings) -> Options:
    return Options(
        sender=settings.delivery.sender,
        site_name=settings.site_name,
        lookback=settings.lookback,
        max_late=settings.max_late,
        max_attempts=settings.delivery.max_attempts,
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
    store = Store(settings.state)
    deps = Deps(
        store=store,
        source=make_source(settings),
        mailer=make_mailer(settings),
        subscribers=subs,
        envs=envs,
        options=options(settings),
        matcher=Matcher.build(subs),
    )
    if register:
        register_subscribers(deps, now=now)
    return deps


async def close(deps: Deps) -> None:
    await deps.mailer.aclose()
    aclose = getattr(deps.source, "aclose", None)
    if aclose is not None:
        await aclose()
    deps.store.close()
