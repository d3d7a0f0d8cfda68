"""This daemon among several on one database: its name, its heartbeat and its poll leadership.

Every `beat` writes the instance's row (host, pid, start, now, the sources it leads) and renews
the lease on every message it is sending, so the others neither show it as silent nor re-send its
messages. A database that cannot be reached only costs a missed beat: the leases still run out,
and another instance takes over what a dead one had claimed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from digestd.service.clock import utcnow
from digestd.store import StateStore
from digestd.store.protocols import InstanceInfo, Leadership

__all__ = ["Instance", "default_name", "heartbeat_every"]

log = logging.getLogger(__name__)


def default_name() -> str:
    """host-pid: unique among running daemons without any configuration (`instance:` names it)."""
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


def heartbeat_every(lease: timedelta) -> float:
    """Seconds between beats: four per lease, so one or two missed beats lose nothing."""
    return max(0.5, lease.total_seconds() / 4)


class Instance:
    """One running daemon: named, beating, leading the sources it won."""

    def __init__(
        self,
        store: StateStore,
        *,
        name: str,
        lease: timedelta,
        leader: Leadership,
        state_lost: Callable[[], str | None] = lambda: None,
        sources: Callable[[], Sequence[str]] = tuple,
        every: Callable[[], float] = lambda: 60.0,
    ) -> None:
        self.store = store
        self.name = name
        self.lease = lease
        self.leader = leader
        self._state_lost = state_lost
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = utcnow()
        self._failing = False
        self._sources = sources
        self._every = every
        self._leading: frozenset[str] = frozenset()  # what the leadership thread last won
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start_leading(self) -> None:
        """On a shared database, ask for each source's leadership from a thread of its own every
        poll interval: a loop busy composing for seconds must not delay a takeover."""
        if not self.store.shared:
            return
        self._thread = threading.Thread(target=self._lead, name="digestd-leader", daemon=True)
        self._thread.start()

    def try_lead(self, source: str) -> bool:
        """Whether this instance polls `source` now (it leads it, or just took it over)."""
        if self._thread is not None:
            return source in self._leading
        leads = self._ask(source)
        self._leading = self.leader.leading()
        return leads

    def _lead(self) -> None:
        try:
            while not self._halt.is_set():
                if self._state_lost() is None:
                    for source in self._sources():
                        self._ask(source)
                    self._leading = self.leader.leading()
                self._halt.wait(self._every())
        finally:
            self.leader.close()  # its session ends: the others take over at their next ask

    def _ask(self, source: str) -> bool:
        had = source in self.leader.leading()
        leads = self.leader.try_lead(source)
        if leads != had:
            log.info("poll leadership %s source=%s instance=%s",
                     "taken" if leads else "lost", source, self.name)  # fmt: skip
        return leads

    def beat(self, now: datetime | None = None) -> None:
        """Write this instance's row and renew its leases. :raises: whatever the store raises."""
        now = now or utcnow()
        self.store.instances.beat(
            InstanceInfo(
                self.name, self.host, self.pid, self.started_at, now,
                tuple(sorted(self._leading)),
            )
        )  # fmt: skip
        self.store.outbox.renew_leases(self.name, until=now + self.lease)

    async def run(self) -> None:
        """Beat until cancelled; a change of leadership is written at once (status, /metrics)."""
        every, step = heartbeat_every(self.lease), 0.25
        last = (-1.0, self._leading)
        while True:
            now = asyncio.get_running_loop().time()
            if now - last[0] >= every or self._leading != last[1]:
                self._beat_quietly()
                last = (now, self._leading)
            await asyncio.sleep(min(step, every))

    def stop(self) -> None:
        """A clean stop: leadership released at once (the others take over at their next poll),
        the instance's row removed."""
        if self._thread is not None:
            self._halt.set()
            self._thread.join(timeout=10)
        else:
            self.leader.close()
        self._leading = frozenset()
        try:
            self.store.instances.forget(self.name)
        except Exception as exc:
            log.warning("could not remove the instance row instance=%s error=%s",
                        self.name, type(exc).__name__)  # fmt: skip

    def _beat_quietly(self) -> None:
        if self._state_lost() is not None:
            return
        try:
            self.beat()
        except Exception as exc:  # the database is down: said once, until it works again
            if not self._failing:
                log.warning("heartbeat failed instance=%s error=%s", self.name, exc)
            self._failing = True
        else:
            if self._failing:
                log.info("heartbeat works again instance=%s", self.name)
            self._failing = False
