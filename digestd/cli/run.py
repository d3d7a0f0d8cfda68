"""`digestd run`: the daemon in the foreground, or `run --once` and its exit code."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from digestd import pipeline
from digestd.cli.exitcodes import EXIT_OK, EXIT_RUNTIME, EXIT_TEMPFAIL
from digestd.cli.options import Command, config_path, subparser
from digestd.cli.progress import make_progress
from digestd.config.settings import Settings
from digestd.deliver.drain import DeliverReport
from digestd.pipeline.bounces import BounceTally
from digestd.pipeline.feedback import refresh_relevance
from digestd.service import reload
from digestd.service import wiring as app
from digestd.service.bounces import BounceReader
from digestd.service.clock import utcnow
from digestd.service.daemon import run_daemon
from digestd.store.runlock import EXIT_LOCKED, run_lock

__all__ = ["RUN", "add_parser", "cmd_run"]

RUN = Command(
    "run",
    "run the daemon in the foreground (or once, with --once)",
    "Poll every source on its own interval, send each subscriber's digest at their cron "
    "time and retry deferred mail, until SIGTERM; SIGHUP reloads both files. With --once: "
    "poll, queue and send everything owed now, then exit. One run per state file: while "
    f"one runs, another `run` or `run --once` on the same file exits {EXIT_LOCKED}.",
    "digestd run --once --config /etc/digestd/digestd.yaml",
)


def add_parser(sub: Any) -> None:
    parser = subparser(sub, RUN)
    parser.add_argument(
        "--once",
        action="store_true",
        help="poll once, send alerts and every pending digest now (schedules ignored), then exit",
    )


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
        # On a shared database other instances are sending their claims: only ours are taken.
        deps.store.outbox.recover(now=now, by=deps.options.instance if deps.store.shared else None)
        bounced = await _read_bounces(deps, settings)  # before composing: suspensions count now
        owed = pipeline.queue_owed_alerts(deps, now=now)  # a poll before a crash still owes them
        ingest = await pipeline.ingest(deps, now=now)
        await refresh_relevance(deps, now=now)  # the readers' latest ratings rank this digest
        composed = pipeline.compose(deps, now=now, once=True)
        sent = await pipeline.deliver_due(deps, now=utcnow(), clock=utcnow)
        pending = deps.store.outbox.pending_count()
    finally:
        progress.close()
        await app.close(deps)
    if bounced is not None:
        print(
            f"bounces: read {bounced.read} ({bounced.permanent} permanent, {bounced.temporary}"
            f" temporary, {bounced.complaint} complaints, {bounced.ignored} ignored)"
        )
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


async def _read_bounces(deps: pipeline.Deps, settings: Settings) -> BounceTally | None:
    if not settings.bounces.enabled:
        return None
    reader = BounceReader(settings)
    try:
        return await reader.read(deps, now=utcnow())
    finally:
        reader.close()


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
