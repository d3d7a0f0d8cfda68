"""HuggingFaceSource and FileSource against a real local HTTP server and real files."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpserver import LocalHTTPServer, Reply

from digestd import __version__
from digestd.core.errors import SourceError
from digestd.sources import (
    FileSource,
    HttpGetter,
    HuggingFaceSource,
    Source,
    make_client,
    parse_hf_daily,
)
from digestd.sources.huggingface import HF_ACCEPT, HF_MAX_BODY

FIXTURES = Path(__file__).parents[1] / "fixtures"
REAL = FIXTURES / "hf_daily_papers_real_sample.json"
SEED = FIXTURES / "hf_daily_papers_seed.json"
PATH = "/api/daily_papers"
NOW = datetime(2026, 8, 18, 9, 30, tzinfo=UTC)
TODAY, YESTERDAY = "2026-08-18", "2026-08-17"
TOKEN = "hf_SeCrEt0123456789abcdef"


def items(n: int, *, start: int = 0) -> list[dict[str, Any]]:
    """`n` distinct items, copies of the real fixture items with fresh ids."""
    base = json.loads(REAL.read_bytes())
    out = []
    for i in range(start, start + n):
        item = copy.deepcopy(base[i % len(base)])
        item["paper"]["id"] = f"2608.{i:05d}"
        out.append(item)
    return out


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


class Sleeps:
    """The injected sleep: records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(timeout=5.0) as c:
        yield c


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


GETTER_OPTIONS = frozenset({"retries", "backoff", "max_wait", "deadline", "token", "sleep"})


def hf(url: str, client: httpx.AsyncClient, **kw: Any) -> HuggingFaceSource:
    """A Hugging Face source on its own `HttpGetter`; `kw` holds options of either."""
    http = {k: v for k, v in kw.items() if k in GETTER_OPTIONS}
    own = {k: v for k, v in kw.items() if k not in GETTER_OPTIONS}
    getter = HttpGetter(client, name="huggingface", accept=HF_ACCEPT, max_body=HF_MAX_BODY, **http)
    return HuggingFaceSource(getter, url=url, **own)


def source(
    server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps, **kw: Any
) -> HuggingFaceSource:
    return hf(server.url + PATH, client, sleep=sleeps, **kw)


def by_date(pages: Mapping[str, list[bytes]]) -> Any:
    """A handler serving `pages[date][p]` (an empty list past the end)."""

    def handler(path: str, query: dict[str, str], headers: Mapping[str, str]) -> Reply:
        day_pages = pages.get(query["date"], [])
        p = int(query["p"])
        return (
            200,
            {"Content-Type": "application/json"},
            day_pages[p] if p < len(day_pages) else b"[]",
        )

    return handler


def seen(server: LocalHTTPServer) -> list[tuple[str, str, str]]:
    return [(r.query["date"], r.query["limit"], r.query["p"]) for r in server.requests_to(PATH)]


# Paging and merging -------------------------------------------------------------------------


