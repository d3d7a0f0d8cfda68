"""systemd's watchdog: pings from the loop itself, after a store query, while jobs make progress."""

from __future__ import annotations

import asyncio
import logging

from digestd.service.sdnotify import Notifier
from digestd.service.worklock import WorkLock
from digestd.store import StateStore, store_errors

__all__ = ["watchdog"]

log = logging.getLogger(__name__)


async def watchdog(notifier: Notifier, store: StateStore, lock: WorkLock, every: float) -> None:
    """A stalled loop, a dead store or a stuck job stops the pings, and systemd restarts the
    service (WatchdogSec=, Restart=on-failure)."""
    said = False
    while True:
        why = lock.stuck_why()
        if why is not None:
            if not said:
                log.error("watchdog: not pinging; %s", why)
            said = True
        else:
            said = False
            _ping(notifier, store)
        await asyncio.sleep(every)


def _ping(notifier: Notifier, store: StateStore) -> None:
    try:
        store.ping()
    except store_errors() as exc:
        log.error("watchdog: the store does not answer error=%s", exc)
    else:
        notifier.watchdog()
