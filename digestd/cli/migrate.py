"""`digestd migrate --to postgresql://…`: copy the SQLite state file into an empty PostgreSQL
database, verified table by table; the file keeps its data (brought to this schema first)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from digestd.cli.exitcodes import EXIT_OK
from digestd.cli.options import Command, subparser
from digestd.config.settings import Settings
from digestd.store import is_postgres, state_label
from digestd.store.runlock import run_lock
from digestd.store.transfer import MigrateRefused, copy_state

__all__ = ["MIGRATE", "add_parser", "cmd_migrate"]

MIGRATE = Command(
    "migrate",
    "copy the SQLite state file into an empty PostgreSQL database",
    "Copy every table of the state file (papers, polls, ledger, outbox with message bytes, "
    "unsubscribes, suspensions, web copies, alerts, the server secret) into an EMPTY PostgreSQL "
    "database, in one transaction, then compare row counts and checksums of every table. A "
    "non-empty target is refused; any difference keeps nothing. The password comes from "
    "DIGESTD_STATE_PASSWORD, state_password_file or PGPASSWORD, never from the command line. "
    "Stop digestd first (the state file's run lock is taken).",
    "digestd migrate --to postgresql://digestd@db.example.org/digestd",
)


def add_parser(sub: Any) -> None:
    parser = subparser(sub, MIGRATE)
    parser.add_argument(
        "--to", required=True, metavar="URL", help="the empty database: postgresql://USER@HOST/DB"
    )


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    target = str(args.to)
    if not is_postgres(target):
        raise MigrateRefused(f"--to must be a postgresql:// URL, not {state_label(target)!r}")
    if not isinstance(settings.state, Path):
        raise MigrateRefused(f"the state is already a database ({state_label(settings.state)})")
    with run_lock(settings.state):  # a running daemon would write on behind the copy
        copied = copy_state(settings.state, target, password=settings.state_secret())
    print(f"from:     {settings.state}")
    print(f"to:       {state_label(target)}")
    width = max(len(t.table) for t in copied)
    for table in copied:
        print(f"  {table.table:<{width}}  {table.rows:>9} rows  sha256 {table.checksum}")
    total = sum(t.rows for t in copied)
    print(f"verified: {len(copied)} tables, {total} rows: counts and checksums match")
    print(f"next:     set `state: {state_label(target)}` in the settings file and start digestd")
    return EXIT_OK
