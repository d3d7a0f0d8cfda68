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
from digestd.core.errors import ConfigProblem
from digestd.mail.dkim import check_notes
from digestd.mail.render import check_templates, make_environments
from digestd.rules.subscribers import address_notes, subscriber_address_paths, summarize
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
    for warning in settings.delivery.warnings():
        print(f"  {warning}")
    print(f"subscribers: {settings.subscribers}")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    print("deliverability:")
    for note in notes:
        print(f"  {note}")
    _print_section(
        "addresses:",
        [str(n) for n in _address_notes(config_path(args.config), settings.subscribers)],
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


def _address_notes(config: Path, subscribers: Path) -> list[ConfigProblem]:
    """Single-label domains and IDN rewrites in both files (both loaded fine already)."""
    files = ((config, settings_address_paths), (subscribers, subscriber_address_paths))
    return [
        note
        for path, paths in files
        if path.is_file()
        for note in address_notes(path.read_text(encoding="utf-8"), file=str(path), paths=paths)
    ]


def _pairs(values: object) -> str:
    """A settings section on one line, `key=value`, unset keys left out."""
    if not isinstance(values, dict):
        return str(values)
    return " ".join(f"{k}={v}" for k, v in values.items() if v is not None and v != [])
