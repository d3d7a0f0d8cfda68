"""What a reader's page or the admin's command does to a reader, and the live audience it changes.

For the web pages (issue 15): call these with the store's `now`; each leaves the store committed
and the audience current. In the daemon, `refresh_readers_async` rebuilds the readers' matcher in
a worker thread (never on the event loop) and swaps it in; the YAML's matcher is not rebuilt.

    sub = validate_reader_spec(...)                 # rules/readers.py: a Subscriber or problems
    deps.store.readers.add_pending(...)             # store/sqlite/readers.py
    await confirm_reader(deps, email, now=now)      # joins the next digest, covering `lookback`
    await confirm_reader(deps, email, now=now, write=site.write)  # the pages: writes off the loop
    await edit_reader(deps, email, spec, now=now)   # effective from the next digest
    pause_reader(deps.store, email, weeks=2, now=now)  # any address; 1–8 weeks
    resume_reader(deps.store, email, now=now, catch_up=True)
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime, timedelta

from digestd.core.addresses import address_key
from digestd.mail import linktokens as tokens
from digestd.pipeline.deps import Deps, Write, swap_web, written
from digestd.pipeline.webreaders import build_web
from digestd.store import StateStore
from digestd.store.protocols import Pause, Reader

__all__ = [
    "MAX_PAUSE_WEEKS",
    "confirm_reader",
    "edit_reader",
    "manage_address",
    "pause_reader",
    "refresh_readers",
    "refresh_readers_async",
    "remove_reader",
    "resume_reader",
    "sync_readers",
    "sync_readers_async",
]

MAX_PAUSE_WEEKS = 8


def sync_readers(deps: Deps, *, now: datetime) -> None:
    """Rebuild the readers' matcher if a reader changed since it was built, in this process or
    another (`digestd subscribers remove` beside a running daemon): before composing."""
    if deps.store.readers.version() != deps.readers_seen:
        refresh_readers(deps, now=now)


async def sync_readers_async(deps: Deps, *, now: datetime) -> None:
    """`sync_readers` with the build off the event loop (the daemon's jobs)."""
    if deps.store.readers.version() != deps.readers_seen:
        await refresh_readers_async(deps, now=now)


def manage_address(deps: Deps, token: str) -> str | None:
    """The address (key) a "Manage your subscription" token was made for, or None: malformed,
    forged, made for another purpose, or whose reader was removed (their id was retired)."""
    parsed = tokens.parse_manage(token)
    if parsed is None:
        return None
    email = deps.store.subscribers.email_of(parsed.subscriber_id)
    secret = deps.options.secret or deps.store.secret()
    if email is None or not parsed.verify(tokens.derive_key(secret, "manage"), email):
        return None
    return email


def refresh_readers(deps: Deps, *, now: datetime) -> None:
    """Rebuild the readers' matcher here and now (`run --once`, the CLI, tests)."""
    deps.readers_seen = deps.store.readers.version()
    web = build_web(deps.store.readers.active(), deps.audience.yaml, deps.options.reader_defaults)
    swap_web(deps, web, now=now)


async def refresh_readers_async(deps: Deps, *, now: datetime) -> None:
    """`refresh_readers` with the build in a worker thread: the event loop keeps serving. Only the
    newest of overlapping refreshes swaps (it read the rows after every earlier change)."""
    deps.web_version += 1
    mine = deps.web_version
    seen = deps.store.readers.version()
    rows = deps.store.readers.active()  # one query, on the loop: the store is not thread-safe
    yaml, defaults = deps.audience.yaml, deps.options.reader_defaults
    web = await asyncio.to_thread(build_web, rows, yaml, defaults)
    if deps.web_version == mine and deps.audience.yaml is yaml:
        deps.readers_seen = seen
        swap_web(deps, web, now=now)
    elif deps.web_version == mine:  # a reload swapped the YAML meanwhile: build against it
        refresh_readers(deps, now=now)


async def confirm_reader(
    deps: Deps, email: str, *, now: datetime, write: Write | None = None
) -> Reader | None:
    """Confirm a pending sign-up; an address that had unsubscribed before opted in again. The
    reader's first digest is their next slot, covering `lookback` like a new YAML subscriber.
    The rows are written through `write` (the pages: off the event loop)."""

    def confirm(store: StateStore) -> Reader | None:
        reader = store.readers.confirm(email, at=now)
        if reader is not None:
            store.subscribers.unsuppress(email, at=now)
            store.subscribers.id_of(email)  # unsuppress retired it: the Manage link's new one
        return reader

    reader = await written(deps, write, confirm)
    if reader is not None:
        await refresh_readers_async(deps, now=now)
    return deps.store.readers.get(email) if reader is not None else None


async def edit_reader(
    deps: Deps,
    email: str,
    spec: Mapping[str, object],
    *,
    now: datetime,
    name: str | None = None,
    write: Write | None = None,
) -> Reader | None:
    """A validated new spec (rules/readers.py), effective from the next digest; nothing re-sent
    (the ledger keeps what went out)."""
    reader = await written(
        deps, write, lambda store: store.readers.update(email, spec=spec, at=now, name=name)
    )
    if reader is not None:
        await refresh_readers_async(deps, now=now)
    return reader


def pause_reader(
    store: StateStore, email: str, *, weeks: int, now: datetime, catch_up: bool = False
) -> Pause:
    """Nothing for `email` for `weeks` (1–8); no rebuild: composing and alerts skip the paused.
    Only the store changes, so the pages run it on a connection of their own (`ReaderSite.write`).

    :raises ValueError: `weeks` out of range.
    """
    if not 1 <= weeks <= MAX_PAUSE_WEEKS:
        raise ValueError(f"a pause lasts 1 to {MAX_PAUSE_WEEKS} weeks, not {weeks}")
    return store.readers.pause(email, until=now + timedelta(weeks=weeks), at=now, catch_up=catch_up)


def resume_reader(
    store: StateStore, email: str, *, now: datetime, catch_up: bool | None = None
) -> bool:
    """End a pause early: the pause's papers are skipped, or (`catch_up`) sent in one digest."""
    return store.readers.resume(email, at=now, catch_up=catch_up)


def remove_reader(deps: Deps, email: str, *, now: datetime) -> bool:
    """Forget a self-registered reader (store: row, ledger, link id) and stop serving them."""
    removed = deps.store.readers.remove(email, at=now)
    if removed:
        # Their ratings are their data too (issue 16): gone with them.
        deps.store.ratings.forget(address_key(email))
        refresh_readers(deps, now=now)
    return removed
