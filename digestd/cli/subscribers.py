"""`digestd subscribers list | export | remove`: the admin's view of who is served, from the YAML
file and from the web sign-ups, and the way to adopt or drop self-registered readers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from digestd.cli.exitcodes import EXIT_OK, EXIT_RUNTIME
from digestd.cli.options import Command, global_options, subparser
from digestd.config.settings import Settings
from digestd.core.addresses import address_key
from digestd.core.model import SubscriberSet
from digestd.core.redact import safe_text
from digestd.relevance.imports import arxiv_id_of
from digestd.service import wiring as app
from digestd.service.clock import utcnow
from digestd.store import StateStore, open_store, state_label
from digestd.store.protocols import Rating, Reader

__all__ = ["EXPORT", "LIST", "REMOVE", "add_parser", "cmd_subscribers"]

LIST = Command(
    "list",
    "every subscriber: the YAML file's and the web sign-ups, with their state",
    "List every subscriber, one a line: address, where it comes from (yaml or web) and its "
    "state (active, paused, pending, unsubscribed, suspended). A web reader whose address the "
    "YAML file also lists is shown as `yaml-wins`: the file's entry is the one served.",
    "digestd subscribers list --from web",
)
EXPORT = Command(
    "export",
    "the confirmed web readers as YAML for the subscribers file",
    "Print the confirmed self-registered readers as subscribers-file entries (their rules, "
    "topics as `use:`, schedule, timezone and max_papers written out), ready to paste into "
    "the `subscribers:` list of the admin's file. Once pasted, the YAML entry wins; remove the "
    "web rows with `digestd subscribers remove EMAIL` if you like.",
    "digestd subscribers export >> adopted.yaml",
)
REMOVE = Command(
    "remove",
    "forget a self-registered reader (their rules, pause, ledger and links)",
    "Forget a self-registered reader: their row, pause, paper ledger and link id (so the "
    "links in their mails stop working). Mail already queued for them expires. An address "
    "only in the YAML file is the file's: remove it there.",
    "digestd subscribers remove carol@example.org",
)


def add_parser(sub: Any) -> None:
    group = sub.add_parser(
        "subscribers",
        help="list, export or remove subscribers (YAML and web sign-ups)",
        description="The subscribers digestd serves: the YAML file's and the web sign-ups.",
        epilog=f"example:\n  {LIST.example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    global_options(group, defaults=False)
    action = group.add_subparsers(dest="subscribers_command", required=True, metavar="ACTION")
    listing = subparser(action, LIST, name="list")
    listing.add_argument("--from", dest="origin", choices=["yaml", "web"], default=None)
    subparser(action, EXPORT, name="export")
    subparser(action, REMOVE, name="remove").add_argument("email")


def cmd_subscribers(settings: Settings, args: argparse.Namespace) -> int:
    subs = app.load_subscriber_file(settings.subscribers)
    with open_store(settings.state, password=settings.state_secret()) as store:
        if args.subscribers_command == "remove":
            return _remove(store, subs, args.email)
        readers = store.readers.pending() + store.readers.active()
        if args.subscribers_command == "export":
            rated = {r.email: store.ratings.ratings(r.email) for r in readers}
            print(export_yaml(readers, subs, settings, ratings=rated), end="")
            return EXIT_OK
        paused = store.readers.paused(at=utcnow())
        suppressed = {s.email for s in store.subscribers.suppressions()}
        suspended = store.subscribers.suspended()
    states = _States(paused, suppressed, suspended)
    for line in list_lines(subs, readers, states, origin=args.origin):
        print(line)
    return EXIT_OK


class _States:
    """What the store says of an address, beside the reader rows."""

    def __init__(self, paused: set[str], suppressed: set[str], suspended: set[str]) -> None:
        self.paused, self.suppressed, self.suspended = paused, suppressed, suspended

    def of(self, key: str) -> str:
        if key in self.suspended:
            return "suspended"
        if key in self.suppressed:
            return "unsubscribed"
        return "paused" if key in self.paused else "active"


def list_lines(
    subs: SubscriberSet, readers: Iterable[Reader], states: _States, *, origin: str | None
) -> list[str]:
    """`address  origin  state  name`, the YAML's in file order, then the web readers by address."""
    lines = []
    yaml_keys = {address_key(s.email) for s in subs.subscribers}
    if origin in (None, "yaml"):
        for sub in subs.subscribers:
            key = address_key(sub.email)
            lines.append(_line(key, "yaml", states.of(key), sub.name))
    if origin in (None, "web"):
        for reader in sorted(readers, key=lambda r: r.email):
            state = reader.state if reader.state == "pending" else states.of(reader.email)
            if reader.email in yaml_keys:
                state = "yaml-wins"
            lines.append(_line(reader.email, "web", state, reader.name))
    return lines


