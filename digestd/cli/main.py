"""The command line: run, run --once, check, preview, status. Thin: it parses, wires, prints, exits."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sqlite3
import sys
import tempfile
import traceback
import webbrowser
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from digestd import __version__, pipeline
from digestd.cli.progress import make_progress
from digestd.config.settings import (
    DEFAULT_CONFIG,
    DkimSettings,
    Settings,
    env_warnings,
    load_settings,
    settings_address_paths,
)
from digestd.core.errors import ConfigError, ConfigProblem, DigestdError
from digestd.core.model import Digest, Rendered
from digestd.core.redact import safe_text
from digestd.deliver.drain import DeliverReport
from digestd.mail.dkim import (
    check_notes,
    dkim_dns_record,
    generate_dkim_key,
    write_private_key,
)
from digestd.mail.render import check_templates, make_environments
from digestd.rules.subscribers import address_notes, subscriber_address_paths, summarize
from digestd.service import reload
from digestd.service import wiring as app
from digestd.service.daemon import run_daemon, utcnow
from digestd.service.health import source_problems
from digestd.service.logs import setup_logging
from digestd.store.runlock import EXIT_LOCKED, StateLocked, run_lock
from digestd.store.sqlite import SourceStatus, Store, StoreStatus, explain, probe

__all__ = ["main"]

log = logging.getLogger("digestd")

# Exit codes, as `digestd --help` lists them. sysexits.h's EX_TEMPFAIL tells cron and systemd
# "try again later": mail is still owed, but nothing is lost.
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_TEMPFAIL = 75

EXIT_CODES = """\
exit codes:
  0   done (run --once: every message sent)
  1   an error, e.g. a poll or a message failed (run --once), an address is unknown
  2   the settings, subscribers or templates are invalid
  73  run: another digestd run holds the state file (one pipeline per state file)
  75  run --once: messages remain queued or deferred; the next run or the daemon retries them
"""


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand's help: a line for the list, a description and an example for its --help."""

    name: str
    summary: str
    description: str
    example: str


COMMAND_HELP = {
    c.name: c
    for c in (
        Command(
            "run",
            "run the daemon in the foreground (or once, with --once)",
            "Poll every source on its own interval, send each subscriber's digest at their cron "
            "time and retry deferred mail, until SIGTERM; SIGHUP reloads both files. With --once: "
            "poll, queue and send everything owed now, then exit. One run per state file: while "
            f"one runs, another `run` or `run --once` on the same file exits {EXIT_LOCKED}.",
            "digestd run --once --config /etc/digestd/digestd.yaml",
        ),
        Command(
            "check",
            "validate the settings, subscribers and templates; exit 2 on errors",
            "Validate both YAML files and the templates, show the settings in force (secrets "
            "redacted) and what an admin should know before mail goes out.",
            "digestd check --config /etc/digestd/digestd.yaml",
        ),
        Command(
            "preview",
            "render what EMAIL would get now; sends nothing",
            "Render the digest EMAIL would get now from the papers already stored; queues, marks "
            "and sends nothing. --poll polls the sources first (storing papers, sending nothing).",
            "digestd preview --poll alice@example.org --out /tmp/alice.html",
        ),
        Command(
            "status",
            "last poll, papers stored, messages by state, problems, suspended and unsubscribed",
            "Show each source's last successful poll and error, papers stored, messages by state, "
            "problems with their reasons, suspended and unsubscribed addresses.",
            "digestd status",
        ),
        Command(
            "unsubscribe",
            "send EMAIL nothing more (e.g. after a mailto request)",
            "Record that EMAIL receives nothing more. An address in no subscribers file is refused "
            "(a typo would otherwise be recorded silently) unless --force.",
            "digestd unsubscribe alice@example.org",
        ),
        Command(
            "resubscribe",
            "lift EMAIL's unsubscribe",
            "Lift EMAIL's unsubscribe: they get mail again from the next digest on.",
            "digestd resubscribe alice@example.org",
        ),
        Command(
            "unsuspend",
            "lift the suspension of EMAIL after repeated hard failures",
            "Lift the suspension of an address that hard-failed suspend_after times in a row; it "
            "gets digests again from its next period.",
            "digestd unsuspend alice@example.org",
        ),
        Command(
            "dkim keygen",
            "make a DKIM key and print the DNS record to publish",
            "Write a new RSA private key (2048 bits unless --bits; mode 0600; an existing file "
            "is never overwritten) and print the TXT record to publish and the settings to add.",
            "digestd dkim keygen --selector digest2026 --domain example.org --out dkim.pem",
        ),
    )
}


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
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


