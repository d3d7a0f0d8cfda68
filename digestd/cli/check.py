"""`digestd check`: validate both files and the templates, show what is in force and what an admin
should know before mail goes out."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from digestd.cli.options import Command, config_path, subparser
from digestd.config.settings import Settings, env_warnings, settings_address_paths
from digestd.core.errors import ConfigError, ConfigProblem
from digestd.core.model import SubscriberSet
from digestd.mail.dkim import check_notes
from digestd.mail.render import check_templates, make_environments
from digestd.relevance.dense import MISSING, available
from digestd.relevance.likesfile import read_like_file
from digestd.rules.subscribers import (
    address_notes,
    may_have_address_notes,
    subscriber_address_paths,
    summarize,
)
from digestd.service import wiring as app
from digestd.store import probe_state, state_label

__all__ = ["CHECK", "add_parser", "cmd_check"]

CHECK = Command(
    "check",
    "validate the settings, subscribers and templates; exit 2 on errors",
    "Validate both YAML files and the templates, show the settings in force (secrets "
    "redacted) and what an admin should know before mail goes out.",
    "digestd check --config /etc/digestd/digestd.yaml",
)


def add_parser(sub: Any) -> None:
    subparser(sub, CHECK)


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    subs = app.load_subscriber_file(settings.subscribers)
    app.check_signup(config_path(args.config), settings, subs)
    if problems := _like_problems(subs, settings.subscribers.parent):
        raise ConfigError(problems)
    check_templates(make_environments(settings.templates))
    notes = check_notes(settings)
    summary = summarize(subs)
    print(f"settings:    {config_path(args.config)}")
    for section, values in settings.in_force().items():
        if isinstance(values, list):
            print(f"  {section}:")
            print("\n".join(f"    - {_pairs(v)}" for v in values))
        else:
            print(f"  {section}: {_pairs(values)}")
    for warning in [
        *settings.delivery.warnings(),
        *settings.bounce_warnings(),
        *relevance_warnings(settings),
    ]:
        print(f"  {warning}")
    print(f"subscribers: {settings.subscribers}")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    print("deliverability:")
    for note in notes:
        print(f"  {note}")
    _print_section(
        "addresses:",
        [str(n) for n in _address_notes(config_path(args.config), settings.subscribers, subs)],
    )
    _print_section("environment:", env_warnings(os.environ))
    found = probe_state(settings.state, password=settings.state_secret())  # a run must write there
    print(f"state:       {state_label(settings.state)} ({found})")
    print("ok")
    return 0


def _print_section(title: str, lines: Sequence[str]) -> None:
    """A titled block of `check`'s output, left out when it has nothing to say."""
    if lines:
        print(title)
        print("\n".join(f"  {line}" for line in lines))


def _address_notes(config: Path, subscribers: Path, subs: SubscriberSet) -> list[ConfigProblem]:
    """Single-label domains and IDN rewrites in both files (both loaded fine already); the
    subscribers file is read again only when the loaded set says it may have one."""
    notes: list[ConfigProblem] = []
    for path, paths in ((config, settings_address_paths), (subscribers, subscriber_address_paths)):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if path == subscribers and not may_have_address_notes(text, subs):
            continue
        notes += address_notes(text, file=str(path), paths=paths)
    return notes


def _like_problems(subs: SubscriberSet, base: Path) -> list[ConfigProblem]:
    """Every `like:` file read as the daemon will read it: a broken one is an error here."""
    files = sorted({name for sub in subs.subscribers for name in sub.like_files})
    return [p for name in files for p in read_like_file(name, base=base).problems]


def relevance_warnings(settings: Settings) -> list[str]:
    """The embeddings backend chosen but not installed: the daemon uses TF-IDF, the admin is told."""
    if settings.relevance.backend == "embeddings" and not available():
        return [f"! {MISSING}"]
    return []


def _pairs(values: object) -> str:
    """A settings section on one line, `key=value`, unset keys left out."""
    if not isinstance(values, dict):
        return str(values)
    return " ".join(f"{k}={v}" for k, v in values.items() if v is not None and v != [])
