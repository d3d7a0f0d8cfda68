"""The optional HTTP listener (health, metrics, unsubscribe…), served by uvicorn inside the daemon's loop."""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Sequence
from typing import ClassVar

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute
from uvicorn.protocols.http.h11_impl import H11Protocol

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


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
    b"content-length: 5\r\nconnection: close\r\n\r\nbusy\n"
)
# A request head longer than this gets a 400 (h11's default, stated so that it stays the bound).
_MAX_HEAD = 16 * 1024


def connection_cap(wanted: int) -> int:
    """`wanted`, but no more than a quarter of the file-descriptor limit: the store, the sources and
    SMTP need theirs even when every client connection is taken."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft // 4))


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with the two limits it lacks against slow or many clients.

    Each request, head and body, must arrive within `request_timeout` of its start (uvicorn's keep-alive
    timeout covers only the wait between requests, so one header line every few seconds held a
    connection for ever). Past `cap` connections, the connection that has waited longest without a
    request being served is closed to make room; when every one is being served, the newcomer gets a
    503 at once.
    """

    request_timeout: ClassVar[float] = 10.0
    cap: ClassVar[int] = 100

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._since = self.loop.time()
        if len(self.connections) > self.cap and not self._evict_one():
            log.warning("http: at the cap of %d connections, all busy; refusing one", self.cap)
            transport.write(_BUSY)
            transport.close()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request on a kept-alive connection starts its own clock
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._since = self.loop.time()
        self._deadline = self.loop.call_later(self.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            log.debug("http: request not received within %ss; closing", self.request_timeout)
            self.transport.close()

    def _waiting(self) -> bool:
        """True while no request of this connection is being served (reading one, or idle)."""
        return self.cycle is None or self.cycle.response_complete

    def _evict_one(self) -> bool:
        others = [
            p
            for p in self.connections
            if isinstance(p, _GuardedH11) and p is not self and p._waiting()
            and not p.transport.is_closing()
        ]  # fmt: skip
        if not others:
            return False
        oldest = min(others, key=lambda p: p._since)
        log.warning("http: at the cap of %d connections; closing the one waiting longest", self.cap)
        oldest.transport.close()
        return True


class WebServer:
    """One Starlette app on one socket, started and stopped by the daemon, never by signals of its own.

    uvicorn's `serve()` installs process-wide signal handlers that would steal SIGTERM and SIGHUP from
    the daemon, so this drives its public `startup` / `main_loop` / `shutdown` steps directly.
    """

    def __init__(
        self,
        listen: str,
        routes: Sequence[BaseRoute],
        *,
        request_timeout: float = 10.0,
        max_connections: int = 100,
    ) -> None:
        host, port = parse_listen(listen)
        self.app = Starlette(routes=list(routes))
        cap = connection_cap(max_connections)

        class Protocol(_GuardedH11):
            pass

        Protocol.request_timeout, Protocol.cap = request_timeout, cap
        self.limits = (request_timeout, cap)
        config = uvicorn.Config(
            self.app, host=host, port=port, lifespan="off", access_log=False,
            log_level="warning", log_config=None, http=Protocol, h11_max_incomplete_event_size=_MAX_HEAD,
            timeout_keep_alive=5, backlog=max(cap, 64),
        )  # fmt: skip
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
        log.info(
            "http listening host=%s port=%d request_timeout=%ss max_connections=%d",
            config.host, self.port, self.limits[0], self.limits[1],
        )  # fmt: skip

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        await self._server.shutdown()
        self._task = None