async def test_pages_until_a_short_page_for_both_days(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    today = items(237)
    yesterday = items(3, start=1000)
    pages = {
        TODAY: [body(today[:100]), body(today[100:200]), body(today[200:])],
        YESTERDAY: [body(yesterday)],
    }
    http_server.route(PATH, by_date(pages))

    result = await source(http_server, client, sleeps).fetch(now=NOW)

    assert len(result.papers) == 240
    assert {p.id for p in result.papers} == {i["paper"]["id"] for i in today + yesterday}
    assert result.problems == ()
    assert seen(http_server) == [
        (TODAY, "100", "0"),
        (TODAY, "100", "1"),
        (TODAY, "100", "2"),
        (YESTERDAY, "100", "0"),
    ]
    assert sleeps.delays == []


async def test_exactly_full_page_asks_for_the_next_one(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    http_server.route(PATH, by_date({TODAY: [body(items(100))]}))
    result = await source(http_server, client, sleeps, days=1).fetch(now=NOW)
    assert len(result.papers) == 100
    assert seen(http_server) == [(TODAY, "100", "0"), (TODAY, "100", "1")]


async def test_item3_paging_past_the_page_cap_fails_the_poll(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    full = body(items(10))  # every page full: a listing that never ends
    http_server.route(PATH, lambda path, query, headers: (200, {}, full))
    with pytest.raises(SourceError, match=r"date=2026-08-18: still full after 10 pages") as caught:
        await source(http_server, client, sleeps, days=2, limit=10).fetch(now=NOW)
    assert "cap: 10 pages per listing day" in str(caught.value) and not caught.value.transient
    assert [p for _, _, p in seen(http_server)] == [str(n) for n in range(10)]  # then it stopped
    http_server.requests.clear()
    with pytest.raises(SourceError, match="still full after 3 pages"):
        await source(http_server, client, sleeps, days=1, limit=10, max_pages=3).fetch(now=NOW)
    assert [p for _, _, p in seen(http_server)] == ["0", "1", "2"]


async def test_item3_a_huge_page_fails_the_poll_at_once(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    huge = body([{"paper": {"id": "2608.00001"}}] * 100_000)  # the hostile reply of the issue
    http_server.route(PATH, lambda path, query, headers: (200, {}, huge))
    start = time.monotonic()
    with pytest.raises(SourceError, match=r"p=0: the page holds 100000 items") as caught:
        await source(http_server, client, sleeps).fetch(now=NOW)
    assert time.monotonic() - start < 5  # was: 20 pages of it, 64 s and 1.27 GB
    assert "more than the cap of 2000 per page" in str(caught.value)
    assert len(http_server.requests) == 1 and not caught.value.transient
    # Just under the cap is a page like any other (the API's own pages hold ~50).
    http_server.route(PATH, by_date({TODAY: [body(items(2000))]}))
    result = await source(http_server, client, sleeps, days=1).fetch(now=NOW)
    assert len(result.papers) == 2000


async def test_days_are_utc_dates_newest_first(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    http_server.respond(PATH, body=b"[]", times=None)
    late_evening_in_new_york = datetime.fromisoformat("2026-08-17T22:00:00-04:00")
    await source(http_server, client, sleeps, days=3).fetch(now=late_evening_in_new_york)
    assert [d for d, _, _ in seen(http_server)] == ["2026-08-18", "2026-08-17", "2026-08-16"]


async def test_duplicates_across_days_keep_highest_upvotes(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    low, high = items(1), items(1)
    low[0]["paper"]["upvotes"] = 2
    high[0]["paper"]["upvotes"] = 50
    high[0]["paper"]["id"] += "v2"
    http_server.route(PATH, by_date({TODAY: [body(low)], YESTERDAY: [body(high)]}))
    result = await source(http_server, client, sleeps).fetch(now=NOW)
    assert [(p.id, p.upvotes) for p in result.papers] == [("2608.00000", 50)]


async def test_bad_items_are_reported_with_their_page(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    page = [*items(2), {"paper": {"title": "no id"}}]
    http_server.route(PATH, by_date({YESTERDAY: [body(page)]}))
    result = await source(http_server, client, sleeps).fetch(now=NOW)
    assert len(result.papers) == 2
    assert len(result.problems) == 1
    assert result.problems[0].index == 2
    assert result.problems[0].reason.startswith(f"date={YESTERDAY} p=0: ")


# Headers ------------------------------------------------------------------------------------


async def test_headers_without_token(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    http_server.respond(PATH, body=b"[]", times=None)
    await source(http_server, client, sleeps, days=1).fetch(now=NOW)
    headers = http_server.requests[0].headers
    assert headers["user-agent"] == f"digestd/{__version__} (+https://github.com/digestd/digestd)"
    assert headers["accept"] == "application/json"
    assert "authorization" not in headers


async def test_token_is_sent_as_bearer_but_never_shown(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    # A server that echoes the Authorization header back in its error reply.
    def echo(path: str, query: dict[str, str], headers: Mapping[str, str]) -> Reply:
        return 401, {}, body({"error": f"bad credentials: {headers.get('authorization')}"})

    http_server.route(PATH, echo)
    src = source(http_server, client, sleeps, token=TOKEN)
    with pytest.raises(SourceError) as info:
        await src.fetch(now=NOW)
    assert http_server.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert info.value.transient is False and info.value.status == 401
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value) and TOKEN not in repr(src)
    assert "bad credentials" in str(info.value)


async def test_token_absent_from_retry_exhaustion_message(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    http_server.respond(PATH, status=503, body=f"upstream said {TOKEN}", times=None)
    with pytest.raises(SourceError) as info:
        await source(http_server, client, sleeps, token=TOKEN).fetch(now=NOW)
    assert TOKEN not in str(info.value)


# Retries ------------------------------------------------------------------------------------


async def test_429_waits_per_ratelimit_header(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    http_server.respond(PATH, status=429, headers={"RateLimit": '"api";r=0;t=16'})
    http_server.respond(PATH, body=body(items(3)), times=None)
    result = await source(http_server, client, sleeps, days=1).fetch(now=NOW)
    assert len(result.papers) == 3
    assert sleeps.delays == [16]
    assert len(http_server.requests) == 2


async def test_429_wait_is_capped(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    http_server.respond(PATH, status=429, headers={"RateLimit": '"api";r=0;t=3600'})
    http_server.respond(PATH, body=b"[]", times=None)
    await source(http_server, client, sleeps, days=1, max_wait=60.0).fetch(now=NOW)
    assert sleeps.delays == [60.0]


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", 7.0), ("Tue, 18 Aug 2026 09:30:30 GMT", 30.0), ("Tue, 18 Aug 2026 09:00:00 GMT", 0.0)],
)
async def test_429_honours_retry_after(
    http_server: LocalHTTPServer,
    client: httpx.AsyncClient,
    sleeps: Sleeps,
    retry_after: str,
    expected: float,
) -> None:
    http_server.respond(PATH, status=429, headers={"Retry-After": retry_after})
    http_server.respond(PATH, body=b"[]", times=None)
    await source(http_server, client, sleeps, days=1).fetch(now=NOW)
    assert sleeps.delays == [expected]


async def test_500_then_success(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    http_server.respond(PATH, status=500, body=b"oops")
    http_server.respond(PATH, body=body(items(5)), times=None)
    result = await source(http_server, client, sleeps, backoff=1.0).fetch(now=NOW)
    assert len(result.papers) == 5
    assert len(sleeps.delays) == 1 and 1.0 <= sleeps.delays[0] <= 1.5


async def test_500_forever_fails_transient_and_returns_nothing(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    # Today succeeds, yesterday always fails: the poll as a whole must fail.
    def handler(path: str, query: dict[str, str], headers: Mapping[str, str]) -> Reply:
        if query["date"] == TODAY:
            return 200, {}, body(items(3))
        return 500, {}, b"down"

    http_server.route(PATH, handler)
    with pytest.raises(SourceError) as info:
        await source(http_server, client, sleeps, retries=3, backoff=1.0).fetch(now=NOW)
    assert info.value.transient is True
    assert info.value.status == 500
    assert "HTTP 500" in str(info.value) and YESTERDAY in str(info.value)
    assert len(sleeps.delays) == 3
    # Exponential with jitter: base 1, 2, 4 times [1, 1.5).
    for delay, base in zip(sleeps.delays, (1.0, 2.0, 4.0), strict=True):
        assert base <= delay <= base * 1.5
    assert len(http_server.requests_to(PATH)) == 1 + 4


async def test_backoff_is_capped_by_max_wait(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    http_server.respond(PATH, status=502, times=None)
    with pytest.raises(SourceError):
        await source(http_server, client, sleeps, retries=4, backoff=10, max_wait=25).fetch(now=NOW)
    assert sleeps.delays[2:] == [25, 25]


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_other_4xx_fail_at_once(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps, status: int
) -> None:
    http_server.respond(PATH, status=status, json={"error": "Invalid date"}, times=None)
    with pytest.raises(SourceError) as info:
        await source(http_server, client, sleeps).fetch(now=NOW)
    assert info.value.transient is False and info.value.status == status
    assert "Invalid date" in str(info.value)
    assert sleeps.delays == []
    assert len(http_server.requests) == 1


async def test_timeout_is_retried_then_fails(http_server: LocalHTTPServer, sleeps: Sleeps) -> None:
    http_server.route(PATH, http_server.stall())
    async with make_client(timeout=0.2) as quick:
        src = hf(http_server.url + PATH, quick, sleep=sleeps, retries=1)
        with pytest.raises(SourceError) as info:
            await src.fetch(now=NOW)
    assert info.value.transient is True and info.value.status is None
    assert "timed out" in str(info.value)
    assert len(sleeps.delays) == 1


async def test_connection_refused_is_transient(client: httpx.AsyncClient, sleeps: Sleeps) -> None:
    closed = LocalHTTPServer()
    url = closed.url + PATH
    closed.close()
    with pytest.raises(SourceError) as info:
        await hf(url, client, sleep=sleeps, retries=2).fetch(now=NOW)
    assert info.value.transient is True
    assert "connection failed" in str(info.value)
    assert len(sleeps.delays) == 2


# Broken bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "needle"),
    [
        (b"<!doctype html><title>Maintenance</title>", "Maintenance"),
        (REAL.read_bytes()[:300], "not JSON"),
        (b'{"error": "\xe2\x9c\x96 Too big: expected number to be <=100"}', "Too big"),
        (b'{"results": []}', "expected an array"),
    ],
)
async def test_a_broken_body_fails_the_poll_without_retry(
    http_server: LocalHTTPServer,
    client: httpx.AsyncClient,
    sleeps: Sleeps,
    reply: bytes,
    needle: str,
) -> None:
    http_server.respond(PATH, body=reply, times=None)
    with pytest.raises(SourceError) as info:
        await source(http_server, client, sleeps).fetch(now=NOW)
    assert info.value.transient is False
    assert needle in str(info.value)
    assert f"date={TODAY} p=0" in str(info.value)
    assert sleeps.delays == []


async def test_a_broken_second_page_fails_the_whole_poll(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    http_server.route(PATH, by_date({TODAY: [body(items(100)), b"[{"]}))
    with pytest.raises(SourceError, match="p=1"):
        await source(http_server, client, sleeps).fetch(now=NOW)


async def test_body_cut_short_of_content_length_is_retried(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    http_server.respond(PATH, body=b"[", headers={"Content-Length": "100"})
    http_server.respond(PATH, body=b"[]", times=None)
    result = await source(http_server, client, sleeps, days=1).fetch(now=NOW)
    assert result.papers == ()
    assert len(sleeps.delays) == 1


def test_limit_over_100_is_refused(client: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError, match="limit"):
        hf("http://127.0.0.1:1/x", client, limit=101)


async def test_make_client_verifies_tls() -> None:
    async with make_client(timeout=3.0) as c:
        assert c.timeout.read == 3.0
        # Verification on means a default SSL context that requires certificates.
        transport = c._transport
        pool = getattr(transport, "_pool", None)
        ssl_context = getattr(pool, "_ssl_context", None)
        assert ssl_context is not None
        assert ssl_context.verify_mode.name == "CERT_REQUIRED"


# FileSource ---------------------------------------------------------------------------------


async def test_file_source_reads_the_sample(tmp_path: Path) -> None:
    src: Source = FileSource(SEED)
    result = await src.fetch(now=NOW)
    assert src.name == "file"
    assert result == parse_hf_daily(SEED.read_bytes())
    assert len(result.papers) == 54


async def test_file_source_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot read") as info:
        await FileSource(tmp_path / "nope.json", name="offline").fetch(now=NOW)
    assert info.value.transient is False


async def test_file_source_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(b'{"error": "nope"}')
    with pytest.raises(SourceError, match="broken.json.*nope"):
        await FileSource(path).fetch(now=NOW)


async def test_file_source_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot read"):
        await FileSource(tmp_path).fetch(now=NOW)
