"""Issue 12 item 2, the fault suite's "slow headers" on the listener side: the real daemon, with a low
file limit, while 200 clients each send one header line every two seconds (reconnecting when cut
off). /healthz still answers promptly, polls and deliveries go on, nobody gets mail twice, and the
log stays small."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import resource
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemonproc import daemon, http_get, http_port, item, wait_for
from httpserver import LocalHTTPServer
from smtpserver import SMTPTestServer
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from test_service import Listing, to, write_config

from digestd.service.logs import RateLimit, setup_logging
from digestd.service.web import WebServer, connection_cap

pytestmark = pytest.mark.timeout(60)


class SlowClients:
    """`n` connections that never finish their request head: one more header line every `every` s."""

    def __init__(self, port: int, n: int = 200, every: float = 2.0) -> None:
        self.port, self.n, self.every = port, n, every
        self.connects = 0
        self.open = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    async def _main(self) -> None:
        tasks = [asyncio.create_task(self._client()) for _ in range(self.n)]
        while not self._stop.is_set():
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _client(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                await self._hold()
            await asyncio.sleep(0.5)  # cut off or refused: come back

    async def _hold(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.connects += 1
        self.open += 1
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: victim\r\n")
            while True:
                with contextlib.suppress(TimeoutError):
                    if not await asyncio.wait_for(reader.read(1024), self.every):
                        return  # the server hung up
                writer.write(b"X-Slow: still here\r\n")
                await writer.drain()
        finally:
            self.open -= 1
            writer.close()


def timed_health(port: int) -> float:
    """How long a normal client takes to get /healthz, retrying a connection that was reset: under a
    flood past the cap, a connection may be the one evicted before its request is read (as a browser
    does, a GET is retried); the bound on the time covers the retries."""
    started = time.monotonic()
    for attempt in range(3):
        try:
            status, _ = http_get(port, "/healthz")
            break
        except (ConnectionResetError, http.client.RemoteDisconnected):
            if attempt == 2:
                raise
    assert status == 200
    return time.monotonic() - started


@pytest.fixture
def listener_config(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> Iterator[tuple[Path, Listing]]:
    listing = Listing(http_server, [item("2611.00001", "KV cache tricks")])
    extra = "http:\n  listen: 127.0.0.1:0\n  request_timeout: 3s\n"
    yield (
        write_config(tmp_path, source=http_server.url, smtp_port=smtp_server.port, extra=extra),
        listing,
    )


def test_item2_slow_headers_do_not_hold_the_listener(
    tmp_path: Path, listener_config: tuple[Path, Listing], smtp_server: SMTPTestServer
) -> None:
    config, listing = listener_config
    log = tmp_path / "daemon.log"
    with daemon(config, log, max_files=160) as proc:
        port = http_port(log)
        wait_for(lambda: len(smtp_server.received) == 2, what="for the first alerts")
        with SlowClients(port) as attack:
            # Connections made, not held: the cap closes held ones as others arrive, so how many
            # are open at one instant depends on the machine's load, not on the daemon.
            wait_for(lambda: attack.connects >= 100, timeout=40, what="for the slow clients")
            # Every request of a normal client is served at once, all through the attack.
            times = [timed_health(port) for _ in range(5)]
            listing.items = [*listing.items, item("2611.00002", "KV cache again")]
            wait_for(lambda: len(smtp_server.received) == 4, what="for the alerts made mid-attack")
            deadline = time.monotonic() + 8  # beyond request_timeout: the first ones were cut off
            while time.monotonic() < deadline:
                times.append(timed_health(port))
                time.sleep(0.2)
            assert attack.connects > attack.n, "slow clients are cut off and come back"
        assert max(times) < 3, times
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    for address in ("alice@example.org", "bob@example.org"):
        ids = [m["Message-ID"] for m in to(smtp_server, address)]
        assert len(ids) == len(set(ids)) == 2, (address, ids)
    text = log.read_text()
    assert len(text) < 20_000, text[-3000:]
    for failure in ("unable to open database file", "ConnectError", "Traceback", "poll failed"):
        assert failure not in text, text[-3000:]


# the pieces, in-process ---------------------------------------------------------------------------


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


@contextlib.asynccontextmanager
async def serving(**limits: Any) -> AsyncIterator[WebServer]:
    server = WebServer("127.0.0.1:0", [Route("/hello", hello)], **limits)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def closed_after(reader: asyncio.StreamReader, at_most: float) -> float:
    """Seconds until the server hangs up (reading whatever it sends first)."""
    started = time.monotonic()
    while await asyncio.wait_for(reader.read(1024), at_most):
        pass
    return time.monotonic() - started


async def test_item2_a_slow_request_head_is_cut_off() -> None:
    async with serving(request_timeout=0.3) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert await closed_after(reader, 3) < 2
        writer.close()


async def test_item2_each_request_on_a_kept_alive_connection_has_its_own_deadline() -> None:
    async with serving(request_timeout=0.3) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"hello" in await reader.read(4096)
        writer.write(b"GET /hello HTTP/1.1\r\n")  # the second request stalls
        assert await closed_after(reader, 3) < 2
        writer.close()


async def test_item2_past_the_cap_the_longest_waiting_connection_makes_room() -> None:
    async with serving(max_connections=3) as server:
        slow = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        for _, writer in slow:
            writer.write(b"GET /hello HTTP/1.1\r\n")
            await asyncio.sleep(0.01)  # so that the first is the oldest
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{server.port}/hello")
        assert reply.status_code == 200 and reply.text == "hello"
        assert await closed_after(slow[0][0], 3) < 2  # the oldest went
        for _, writer in slow:
            writer.close()


def test_item2_the_cap_leaves_most_file_descriptors_to_the_rest() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(10**9) == soft // 4
    assert connection_cap(3) == min(3, soft // 4)


def test_item2_a_flood_of_one_message_is_rate_limited() -> None:
    now = [0.0]
    limit = RateLimit(burst=3, every=10, clock=lambda: now[0])

    def passes(n: int) -> list[str]:
        out = []
        for _ in range(n):
            record = logging.makeLogRecord({"name": "asyncio", "msg": "socket.accept() failed"})
            if limit.filter(record):
                out.append(record.getMessage())
        return out

    assert len(passes(10_000)) == 3
    now[0] += 10
    assert passes(10_000) == ["socket.accept() failed (9997 similar messages suppressed)"]
    other = logging.makeLogRecord({"name": "asyncio", "msg": "something else"})
    assert limit.filter(other)


async def test_item2_failed_accepts_flood_the_log_no_more(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """asyncio's own report of accept() at the file limit, through the daemon's logging setup."""
    setup_logging("info")
    loop = asyncio.get_running_loop()
    try:
        for _ in range(10_000):
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"),
                }
            )
    finally:
        forget_logging()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5 and "exc='[Errno 24] Too many open files'" in lines[0], lines


def forget_logging() -> None:
    logging.getLogger().handlers.clear()
    for name in ("asyncio", "uvicorn.error", "digestd.service.web"):
        logger = logging.getLogger(name)
        logger.filters[:] = [f for f in logger.filters if not isinstance(f, RateLimit)]


def test_item2_task_group_errors_are_logged_with_the_real_cause(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("info")
    try:
        try:
            raise ExceptionGroup("unhandled errors in a TaskGroup", [OSError("unable to open db")])
        except ExceptionGroup:
            logging.getLogger("digestd.service.daemon").exception("job failed job=_poll")
    finally:
        forget_logging()
    line = capsys.readouterr().err
    assert "exc_type=OSError exc='unable to open db'" in line, line
    assert "sub-exception" not in line
