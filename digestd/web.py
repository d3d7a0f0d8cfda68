"""The optional HTTP listener (health, metrics, unsubscribe…), served by uvicorn inside the daemon's loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

__all__ = ["WebServer", "parse_listen"]

log = logging.getLogger(__name__)


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8025' or '[::1]:8025' → (host, port).

    :raises ValueError: when there is no port or it is out of range.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{listen!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class WebServer:
    """One Starlette app on one socket, started and stopped by the daemon, never by signals of its own.

    uvicorn's `serve()` installs process-wide signal handlers that would steal SIGTERM and SIGHUP from
    the daemon, so this drives its public `startup` / `main_loop` / `shutdown` steps directly.
    """

    def __init__(self, listen: str, routes: Sequence[BaseRoute]) -> None:
        host, port = parse_listen(listen)
        self.app = Starlette(routes=list(routes))
        config = uvicorn.Config(
            self.app, host=host, port=port, lifespan="off", access_log=False, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0 in tests)."""
        sockets = self._server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and serve in the background.

        :raises OSError: when the address cannot be bound.
        """
        config = self._server.config
        if not config.loaded:
            config.load()
        self._server.lifespan = config.lifespan_class(config)
        await self._server.startup()
        if not self._server.started:
            raise OSError(f"cannot listen on {config.host}:{config.port}")
        self._task = asyncio.create_task(self._server.main_loop(), name="http")
        log.info("http listening host=%s port=%d", config.host, self.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        await self._server.shutdown()
        self._task = None
