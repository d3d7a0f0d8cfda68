"""`digestd unsubscribe | resubscribe | unsuspend EMAIL`: the admin's say over one address."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from digestd.cli.exitcodes import EXIT_OK, EXIT_RUNTIME
from digestd.cli.options import Command, subparser
from digestd.config.settings import Settings
from digestd.service import wiring as app
from digestd.service.clock import utcnow
from digestd.store import open_store

__all__ = [
    "RESUBSCRIBE",
    "UNSUBSCRIBE",
    "UNSUSPEND",
    "add_parsers",
    "cmd_resubscribe",
    "cmd_unsubscribe",
    "cmd_unsuspend",
]

UNSUBSCRIBE = Command(
    "unsubscribe",
    "send EMAIL nothing more (e.g. after a mailto request)",
    "Record that EMAIL receives nothing more. An address in no subscribers file is refused "
    "(a typo would otherwise be recorded silently) unless --force.",
    "digestd unsubscribe alice@example.org",
)
RESUBSCRIBE = Command(
    "resubscribe",
    "lift EMAIL's unsubscribe",
    "Lift EMAIL's unsubscribe: they get mail again from the next digest on.",
    "digestd resubscribe alice@example.org",
)
UNSUSPEND = Command(
    "unsuspend",
    "lift the suspension of EMAIL after repeated hard failures",
    "Lift the suspension of an address that hard-failed suspend_after times in a row; it "
    "gets digests again from its next period.",
    "digestd unsuspend alice@example.org",
)


def add_parsers(sub: Any) -> None:
    unsub = subparser(sub, UNSUBSCRIBE)
    unsub.add_argument("email")
    unsub.add_argument(
        "--force", action="store_true", help="record EMAIL even if no subscribers file has it"
    )
    subparser(sub, RESUBSCRIBE).add_argument("email")
    subparser(sub, UNSUSPEND).add_argument("email")


def cmd_unsubscribe(settings: Settings, args: argparse.Namespace) -> int:
    if not args.force and _unknown(settings, args.email):
        print(
            f"digestd: {args.email} is in no subscribers file ({settings.subscribers});"
            " nothing recorded. Check the spelling, or use --force to record it anyway.",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    with open_store(settings.state, password=settings.state_secret()) as store:
        new = store.subscribers.suppress(args.email, at=utcnow(), via="admin")
    print(f"{args.email} " + ("will receive nothing more" if new else "was already unsubscribed"))
    return EXIT_OK


def _unknown(settings: Settings, email: str) -> bool:
    return app.load_subscriber_file(settings.subscribers).by_email(email) is None


def cmd_resubscribe(settings: Settings, args: argparse.Namespace) -> int:
    with open_store(settings.state, password=settings.state_secret()) as store:
        lifted = store.subscribers.unsuppress(args.email, at=utcnow())
    if not lifted:
        print(f"digestd: {args.email} is not unsubscribed", file=sys.stderr)
        return EXIT_RUNTIME
    print(
        f"{args.email} receives mail again from the next digest on"
        " (unsubscribe links in earlier mails no longer act)"
    )
    return 0


def cmd_unsuspend(settings: Settings, args: argparse.Namespace) -> int:
    with open_store(settings.state, password=settings.state_secret()) as store:
        lifted = store.subscribers.unsuspend(args.email)
    if lifted is None or lifted.suspended_at is None:
        print(f"digestd: {args.email} is not suspended", file=sys.stderr)
        return EXIT_RUNTIME
    print(
        f"{lifted.email}: suspension lifted (was suspended after {lifted.failures} hard failures;"
        f" last reply: {lifted.last_code or ''} {lifted.last_reply or ''})".replace("  ", " ")
    )
    return 0
