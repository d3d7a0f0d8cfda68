"""The command line: the parser, global options anywhere, dispatch to a command, exit codes.

Thin: each command lives in its own module with its help text (run, check, preview, status,
addresses, dkim); this one parses, sets up logging, and turns every known error into one line and
its exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from digestd import __version__
from digestd.cli import addresses, check, dkim, migrate, preview, run, status
from digestd.cli.exitcodes import EXIT_CODES, EXIT_CONFIG, EXIT_LOCKED, EXIT_RUNTIME
from digestd.cli.options import config_path, global_options
from digestd.config.settings import Settings, load_settings
from digestd.core.errors import ConfigError, DigestdError
from digestd.service.logs import setup_logging
from digestd.store import explain_error, store_errors
from digestd.store.runlock import StateLocked

__all__ = ["build_parser", "main"]

# The commands that run on loaded settings, by name (`dkim` runs before they load).
COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "run": run.cmd_run,
    "check": check.cmd_check,
    "preview": preview.cmd_preview,
    "status": status.cmd_status,
    "unsubscribe": addresses.cmd_unsubscribe,
    "resubscribe": addresses.cmd_resubscribe,
    "unsuspend": addresses.cmd_unsuspend,
    "migrate": migrate.cmd_migrate,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digestd",
        description="Mail every subscriber their own digest of new research papers.",
        epilog="global options go before or after the command.\n\n"
        "example:\n  digestd check --config /etc/digestd/digestd.yaml\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"digestd {__version__}")
    global_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In the order `digestd --help` lists them.
    for add in (
        run.add_parser,
        check.add_parser,
        preview.add_parser,
        status.add_parser,
        addresses.add_parsers,
        migrate.add_parser,
        dkim.add_parser,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, fmt=args.log_format)
    where = _StatePath()  # filled once the settings are read: SQLite errors name the file
    try:
        return _dispatch(args, where)
    except StateLocked as exc:
        print(f"digestd: {exc} ({exc.hint})", file=sys.stderr)
        return EXIT_LOCKED
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"digestd: {len(exc.problems)} error(s); {exc.hint}", file=sys.stderr)
        return EXIT_CONFIG
    except DigestdError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"digestd: {exc}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        return EXIT_RUNTIME
    except store_errors() as exc:
        # Read-only, full disk, missing directory, server unreachable: one line that says what
        # to do, no traceback, no password.
        if args.debug:
            traceback.print_exc()
        print(f"digestd: {explain_error(where.path, exc)}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `digestd status | head`: the reader left; say nothing more (Python's own advice).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


@dataclass(slots=True)
class _StatePath:
    path: Path | str = Path("the state file")


def _dispatch(args: argparse.Namespace, where: _StatePath) -> int:
    if args.command == "dkim":
        return dkim.cmd_dkim_keygen(args)  # needs the settings only for a default
    settings = load_settings(config_path(args.config))
    where.path = settings.state
    return COMMANDS[args.command](settings, args)
