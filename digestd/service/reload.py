"""Live reload: read and validate both YAML files (exactly as `digestd check` does), then swap the
new configuration into the running pipeline's `Deps`.

Validation happens first and touches nothing, so a bad file leaves the daemon on the old one.
Removed subscribers get nothing more: compose only walks the current set, and their unsent mail is
expired here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from digestd import pipeline
from digestd.config.settings import Settings, load_settings
from digestd.core.model import SubscriberSet
from digestd.mail.render import Environments, check_templates, make_environments
from digestd.pipeline import Deps
from digestd.service import wiring as app

__all__ = ["Changes", "Config", "apply_config", "load_config"]

log = logging.getLogger(__name__)

# Settings a running daemon cannot take over: they need a restart (logged, not applied).
_RESTART_ONLY = ("state", "http", "bounces")  # bounces: the inboxes are opened at start-up


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    settings: Settings
    subscribers: SubscriberSet
    envs: Environments

    def stamp(self) -> tuple[tuple[int, int], ...]:
        """(mtime, size) of both files: a change means "reload"; a missing file reads (0, 0)."""
        return tuple(_stat(p) for p in (self.path, self.settings.subscribers))


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


def load_config(path: Path) -> Config:
    """Both files and the templates, validated.

    :raises ConfigError: with every problem as FILE:LINE:COLUMN: field: message.
    """
    settings = load_settings(path)
    subscribers = app.load_subscriber_file(settings.subscribers)
    app.check_signup(path, settings, subscribers)
    envs = make_environments(settings.templates)
    check_templates(envs)
    return Config(path, settings, subscribers, envs)


@dataclass(frozen=True, slots=True)
class Changes:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    expired: int = 0  # unsent messages of removed subscribers
    mailer: bool = False  # the delivery settings changed: a new mailer was made
    restart_needed: tuple[str, ...] = ()


async def apply_config(deps: Deps, old: Config, new: Config, *, now: datetime) -> Changes:
    """Swap `new` in. Call it with the work lock held: no message may be in flight."""
    before = {pipeline.key(s): s for s in old.subscribers.subscribers}
    after = {pipeline.key(s): s for s in new.subscribers.subscribers}
    deps.envs = new.envs
    deps.options = app.options(new.settings)
    mailer = new.settings.delivery != old.settings.delivery
    if mailer:
        await deps.mailer.aclose()
        deps.mailer = app.make_mailer(new.settings)
    if new.settings.all_sources() != old.settings.all_sources():
        for source in deps.all_sources():
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()
        deps.sources = tuple(app.make_sources(new.settings, cache=deps.store.polls))
        deps.source = deps.sources[0]
    pipeline.swap_subscribers(deps, new.subscribers, now=now)
    served = app.served_keys(deps)  # web readers stay served, pending ones get their mail
    expired = deps.store.outbox.expire_except(served, at=now, reason="subscriber removed")
    restart = tuple(
        name for name in _RESTART_ONLY if getattr(new.settings, name) != getattr(old.settings, name)
    )
    return Changes(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        changed=tuple(sorted(k for k in after.keys() & before.keys() if after[k] != before[k])),
        expired=expired,
        mailer=mailer,
        restart_needed=restart,
    )
