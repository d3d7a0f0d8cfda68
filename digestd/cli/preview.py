"""`digestd preview EMAIL`: render what EMAIL would get now; queues, marks and sends nothing."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import webbrowser
from pathlib import Path
from typing import Any

from digestd import pipeline
from digestd.cli.exitcodes import EXIT_OK, EXIT_RUNTIME
from digestd.cli.options import Command, subparser
from digestd.config.settings import Settings
from digestd.core.addresses import address_key
from digestd.core.model import Digest, Rendered
from digestd.service import wiring as app
from digestd.service.clock import utcnow
from digestd.store import open_store

__all__ = ["PREVIEW", "add_parser", "cmd_preview"]

PREVIEW = Command(
    "preview",
    "render what EMAIL would get now; sends nothing",
    "Render the digest EMAIL would get now from the papers already stored; queues, marks "
    "and sends nothing. --poll polls the sources first (storing papers, sending nothing).",
    "digestd preview --poll alice@example.org --out /tmp/alice.html",
)


def add_parser(sub: Any) -> None:
    parser = subparser(sub, PREVIEW)
    parser.add_argument("email")
    parser.add_argument("--out", type=Path, help="write the HTML there (default: text to stdout)")
    parser.add_argument(
        "--open", action="store_true", help="write the HTML and open it in the local browser"
    )
    parser.add_argument(
        "--poll", action="store_true", help="poll the sources first (stores papers, sends nothing)"
    )


def cmd_preview(settings: Settings, args: argparse.Namespace) -> int:
    subs = app.load_subscriber_file(settings.subscribers)
    if subs.by_email(args.email) is None:
        print(f"digestd: {args.email} is not in {settings.subscribers}", file=sys.stderr)
        return EXIT_RUNTIME
    if not args.poll and isinstance(settings.state, Path) and not settings.state.exists():
        # A fresh install: opening the store would create it; there is nothing to show anyway.
        print(_empty_store_hint(settings, args.email), file=sys.stderr)
        return EXIT_OK
    deps = app.open_deps(settings, now=utcnow(), subscribers=subs, register=False)
    result = asyncio.run(_preview(deps, args.email, poll=args.poll))
    if result is None:
        return EXIT_RUNTIME
    digest, rendered = result
    for note in _audience_notes(settings, args.email):
        print(note, file=sys.stderr)
    out = args.out or (_preview_file() if args.open else None)
    if out:
        out.write_text(rendered.html, encoding="utf-8")
        print(f"{len(digest.matches)} paper(s), {digest.more} more; HTML written to {out}")
        if args.open and not _open_in_browser(out):
            print(f"no local browser found; open {out} yourself")
    else:
        print(f"Subject: {rendered.subject}\n\n{rendered.text}")
    return EXIT_OK


async def _preview(
    deps: pipeline.Deps, email: str, *, poll: bool
) -> tuple[Digest, Rendered] | None:
    """Poll first when asked (alerts are queued for the daemon, nothing is sent), then render."""
    try:
        if poll:
            report = await pipeline.ingest(deps, now=utcnow())
            if not report.ok:
                print(f"digestd: the poll failed: {report.error}", file=sys.stderr)
        if deps.store.papers.count() == 0:
            print(_empty_store_hint(None, email), file=sys.stderr)
        return pipeline.preview(deps, email, now=utcnow())
    finally:
        await app.close(deps)


def _empty_store_hint(settings: Settings | None, email: str) -> str:
    where = f" ({settings.state} does not exist yet)" if settings else ""
    return (
        f"digestd: the store is empty{where}: preview shows stored papers and never polls."
        f" Fill it with `digestd preview --poll {email}` (polls, sends nothing)"
        " or `digestd run --once` (polls and sends)."
    )


def _audience_notes(settings: Settings, email: str) -> list[str]:
    """Why EMAIL would get nothing now, whatever the preview shows."""
    with open_store(settings.state, password=settings.state_secret()) as store:
        suppressed = store.subscribers.is_suppressed(email)
        suspended = [
            s
            for s in store.subscribers.suspensions()
            if s.email == address_key(email) and s.suspended_at
        ]
    notes = []
    if suppressed:
        notes.append(
            f"digestd: note: {email} is unsubscribed and gets nothing;"
            f" `digestd resubscribe {email}` lifts it"
        )
    if suspended:
        notes.append(
            f"digestd: note: {email} is suspended after {suspended[0].failures} hard failures"
            f" and gets nothing; `digestd unsuspend {email}` lifts it"
        )
    return notes


def _preview_file() -> Path:
    handle, name = tempfile.mkstemp(prefix="digestd-preview-", suffix=".html")
    os.close(handle)
    return Path(name)


def _open_in_browser(path: Path) -> bool:
    try:
        return webbrowser.open(path.resolve().as_uri())
    except webbrowser.Error:
        return False
