"""The HTTP listener runs inside the caller's loop and leaves signal handling to the daemon."""

import signal

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from digestd.service.web import WebServer, parse_listen


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def test_serves_routes_and_keeps_signal_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    server = WebServer("127.0.0.1:0", [Route("/hello", hello)])
    await server.start()
    try:
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{server.port}/hello")
        assert reply.status_code == 200 and reply.text == "hello"
        assert signal.getsignal(signal.SIGTERM) == before
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8025", ("127.0.0.1", 8025)), ("[::1]:80", ("::1", 80)), (":9", ("127.0.0.1", 9))],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["localhost", "host:http", "h:70000"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(text)
