"""When and how the running daemon reloads: on SIGHUP or a change of either YAML file, validate
first, then apply between two messages; a bad file or a failing reload keeps the old config."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from digestd.core.errors import ConfigError
from digestd.pipeline import Deps
from digestd.service.clock import utcnow
from digestd.service.reload import Changes, Config, apply_config, load_config
from digestd.service.schedule import RETRY_TICK
from digestd.service.sdnotify import Notifier
from digestd.service.worklock import WorkLock

__all__ = ["Reloader"]

log = logging.getLogger(__name__)


class Reloader:
    """Holds the configuration in force; `adopt` tells the daemon what a reload changed."""

    def __init__(
        self,
        deps: Deps,
        config: Config | None,
        lock: WorkLock,
        *,
        notifier: Notifier,
        status: Callable[[], str],
        adopt: Callable[[Config, Changes], None],
    ) -> None:
        self.deps = deps
        self.config = config
        self._lock = lock
        self._notifier = notifier
        self._status = status
        self._adopt = adopt
        self._wanted = asyncio.Event()
        self._stamp = config.stamp() if config else ()

    def request(self) -> None:
        """SIGHUP: reload once the work in flight is done (several signals make one reload)."""
        self._wanted.set()

    async def serve(self) -> None:
        """Serves every SIGHUP and file change: a reload that fails, however, leaves it running."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.reload()
            except Exception as exc:  # a bug must not end reloading for the life of the process
                log.error(
                    "reload failed error=%s: %s; the next SIGHUP or file change is still honoured",
                    type(exc).__name__, str(exc)[:200],
                )  # fmt: skip
                log.debug("reload failure", exc_info=True)
                self._notifier.ready(self._status())

    async def watch_files(self, first: Config) -> None:
        """Reload when either YAML file changes (mtime or size), checked every config_check_every."""
        while True:
            config = self.config or first
            every = config.settings.config_check_every.total_seconds()
            await asyncio.sleep(every if every > 0 else RETRY_TICK.total_seconds())
            stamp = (self.config or first).stamp()
            if every > 0 and stamp != self._stamp:
                self._stamp = stamp
                log.info("config files changed; reloading")
                self.request()

    async def reload(self) -> bool:
        """Validate the files first; apply them between two messages; else keep the old config."""
        if self.config is None:
            log.warning("reload ignored: the daemon was started without a configuration file")
            return False
        self._notifier.reloading()
        self._stamp = self.config.stamp()
        try:
            # Reading and checking a 20,000-subscriber file takes a second: not on the loop.
            new = await asyncio.to_thread(load_config, self.config.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            log.error(
                "reload refused n_errors=%d; still running on the previous configuration",
                len(exc.problems),
            )
            self._notifier.ready(self._status())
            return False
        async with self._lock.held():
            changes = await apply_config(self.deps, self.config, new, now=utcnow())
            self.config = new
            self._stamp = new.stamp()
            self._adopt(new, changes)
        self._notifier.ready(self._status())
        return True