def _subparser(sub: Any, name: str, *, key: str | None = None) -> argparse.ArgumentParser:
    info = COMMAND_HELP[key or name]
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=info.summary,
        description=info.description,
        epilog=f"example:\n  {info.example}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, defaults=False)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digestd",
        description="Mail every subscriber their own digest of new research papers.",
        epilog="global options go before or after the command.\n\n"
        "example:\n  digestd check --config /etc/digestd/digestd.yaml\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"digestd {__version__}")
    _global_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = _subparser(sub, "run")
    run.add_argument(
        "--once",
        action="store_true",
        help="poll once, send alerts and every pending digest now (schedules ignored), then exit",
    )
    _subparser(sub, "check")
    preview = _subparser(sub, "preview")
    preview.add_argument("email")
    preview.add_argument("--out", type=Path, help="write the HTML there (default: text to stdout)")
    preview.add_argument(
        "--open", action="store_true", help="write the HTML and open it in the local browser"
    )
    preview.add_argument(
        "--poll", action="store_true", help="poll the sources first (stores papers, sends nothing)"
    )
    _subparser(sub, "status")
    unsub = _subparser(sub, "unsubscribe")
    unsub.add_argument("email")
    unsub.add_argument(
        "--force", action="store_true", help="record EMAIL even if no subscribers file has it"
    )
    _subparser(sub, "resubscribe").add_argument("email")
    _subparser(sub, "unsuspend").add_argument("email")
    _dkim_parser(sub)
    return parser