def _line(email: str, origin: str, state: str, name: str | None) -> str:
    return f"{email}  {origin}  {state}" + (f"  {safe_text(name)}" if name else "")


def export_yaml(
    readers: Iterable[Reader],
    subs: SubscriberSet,
    settings: Settings,
    *,
    ratings: Mapping[str, Sequence[Rating]] | None = None,
) -> str:
    """The confirmed web readers the YAML does not list, as entries of its `subscribers:` list,
    with the sign-up defaults written out so that they mean the same in the admin's file.

    Issue #16: their "more like this" papers (clicks and imports) as `like:`; their dislikes,
    which the file has no key for, as one comment line each (they stay in the state file)."""
    taken = {address_key(s.email) for s in subs.subscribers}
    defaults = settings.signup.defaults
    entries = []
    notes = []
    for reader in sorted(readers, key=lambda r: r.email):
        if reader.confirmed_at is None or reader.email in taken:
            continue
        entry: dict[str, object] = {"email": reader.email}
        if reader.name:
            entry["name"] = reader.name
        entry["use"] = list(reader.spec.get("use") or [])  # type: ignore[call-overload]
        entry["rules"] = list(reader.spec.get("rules") or [])  # type: ignore[call-overload]
        entry["schedule"] = reader.spec.get("schedule", defaults.schedule)
        entry["timezone"] = reader.spec.get("timezone", defaults.timezone)
        entry["max_papers"] = reader.spec.get("max_papers", defaults.max_papers)
        theirs = (ratings or {}).get(reader.email, ())
        if liked := [r.paper_id for r in theirs if r.value > 0 and arxiv_id_of(r.paper_id)]:
            entry["like"] = liked
        if disliked := [r.paper_id for r in theirs if r.value < 0]:
            notes.append(f"# {reader.email} disliked: {', '.join(map(safe_text, disliked))}\n")
        entries.append(entry)
    head = (
        f"# {len(entries)} self-registered reader(s) from {state_label(settings.state)}: paste these under\n"
        "# `subscribers:` in the subscribers file (`use: []` keeps the file's defaults.use out).\n"
        + "".join(notes)
    )
    if not entries:
        return head
    body = yaml.safe_dump(
        {"subscribers": entries}, sort_keys=False, allow_unicode=True, default_flow_style=None
    )
    return head + body


def _remove(store: StateStore, subs: SubscriberSet, email: str) -> int:
    if store.readers.remove(email, at=utcnow()):
        # Their ratings are their data too (issue 16), as pipeline/readers.remove_reader does;
        # the model file drops theirs at the daemon's next refresh.
        store.ratings.forget(address_key(email))
        note = " (the subscribers file lists it too: it stays served from there)"
        print(f"{address_key(email)}: removed" + (note if subs.by_email(email) else ""))
        return EXIT_OK
    if subs.by_email(email) is not None:
        print(
            f"digestd: {email} is in the subscribers file ({subs.file}), not a web sign-up:"
            " remove it there",
            file=sys.stderr,
        )
    else:
        print(f"digestd: {email} is no self-registered reader", file=sys.stderr)
    return EXIT_RUNTIME
