"""The work lock: one unit of store work at a time, the job holding it known to the watchdog (is it
stuck?) and to a stop (how long to wait for it before cutting it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from digestd.config.sections import format_duration
from digestd.service.reload import Config
from digestd.store import explain_error, operational_errors

__all__ = ["STOP_WITHIN", "WorkLock", "bounds"]

log = logging.getLogger(__name__)

# Without a configuration file: how long a stop waits for the job in flight (delivery.timeout's default).
STOP_WITHIN = timedelta(seconds=30)


class WorkLock:
    """Runs jobs one at a time; a failure is logged and the daemon goes on to the next tick."""

    def __init__(
        self,
        *,
        store_path: Path | str,
        stopping: Callable[[], bool],
        state_lost: Callable[[], str | None],
        after_job: Callable[[], None],
        stop_within: timedelta,
        stuck_after: timedelta,
    ) -> None:
        self.stop_within, self.stuck_after = stop_within, stuck_after
        self._store_path = store_path
        self._stopping = stopping
        self._state_lost = state_lost  # checks, and acts on a change
        self._after_job = after_job
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None  # the job holding the lock, and its name
        self._holder_job = ""
        self._progress_at = time.monotonic()  # the last time a job took the lock or ended a message

    async def run(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run `body` under the lock, unless the daemon stops or the state file is lost."""
        try:
            async with self._lock:
                if self._stopping():
                    return
                if self._state_lost() is not None:
                    log.debug(
                        "job skipped job=%s reason=state file lost", getattr(body, "__name__", "?")
                    )
                    return
                await self._hold(body)
                self._after_job()
        except asyncio.CancelledError:
            # A job still waiting for the lock when the scheduler shuts down: nothing to report
            # (the scheduler would log a traceback for it).
            if not self._stopping():
                raise

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """The lock for work that is not a job (an admin mail, a reload): nothing else runs."""
        async with self._lock:
            yield

    async def _hold(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run `body` as the lock's holder, known to the watchdog and to a stop that runs late."""
        self._holder = asyncio.current_task()
        self._holder_job = name = getattr(body, "__name__", "?")
        self.progressed()
        try:
            await body()
        except operational_errors() as exc:  # read-only, full, unreachable: what to do
            log.error("job failed job=%s error=%s", name, explain_error(self._store_path, exc))
        except Exception:
            log.exception("job failed job=%s", name)
        except asyncio.CancelledError:
            if not self._stopping():
                raise
            # Cut by a stop past its bound: a message cut mid-send is `in_doubt` at the next start
            # and re-sent with the same Message-ID (store.recover).
            log.warning("job cancelled by the stop job=%s", name)
        finally:
            self._holder = None
            self.progressed()

    def progressed(self) -> None:
        """A job took the lock or ended a message: the watchdog's proof that work moves."""
        self._progress_at = time.monotonic()

    def stuck_why(self) -> str | None:
        """Why the work is stuck: a job held the lock past `stuck_after` without progress."""
        holder = self._holder
        idle = time.monotonic() - self._progress_at
        if holder is None or idle <= self.stuck_after.total_seconds():
            return None
        return (
            f"job={self._holder_job} has held the work lock {idle:.0f}s without finishing"
            f" a message (bound {format_duration(self.stuck_after)})"
        )

    async def acquire_for_stop(self) -> None:
        """The lock within `stop_within` (delivery.timeout); past it, the job is cancelled.

        systemd's stop timeout must not be the thing that ends us: a message cut mid-send is
        `in_doubt` at the next start and re-sent with the same Message-ID. `release` gives it back.
        """
        try:
            async with asyncio.timeout(self.stop_within.total_seconds()):
                await self._lock.acquire()
                return
        except TimeoutError:
            pass
        holder = self._holder
        log.warning(
            "stop: the job in flight did not end within %s; cancelling it job=%s",
            format_duration(self.stop_within),
            self._holder_job if holder else "?",
        )
        if holder is not None:
            holder.cancel()
        await self._lock.acquire()

    def release(self) -> None:
        self._lock.release()


def bounds(config: Config | None, stuck_after: timedelta | None) -> tuple[timedelta, timedelta]:
    """(how long a stop waits for the job in flight, how long a job may go without progress).

    A job progresses when it ends a message; one message can take every SMTP command's
    `delivery.timeout` and the end of DATA's `data_timeout`: twice that is surely stuck.
    """
    if config is None:
        return STOP_WITHIN, stuck_after or 2 * (STOP_WITHIN * 6 + timedelta(minutes=10))
    d = config.settings.delivery
    return d.timeout, stuck_after or 2 * (d.timeout * 6 + d.data_timeout)