def _dkim_parser(sub: Any) -> None:
    dkim = sub.add_parser(
        "dkim",
        help="DKIM keys: `digestd dkim keygen`",
        description="DKIM keys for signing the mail digestd sends.",
        epilog=f"example:\n  {COMMAND_HELP['dkim keygen'].example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(dkim, defaults=False)
    action = dkim.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    keygen = _subparser(action, "keygen", key="dkim keygen")
    keygen.prog = "digestd dkim keygen"
    keygen.add_argument("--selector", required=True, help="the DNS label, e.g. digest2026")
    keygen.add_argument(
        "--domain", help="the signing domain (default: the domain of delivery.from)"
    )
    keygen.add_argument(
        "--out", type=Path, help="the key file (default: SELECTOR.dkim.pem beside the settings)"
    )
    keygen.add_argument("--bits", type=int, default=2048, choices=[1024, 2048, 3072, 4096])


def config_path(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    env = os.environ.get("DIGESTD_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


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
    except sqlite3.DatabaseError as exc:
        # Read-only, full disk, missing directory: one line that says what to do, no traceback.
        if args.debug:
            traceback.print_exc()
        print(f"digestd: {explain(where.path, exc)}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `digestd status | head`: the reader left; say nothing more (Python's own advice).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


@dataclass(slots=True)
class _StatePath:
    path: Path = Path("the state file")


def _dispatch(args: argparse.Namespace, where: _StatePath) -> int:
    if args.command == "dkim":
        return cmd_dkim_keygen(args)  # needs the settings only for a default
    settings = load_settings(config_path(args.config))
    where.path = settings.state
    return COMMANDS[args.command](settings, args)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    with run_lock(settings.state):  # one pipeline per state file, released however we exit
        return _run(settings, args)


def _run(settings: Settings, args: argparse.Namespace) -> int:
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
        pending = deps.store.pending_count()
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
    return _once_exit(ingest, sent, pending)


def _once_exit(ingest: pipeline.IngestReport, sent: DeliverReport, pending: int) -> int:
    """1 when something failed for good, 75 when mail is still owed, else 0 (see EXIT_CODES)."""
    if not ingest.ok:
        print(f"digestd: the poll failed: {ingest.error}", file=sys.stderr)
    if sent.failed:
        print(
            f"digestd: {sent.failed} message(s) failed; `digestd status` says why", file=sys.stderr
        )
    if not ingest.ok or sent.failed:
        return EXIT_RUNTIME
    if pending:
        print(
            f"digestd: {pending} message(s) remain queued or deferred; the daemon or the next"
            " `run --once` retries them",
            file=sys.stderr,
        )
        return EXIT_TEMPFAIL
    return EXIT_OK


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
    print(f"state:       {settings.state} ({probe(settings.state)})")  # a run must write there
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


def cmd_preview(settings: Settings, args: argparse.Namespace) -> int:
    subs = app.load_subscriber_file(settings.subscribers)
    if subs.by_email(args.email) is None:
        print(f"digestd: {args.email} is not in {settings.subscribers}", file=sys.stderr)
        return EXIT_RUNTIME
    if not args.poll and not settings.state.exists():
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
        if deps.store.paper_count() == 0:
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
    with Store(settings.state) as store:
        suppressed = store.is_suppressed(email)
        suspended = [s for s in store.suspensions() if s.email == email.lower() and s.suspended_at]
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
    return EXIT_OK


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    domain = args.domain
    if domain is None:
        domain = load_settings(config_path(args.config)).delivery.envelope_from.rpartition("@")[2]
    out = args.out or config_path(args.config).parent / f"{args.selector}.dkim.pem"
    try:
        config = DkimSettings(selector=args.selector, domain=domain, key_file=out)
    except ValidationError as exc:
        reasons = "; ".join(f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        print(f"digestd: {reasons}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        write_private_key(out, generate_dkim_key(args.bits))
    except FileExistsError:
        print(f"digestd: {out} exists; it is never overwritten (choose --out)", file=sys.stderr)
        return EXIT_RUNTIME
    print(
        f"private key written to {out} (mode 0600: only its owner, who must run digestd, reads it)"
    )
    print("publish this DNS record:")
    print(f"  {dkim_dns_record(config)}")
    print("then add to digestd.yaml under delivery:")
    print(f"  dkim: {{selector: {config.selector}, domain: {config.domain}, key_file: {out}}}")
    return EXIT_OK


def cmd_unsubscribe(settings: Settings, args: argparse.Namespace) -> int:
    if not args.force and _unknown(settings, args.email):
        print(
            f"digestd: {args.email} is in no subscribers file ({settings.subscribers});"
            " nothing recorded. Check the spelling, or use --force to record it anyway.",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    with Store(settings.state) as store:
        new = store.suppress(args.email, at=utcnow(), via="admin")
    print(f"{args.email} " + ("will receive nothing more" if new else "was already unsubscribed"))
    return EXIT_OK


def _unknown(settings: Settings, email: str) -> bool:
    return app.load_subscriber_file(settings.subscribers).by_email(email) is None


def cmd_resubscribe(settings: Settings, args: argparse.Namespace) -> int:
    with Store(settings.state) as store:
        lifted = store.unsuppress(args.email, at=utcnow())
    if not lifted:
        print(f"digestd: {args.email} is not unsubscribed", file=sys.stderr)
        return EXIT_RUNTIME
    print(
        f"{args.email} receives mail again from the next digest on"
        " (unsubscribe links in earlier mails no longer act)"
    )
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
        lines.append(line + (f"; ERROR {safe_text(s.error)}" if s.error else "; ok"))
    return "\n".join(lines)


def format_status(status: StoreStatus) -> str:
    """The store's state for a person: one fact per line, times in UTC, problems with their reasons."""
    poll = status.last_poll
    last = (
        "never"
        if poll is None
        else f"{_when(poll.at)} ({poll.source}, "
        + (
            f"{poll.n_items} papers, {poll.n_new} new)"
            if poll.ok
            else f"FAILED: {safe_text(poll.error or '')})"  # older rows may hold anything
        )
    )
    states = ", ".join(f"{n} {state}" for state, n in status.outbox.items() if n) or "none"
    failing = source_problems(status.sources)
    lines = [
        f"last poll:   {last}",
        f"last ok:     {_when(status.last_success_at)}",
        f"papers:      {status.papers}",
        f"subscribers: {status.subscribers}",
        f"messages:    {states}",
        f"problems:    {len(failing) + len(status.problems)}",
        *("  " + line for line in failing),
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
