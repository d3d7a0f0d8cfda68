"""The arXiv API, arXiv RSS, generic feed and HF trending sources against a real local HTTP server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from httpserver import LocalHTTPServer, Reply

from digestd.core.errors import SourceError
from digestd.core.model import Validators
from digestd.sources import HuggingFaceSource, make_client
from digestd.sources.arxiv import ArxivApiSource, category_query
from digestd.sources.arxiv_rss import ArxivRssSource
from digestd.sources.feed import FeedSource
from digestd.sources.http import HttpGetter, Throttle

FIXTURES = Path(__file__).parents[1] / "fixtures"
NOW = datetime(2026, 8, 12, 9, 0, tzinfo=UTC)
API = "/api/query"
ATOM_HEAD = (FIXTURES / "arxiv_api_query.xml").read_text().split("<entry>")[0]
ENTRY = "<entry>" + (FIXTURES / "arxiv_api_query.xml").read_text().split("<entry>")[1]
ENTRY = ENTRY.replace("</feed>", "")


class Clock:
    """A fake monotonic clock that the injected sleep advances: no test ever waits."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.delays: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.delays.append(round(seconds, 3))
        self.t += seconds


class Cache:
    def __init__(self) -> None:
        self.saved: dict[str, Validators] = {}

    def get_validators(self, url: str) -> Validators | None:
        return self.saved.get(url)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(timeout=5.0) as c:
        yield c


@pytest.fixture
def clock() -> Clock:
    return Clock()


def getter(client: httpx.AsyncClient, clock: Clock, **kw: object) -> HttpGetter:
    return HttpGetter(client, name="t", sleep=clock.sleep, **kw)  # type: ignore[arg-type]


def api_page(n: int, *, start: int, total: int) -> bytes:
    """A reply in the API's format with `n` entries numbered from `start`."""
    head = ATOM_HEAD.replace(
        "<opensearch:totalResults>3</opensearch:totalResults>",
        f"<opensearch:totalResults>{total}</opensearch:totalResults>",
    )
    entries = "".join(
        ENTRY.replace("2608.20001v1", f"2608.3{i:04d}v1") for i in range(start, start + n)
    )
    return (head + entries + "</feed>").encode()


# arXiv API ----------------------------------------------------------------------------------


async def test_arxiv_api_pages_newest_first_at_one_request_per_3s(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, clock: Clock
) -> None:
    def handler(path: str, query: dict[str, str], headers: Mapping[str, str]) -> Reply:
        start = int(query["start"])
        return 200, {}, api_page(min(2, 5 - start), start=start, total=5)

    http_server.route(API, handler)
    throttle = Throttle(3.0, clock=clock, sleep=clock.sleep)
    src = ArxivApiSource(
        getter(client, clock, throttle=throttle),
        query=category_query(["cs.LG", "cs.CL"]),
        url=http_server.url + API,
        page_size=2,
        max_results=10,
    )
    result = await src.fetch(now=NOW)

    assert [p.id for p in result.papers] == [f"2608.3{i:04d}" for i in range(5)]
    requests = http_server.requests_to(API)
    assert [r.query["start"] for r in requests] == ["0", "2", "4"]
    first = requests[0].query
    assert first["search_query"] == "cat:cs.LG OR cat:cs.CL"
    assert (first["sortBy"], first["sortOrder"], first["max_results"]) == (
        "submittedDate",
        "descending",
        "2",
    )
    assert requests[0].headers["user-agent"].startswith("digestd/")
    # The request itself takes no fake time: the throttle waits the full 3 s between them.
    assert clock.delays == [3.0, 3.0]


async def test_arxiv_api_stops_at_max_results(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, clock: Clock
) -> None:
    http_server.route(API, lambda p, q, h: (200, {}, api_page(2, start=int(q["start"]), total=99)))
    src = ArxivApiSource(
        getter(client, clock), query="cat:cs.LG", url=http_server.url + API,
        page_size=2, max_results=3,
    )  # fmt: skip
    result = await src.fetch(now=NOW)
    assert [r.query["max_results"] for r in http_server.requests_to(API)] == ["2", "1"]
    assert len(result.papers) == 4  # what the server sent; the cap is on what we ask for


async def test_arxiv_api_retries_5xx_and_429_then_succeeds(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, clock: Clock
) -> None:
    http_server.respond(API, status=503)
    http_server.respond(API, status=429, headers={"Retry-After": "7"})
    http_server.respond(API, body=(FIXTURES / "arxiv_api_query.xml").read_bytes())
    src = ArxivApiSource(getter(client, clock, backoff=1.0), query="cat:cs.LG",
                         url=http_server.url + API)  # fmt: skip
    result = await src.fetch(now=NOW)
    assert len(result.papers) == 3
    assert 1.0 <= clock.delays[0] <= 1.5 and clock.delays[1] == 7.0


async def test_arxiv_api_gives_up_after_retries(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, clock: Clock
) -> None:
    http_server.respond(API, status=502, times=None)
    src = ArxivApiSource(getter(client, clock, retries=2), query="x", url=http_server.url + API)
    with pytest.raises(SourceError, match="HTTP 502 .gave up after 3 attempts") as info:
        await src.fetch(now=NOW)
    assert info.value.transient


