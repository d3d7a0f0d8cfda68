"""Heavy pipeline steps off the event loop: one dedicated thread with its own store connection.

Composing 20,000 digests (match, queue, commit) takes tens of seconds of Python; run on the loop
that serves HTTP, every page would wait for it. Here the step runs in one thread, in order, on a
connection of its own (`side()`: SQLite connections are not shared between threads; PostgreSQL's
comes from the pool), with a copy of `Deps` that names that connection. One step at a time is
still the work lock's promise: the job awaits its step under the lock, so nothing else composes,
queues or reloads meanwhile.

A stop cannot cut a thread: the copy's `stopping` is read by `compose` between its batches, so a
step ends at its next commit; an abandoned compose is redone by the next one (`has_period`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

from digestd.pipeline import Deps
from digestd.store import StateStore

__all__ = ["ON_LOOP_ENV", "OffLoop"]

log = logging.getLogger(__name__)

# Set to 1: steps run on the loop as before this module existed; bench/web.py's baseline.
ON_LOOP_ENV = "DIGESTD_COMPOSE_ON_LOOP"

_T = TypeVar("_T")

# While a step runs, the thread holding the GIL is asked to hand it over after 0.5 ms, not 5 ms:
# every socket or SQLite call of a request releases the GIL, and getting it back from a busy
# compose thread cost the loop up to one interval each time (docs/performance.md, "Pages while
# composing").
_SWITCH = 0.0005


class OffLoop:
    """Runs `step(deps)` in the one "digestd-compose" thread, on the thread's own connection."""

    def __init__(self, deps: Deps, *, stopping: Callable[[], bool]) -> None:
        self.deps = deps
        self._stopping = stopping  # the daemon's flag: a plain read, safe from any thread
        # ":memory:" has no second connection: steps then run on the loop, on the store itself.
        on_loop = os.environ.get(ON_LOOP_ENV, "") not in ("", "0")
        self.threaded = not on_loop and str(deps.store.path) != ":memory:"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digestd-compose")
        self._side: StateStore | None = None  # opened, used, closed in the executor's thread only
        self.thread_ids: set[int] = set()  # the threads steps ran in (tests: never the loop's)

    async def run(self, step: Callable[[Deps], _T]) -> _T:
        """`step`'s result. Cancelled (a stop past its bound), the step still ends at its next
        commit in the thread, and `aclose` waits for that."""
        if not self.threaded:
            self.thread_ids.add(threading.get_ident())
            return step(self.deps)
        deps = self.deps  # read on the loop: a reload swaps its parts only under the work lock
        loop = asyncio.get_running_loop()
        before = sys.getswitchinterval()
        sys.setswitchinterval(_SWITCH)
        try:
            return await loop.run_in_executor(self._executor, self._call, deps, step)
        finally:
            sys.setswitchinterval(before)

    def _call(self, deps: Deps, step: Callable[[Deps], _T]) -> _T:
        self.thread_ids.add(threading.get_ident())
        side = self._open()
        # `stopping` here must not touch the loop's connection (the daemon's own check rescues
        # a moved file through it): the flag, and one stat of this connection's file.
        return step(replace(deps, store=side, stopping=lambda: self._stop_now(side)))

    def _stop_now(self, side: StateStore) -> bool:
        return self._stopping() or side.moved() is not None

    def _open(self) -> StateStore:
        if self._side is None:
            # The very file the store has open: never a new empty one made under a lost name.
            self._side = self.deps.store.side()
        return self._side

    async def aclose(self) -> None:
        """Wait for a step still running (it ends at its next commit), close the connection."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._side is not None:
            self._side.close()
            self._side = None
