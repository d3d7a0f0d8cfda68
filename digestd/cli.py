"""The command line: run, run --once, check, preview, status. Thin: it parses, wires, prints, exits."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import traceback
import webbrowser
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from digestd import __version__, app, pipeline, reload
from digestd.daemon import run_daemon, utcnow
from digestd.deliverability import check_notes
from digestd.errors import ConfigError, ConfigProblem, DigestdError
from digestd.logs import setup_logging
from digestd.progress import make_progress
from digestd.render import check_templates, make_environments
from digestd.rules import address_notes, subscriber_address_paths, summarize
from digestd.settings import DEFAULT_CONFIG, Settings, load_settings, settings_address_paths
from digestd.store import SourceStatus, Store, StoreStatus

__all__ = ["main"]

log = logging.getLogger("digestd")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digestd", description="Mail every subscriber their own digest of new research papers."
    )
    parser.add_argument("--version", action="version", version=f"digestd {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"settings file (default: $DIGESTD_CONFIG, else {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon in the foreground (or once, with --once)")
    run.add_argument(
        "--once",
        action="store_true",
        help="poll once, send alerts and every pending digest now (schedules ignored), then exit",
    )
    sub.add_parser(
        "check", help="validate the settings, subscribers and templates; exit 2 on errors"
    )
    preview = sub.add_parser("preview", help="render what EMAIL would get now; sends nothing")
    preview.add_argument("email")
    preview.add_argument("--out", type=Path, help="write the HTML there (default: text to stdout)")
    preview.add_argument(
        "--open", action="store_true", help="write the HTML and open it in the local browser"
    )
    sub.add_parser(
        "status",
        help="last poll, papers stored, messages by state, problems, suspended and unsubscribed",
    )
    unsub = sub.add_parser(
        "unsubscribe", help="send EMAIL nothing more (e.g. after a mailto request)"
    )
    unsub.add_argument("email")
    resub = sub.add_parser("resubscribe", help="lift EMAIL's unsubscribe")
    resub.add_argument("email")
    unsuspend = sub.add_parser(
        "unsuspend", help="lift the suspension of EMAIL after repeated hard failures"
    )
    unsuspend.add_argument("email")
    return parser


def config_path(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    env = os.environ.get("DIGESTD_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, fmt=args.log_format)
    try:
        settings = load_settings(config_path(args.config))
        return COMMANDS[args.command](settings, args)
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
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `digestd status | head`: the reader left; say nothing more (Python's own advice).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    deps = app.open_deps(settings, now=utcnow())
    if args.once:
        return asyncio.run(_run_once(deps, settings))
    config = reload.Config(config_path(args.config), settings, deps.subscribers, deps.envs)
    intervals = {src.key: src.poll_every for src in settings.all_sources()}
    return run_daemon(
        deps,
        poll_every=settings.all_sources()[0].poll_every,
        closer=app.close,
        config=config,
        intervals=intervals,
    )


async def _run_once(deps: pipeline.Deps, settings: Settings) -> int:
    progress = deps.observer = make_progress(sys.stdout)
    try:
        now = utcnow()
        deps.store.recover(now=now)
        owed = pipeline.queue_owed_alerts(deps, now=now)  # a poll before a crash still owes them
        ingest = await pipeline.ingest(deps, now=now)
        composed = pipeline.compose(deps, now=now, once=True)
        sent = await pipeline.deliver_due(deps, now=utcnow(), clock=utcnow)
    finally:
        progress.close()
        await app.close(deps)
    print(
        f"polled {ingest.n_items} papers ({ingest.n_new} new); "
        f"queued {owed + ingest.n_alerts} alert(s) and {composed.n_queued} digest(s); "
        f"sent {sent.sent}, deferred {sent.deferred}, failed {sent.failed}"
    )
    if settings.delivery.kind == "maildir" and sent.sent:
        print(
            f"mail delivered to the Maildir {settings.delivery.path} (new/ holds one file a message)"
        )
    if not ingest.ok:
        print(f"digestd: the poll failed: {ingest.error}", file=sys.stderr)
        return EXIT_RUNTIME
    return 0


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    subs = app.load_subscriber_file(settings.subscribers)
    check_templates(make_environments(settings.templates))
    notes = check_notes(settings)
    summary = summarize(subs)
    print(f"settings:    {config_path(args.config)}")
    for section, values in settings.redacted().items():
        if isinstance(values, list):
            print(f"  {section}:")
            print("\n".join(f"    - {_pairs(v)}" for v in values))
        else:
            print(f"  {section}: {_pairs(values)}")
    print(f"subscribers: {settings.subscribers}")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    print("deliverability:")
    for note in notes:
        print(f"  {note}")
    addresses = _address_notes(config_path(args.config), settings.subscribers)
    if addresses:
        print("addresses:")
        print("\n".join(f"  {note}" for note in addresses))
    print("ok")
    return 0


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


def cmd_preview(settings: Settings, args: argparse.Namespace) -> int:
    subs = app.load_subscriber_file(settings.subscribers)
    deps = app.open_deps(settings, now=utcnow(), subscribers=subs, register=False)
    try:
        result = pipeline.preview(deps, args.email, now=utcnow())
    finally:
        asyncio.run(app.close(deps))
    if result is None:
        print(f"digestd: {args.email} is not in {settings.subscribers}", file=sys.stderr)
        return EXIT_RUNTIME
    digest, rendered = result
    out = args.out or (_preview_file() if args.open else None)
    if out:
        out.write_text(rendered.html, encoding="utf-8")
        print(f"{len(digest.matches)} paper(s), {digest.more} more; HTML written to {out}")
        if args.open and not _open_in_browser(out):
            print(f"no local browser found; open {out} yourself")
    else:
        print(f"Subject: {rendered.subject}\n\n{rendered.text}")
    return 0


def _preview_file() -> Path:
    handle, name = tempfile.mkstemp(prefix="digestd-preview-", suffix=".html")
    os.close(handle)
    return Path(name)


def _open_in_browser(path: Path) -> bool:
    try:
        return webbrowser.open(path.resolve().as_uri())
    except webbrowser.Error:
        return False


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    names = [src.key for src in settings.all_sources()]
    with Store(settings.state) as store:
        status = replace(store.status(), sources=store.source_status(names))
        suppressed = store.suppressions()
    print(f"state:       {settings.state}")
    print(format_status(status))
    print(format_sources(status.sources))
    print(f"unsubscribed: {len(suppressed)}")
    for s in suppressed:
        print(f"  {s.email} since {s.at.isoformat(timespec='seconds')} via {s.via}")
    return 0


def cmd_unsubscribe(settings: Settings, args: argparse.Namespace) -> int:
    with Store(settings.state) as store:
        new = store.suppress(args.email, at=utcnow(), via="admin")
    print(f"{args.email} " + ("will receive nothing more" if new else "was already unsubscribed"))
    return 0


def cmd_resubscribe(settings: Settings, args: argparse.Namespace) -> int:
    with Store(settings.state) as store:
        lifted = store.unsuppress(args.email)
    if not lifted:
        print(f"digestd: {args.email} is not unsubscribed", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"{args.email} receives mail again from the next digest on")
    return 0


def cmd_unsuspend(settings: Settings, args: argparse.Namespace) -> int:
    with Store(settings.state) as store:
        lifted = store.unsuspend(args.email)
    if lifted is None or lifted.suspended_at is None:
        print(f"digestd: {args.email} is not suspended", file=sys.stderr)
        return EXIT_RUNTIME
    print(
        f"{lifted.email}: suspension lifted (was suspended after {lifted.failures} hard failures;"
        f" last reply: {lifted.last_code or ''} {lifted.last_reply or ''})".replace("  ", " ")
    )
    return 0


def format_sources(sources: Sequence[SourceStatus]) -> str:
    """One line per source: when it last worked, when it last brought a new paper, what fails."""

    def when(moment: datetime | None) -> str:
        return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "never"

    lines = ["sources:"]
    for s in sources:
        line = (
            f"  {s.source}: last successful poll {when(s.last_success_at)};"
            f" last new paper {when(s.last_new_at)}"
        )
        lines.append(line + (f"; ERROR {s.error}" if s.error else "; ok"))
    return "\n".join(lines)


def format_status(status: StoreStatus) -> str:
    """The store's state for a person: one fact per line, times in UTC, problems with their reasons."""
    poll = status.last_poll
    last = (
        "never"
        if poll is None
        else f"{_when(poll.at)} ({poll.source}, "
        + (f"{poll.n_items} papers, {poll.n_new} new)" if poll.ok else f"FAILED: {poll.error})")
    )
    states = ", ".join(f"{n} {state}" for state, n in status.outbox.items() if n) or "none"
    lines = [
        f"last poll:   {last}",
        f"last ok:     {_when(status.last_success_at)}",
        f"papers:      {status.papers}",
        f"subscribers: {status.subscribers}",
        f"messages:    {states}",
        f"problems:    {len(status.problems)}",
        *("  " + _entry(item) for item in status.problems),
        f"suspended:   {len(status.suspended)}",
        *("  " + _entry(item) for item in status.suspended),
    ]
    return "\n".join(lines)


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "never"


def _entry(item: object) -> str:
    """One problem or suspension on one line, `key=value` pairs, times in ISO 8601."""
    return " ".join(
        f"{key}={value.isoformat(timespec='seconds') if isinstance(value, datetime) else value}"
        for key, value in vars_of(item).items()
        if value is not None
    )


def vars_of(obj: object) -> dict[str, object]:
    fields = getattr(obj, "__dataclass_fields__", None)
    if fields is None:
        return {"value": obj}
    return {name: getattr(obj, name) for name in fields}


COMMANDS = {
    "run": cmd_run,
    "check": cmd_check,
    "preview": cmd_preview,
    "status": cmd_status,
    "unsubscribe": cmd_unsubscribe,
    "resubscribe": cmd_resubscribe,
    "unsuspend": cmd_unsuspend,
}