async def test_arxiv_api_error_feed_fails_the_poll(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, clock: Clock
) -> None:
    http_server.respond(API, body=(FIXTURES / "arxiv_api_error.xml").read_bytes())
    src = ArxivApiSource(getter(client, clock), query="x", url=http_server.url + API)
    with pytest.raises(SourceError, match="incorrect id format"):
        await src.fetch(now=NOW)


async def test_a_4xx_is_not_retried(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, clock: Clock
) -> None:
    http_server.respond(API, status=400, body=b"bad query")
    src = ArxivApiSource(getter(client, clock), query="x", url=http_server.url + API)
    with pytest.raises(SourceError, match="HTTP 400 Bad Request: 'bad query'"):
        await src.fetch(now=NOW)
    assert len(http_server.requests_to(API)) == 1 and clock.delays == []


# arXiv RSS and generic feeds ----------------------------------------------------------------


async def test_arxiv_rss_joins_categories_and_filters_announce_types(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, clock: Clock
) -> None:
    http_server.respond("/rss/cs.LG+cs.AI", body=(FIXTURES / "arxiv_rss_cs_lg.xml").read_bytes())
    src = ArxivRssSource(
        getter(client, clock), categories=["cs.LG", "cs.AI"], announce_types=["new", "replace"],
        base_url=http_server.url + "/rss/",
    )  # fmt: skip
    result = await src.fetch(now=NOW)
    assert [(p.id, p.version) for p in result.papers] == [("2608.20001", 1), ("2608.09888", 3)]


@pytest.mark.parametrize("name", ["feed_atom.xml", "feed_rss2.xml"])
async def test_generic_feeds(
    name: str, http_server: LocalHTTPServer, client: httpx.AsyncClient, clock: Clock
) -> None:
    http_server.respond("/feed", body=(FIXTURES / name).read_bytes())
    result = await FeedSource(getter(client, clock), url=http_server.url + "/feed").fetch(now=NOW)
    assert len(result.papers) in (2, 3) and len(result.problems) == 1


async def test_etag_and_last_modified_make_the_next_poll_a_304(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, clock: Clock
) -> None:
    body = (FIXTURES / "feed_atom.xml").read_bytes()
    stamp = "Wed, 12 Aug 2026 08:00:00 GMT"

    def handler(path: str, query: dict[str, str], headers: Mapping[str, str]) -> Reply:
        if headers.get("if-none-match") == '"v1"':
            return 304, {"ETag": '"v1"'}, b""
        return 200, {"ETag": '"v1"', "Last-Modified": stamp}, body

    http_server.route("/feed", handler)
    cache = Cache()
    src = FeedSource(getter(client, clock, cache=cache), url=http_server.url + "/feed")

    first = await src.fetch(now=NOW)
    assert first.validators == (Validators(src.url, '"v1"', stamp),)
    assert len(first.papers) == 2 and not first.not_modified
    cache.saved[src.url] = first.validators[0]
    second = await src.fetch(now=NOW)
    assert second.not_modified and second.papers == ()
    sent = http_server.requests_to("/feed")[1].headers
    assert sent["if-none-match"] == '"v1"' and sent["if-modified-since"] == stamp


async def test_a_304_without_having_asked_is_an_error(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, clock: Clock
) -> None:
    http_server.respond("/feed", status=304)
    src = FeedSource(getter(client, clock), url=http_server.url + "/feed")
    with pytest.raises(SourceError, match="HTTP 304"):
        await src.fetch(now=NOW)


async def test_a_feed_far_larger_than_expected_is_cut_off(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, clock: Clock
) -> None:
    huge = b"<rss><channel>" + b"<item><title>x</title></item>" * 5000 + b"</channel></rss>"
    http_server.respond("/feed", body=huge)
    src = FeedSource(getter(client, clock, max_body=64 * 1024), url=http_server.url + "/feed")
    with pytest.raises(SourceError, match="larger than max_bytes=65536") as info:
        await src.fetch(now=NOW)
    assert not info.value.transient


# Hugging Face trending ----------------------------------------------------------------------


async def test_hf_trending_asks_sort_trending_without_a_date(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, clock: Clock
) -> None:
    http_server.respond("/api/daily_papers", body=(FIXTURES / "hf_trending.json").read_bytes())
    src = HuggingFaceSource(
        getter(client, clock), url=http_server.url + "/api/daily_papers", listing="trending"
    )
    result = await src.fetch(now=NOW)
    (request,) = http_server.requests_to("/api/daily_papers")
    assert request.query == {"sort": "trending", "limit": "100", "p": "0"}
    trending = json.loads((FIXTURES / "hf_trending.json").read_bytes())
    assert [p.id for p in result.papers] == [i["paper"]["id"] for i in trending]
    old = result.papers[0]
    assert old.id == "2412.20138" and old.listed_on is None and old.on_huggingface
    assert old.url == "https://huggingface.co/papers/2412.20138"
