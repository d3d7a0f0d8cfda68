"""The state file deleted or replaced under the daemon: work stops, what only the open descriptor
still reaches is copied out, and the admins get one mail when it goes and one when it is back."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime

from digestd.core.redact import redact
from digestd.deliver.transports.base import Mailer
from digestd.service.admin_alerts import DATABASE, STATE, AdminAlerts
from digestd.service.clock import utcnow
from digestd.service.schedule import RETRY_TICK
from digestd.service.worklock import WorkLock
from digestd.store import StateStore, store_errors
from digestd.store.protocols import AlertState

__all__ = ["STATE_CHECK", "StateWatch"]

log = logging.getLogger(__name__)

# How often the state file is checked to still be the one open (one stat): the longest a deleted
# or replaced file goes unnoticed by /healthz readers and admins (jobs check before they start).
STATE_CHECK = 1.0


class StateWatch:
    def __init__(
        self,
        store: StateStore,
        lock: WorkLock,
        *,
        alerts: AdminAlerts,
        alert_mailer: Callable[[], Mailer],
        on_change: Callable[[], None],
    ) -> None:
        self._store = store
        self._lock = lock
        self._alerts = alerts
        self._alert_mailer = alert_mailer
        self._on_change = on_change
        self.lost: str | None = None  # why the state file is not ours any more
        self._down: str | None = None  # why the state database does not answer (`_probe`)
        self._alert = STATE  # which alert the loss is: the file's, or the database's
        self._lost_since: datetime | None = None
        self._rescued: str | None = None
        self._last_loss = ""  # the reason, still told in the "back" mail
        self._told_lost = False  # what the admins were last told about it
        self._next_tell = utcnow()

    def check(self) -> str | None:
        """Why the state file is no longer the one open, or the state database does not answer
        (None: all is well); acts on each change."""
        reason = self._store.moved() or self._down
        if reason == self.lost:
            return reason
        if reason is None:
            log.warning("state back path=%s; composing and sending resume", self._store.path)
        elif self.lost is None:
            log.error("%s; composing and sending stopped until it is back or a restart", reason)
            self._lost_since, self._last_loss = utcnow(), reason
            self._alert = DATABASE if self._down else STATE
            if self._down is None:  # a file to copy out; a database keeps its rows itself
                self._rescue()
        self.lost = reason
        self._on_change()
        return reason

    def _rescue(self) -> None:
        """Copy out what only our open descriptor still reaches: the queue, the ledger, all."""
        try:
            path = self._store.rescue(utcnow())
        except (OSError, sqlite3.Error) as exc:
            self._rescued = None
            log.error("state file not rescued error=%s", exc)
            return
        self._rescued = str(path)
        log.error(
            "state file rescued copy=%s (to go on from it: stop digestd, move it to %s, start)",
            path, self._store.path,
        )  # fmt: skip

    def _probe(self) -> None:
        """A shared database (PostgreSQL) may go away and come back: ask it (it reconnects)."""
        if not self._store.shared:
            return
        try:
            self._store.ping()
        except store_errors() as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._down = redact(f"the state database does not answer: {type(exc).__name__} {first}")
        else:
            self._down = None

    async def watch(self) -> None:
        while True:
            self._probe()
            self.check()
            await self._tell_admins()
            await asyncio.sleep(STATE_CHECK)

    async def _tell_admins(self) -> None:
        """One mail when the file goes, one when it is back; kept in memory, as the store is
        what is in question (a restart on a restored file has nothing left to tell)."""
        lost = self.lost is not None
        now = utcnow()
        if lost == self._told_lost or now < self._next_tell:
            return
        detail = self._last_loss
        if self._rescued:
            detail += f". A copy of the file as digestd last had it: {self._rescued}"
        state = AlertState(self._alert, firing=lost, since=self._lost_since, detail=detail)
        async with self._lock.held():  # the mailer's connections are not shared with a job's sends
            try:
                told = await self._alerts.tell(state, self._alert_mailer(), now=now)
            except Exception as exc:  # the watch must go on: retried at the next tick
                log.error("admin alert failed alert=%s error=%s", self._alert, exc)
                told = False
        if told:
            self._told_lost = lost
        else:
            self._next_tell = now + RETRY_TICK
