"""What every subcommand shares: its help record, the global options (accepted before and after
the subcommand), and where the settings file is."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digestd.cli.exitcodes import EXIT_CODES
from digestd.config.settings import DEFAULT_CONFIG

__all__ = ["Command", "config_path", "global_options", "subparser"]


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand's help: a line for the list, a description and an example for its --help."""

    name: str
    summary: str
    description: str
    example: str


def global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options accepted before and after the subcommand; only the top level sets defaults,
    so an option given after the subcommand is not reset by the subparser's default."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--config",
        type=Path,
        default=default(None),
        help=f"settings file (default: $DIGESTD_CONFIG, else {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--log-level", default=default("info"), choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default=default("text"), choices=["text", "json"])
    parser.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks of errors"
    )


def subparser(sub: Any, info: Command, *, name: str | None = None) -> argparse.ArgumentParser:
    """The subcommand's parser, its help from `info`; `name` when it is an action of a group."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name or info.name,
        help=info.summary,
        description=info.description,
        epilog=f"example:\n  {info.example}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    global_options(parser, defaults=False)
    return parser


def config_path(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    env = os.environ.get("DIGESTD_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG
