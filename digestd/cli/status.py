"""`digestd status`: each source's last poll, papers stored, messages by state, problems with
their reasons, suspended and unsubscribed addresses."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from digestd.cli.exitcodes import EXIT_OK
from digestd.cli.options import Command, subparser
from digestd.config.settings import Settings
from digestd.core.redact import safe_text
from digestd.service.clock import utcnow
from digestd.service.health import source_problems
from digestd.store import open_store, state_label
from digestd.store.protocols import InstanceInfo, SourceStatus, StoreStatus

__all__ = [
    "STATUS",
    "add_parser",
    "cmd_status",
    "format_instances",
    "format_sources",
    "format_status",
]

STATUS = Command(
    "status",
    "last poll, papers stored, messages by state, problems, suspended and unsubscribed",
    "Show each source's last successful poll and error, papers stored, messages by state, "
    "problems with their reasons, suspended and unsubscribed addresses.",
    "digestd status",
)


# An instance beats every quarter lease (30 s by default): a minute and a half without means gone.
_SILENT = timedelta(seconds=90)


def add_parser(sub: Any) -> None:
    subparser(sub, STATUS)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    names = [src.key for src in settings.all_sources()]
    with open_store(settings.state, password=settings.state_secret()) as store:
        status = replace(store.status(), sources=store.polls.source_status(names))
        suppressed = store.subscribers.suppressions()
        bounces = store.bounces.counts()
        readers = store.readers.counts(at=utcnow())
    print(f"state:       {state_label(settings.state)}")
    print(format_status(status))
    print(
        f"readers:     {readers.pending} pending, {readers.active} active, {readers.paused} paused"
        "  (web sign-ups; paused counts every address)"
    )
    print(format_sources(status.sources))
    print(
        f"bounces:     {bounces['permanent']} permanent, {bounces['temporary']} temporary, "
        f"{bounces['complaint']} complaints, {bounces['ignored']} ignored (not ours or unreadable)"
    )
    print(f"unsubscribed: {len(suppressed)}")
    for s in suppressed:
        print(f"  {s.email} since {s.at.isoformat(timespec='seconds')} via {s.via}")
    return EXIT_OK


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
        f"ratings:     {status.ratings[0]} likes, {status.ratings[1]} dislikes",
        f"messages:    {states}",
        f"problems:    {len(failing) + len(status.problems)}",
        *("  " + line for line in failing),
        *("  " + _entry(item) for item in status.problems),
        f"suspended:   {len(status.suspended)}",
        *("  " + _entry(item) for item in status.suspended),
        *format_instances(status.instances),
    ]
    return "\n".join(lines)


def format_instances(
    instances: Sequence[InstanceInfo],
    *,
    now: datetime | None = None,
    silent_after: timedelta = _SILENT,
) -> list[str]:
    """The running daemons (several on one PostgreSQL database): name, where, last heartbeat, and
    the sources each polls as the leader. A daemon killed without a clean stop keeps its row: past
    `silent_after` without a heartbeat it is shown SILENT, and leads nothing any more (the
    database dropped its locks with its session)."""
    if not instances:
        return []
    now = now or utcnow()
    lines = [f"instances:   {len(instances)}"]
    for i in instances:
        silent = now - i.last_seen > silent_after
        leads = (
            "SILENT (dead or cut off)" if silent else "leads " + (", ".join(i.leads) or "no source")
        )
        lines.append(
            f"  {i.name}: host {i.host} pid {i.pid}, up since {_when(i.started_at)},"
            f" last seen {_when(i.last_seen)}; {leads}"
        )
    return lines


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
