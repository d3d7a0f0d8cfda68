"""`HuggingFaceSource`: polls `/api/daily_papers` day by day, page by page, all or nothing.

Owns the HTTP side: headers, paging (`p` while a page is full), retries (429 per `RateLimit` or
`Retry-After`; 5xx, timeouts and connection errors with exponential backoff and jitter) and the
rule that a poll returns every page of every day or raises `SourceError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Literal, NoReturn

import httpx

from digestd import __version__
from digestd.core.errors import SourceError
from digestd.core.model import ParseProblem, ParseResult
from digestd.core.redact import redact_url
from digestd.sources.hf_json import merge_results, parse_page
from digestd.sources.retry import RetryLater, backoff_delay, deadline, server_wait

__all__ = ["USER_AGENT", "HuggingFaceSource", "make_client"]

log = logging.getLogger(__name__)

USER_AGENT = f"digestd/{__version__} (+https://github.com/digestd/digestd)"
# A reply larger than this is not a Daily Papers page (100 items are about 1 MB).
MAX_BODY = 32 * 1024 * 1024
# The API's pages hold ~50 items (100 at most, the `limit` we ask for); more is a hostile or broken
# server, refused before its items are read. With `max_pages` per day it bounds a poll's work.
MAX_ITEMS_PER_PAGE = 2000
MAX_PAGES = 10

Sleep = Callable[[float], Awaitable[None]]


def make_client(timeout: float = 30.0) -> httpx.AsyncClient:
    """The HTTP client: TLS verified, redirects followed (httpx drops auth across origins)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        verify=True,
        follow_redirects=True,
        max_redirects=5,
    )


class HuggingFaceSource:
    """Daily Papers for the last `days` UTC listing days of `now`, newest first."""

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        name: str = "huggingface",
        days: int = 2,
        limit: int = 100,
        max_pages: int = MAX_PAGES,
        retries: int = 3,
        backoff: float = 1.0,
        max_wait: float = 60.0,
        deadline: float = 30.0,
        token: str | None = None,
        sleep: Sleep = asyncio.sleep,
        listing: Literal["daily", "trending"] = "daily",
    ) -> None:
        if not 1 <= limit <= 100:
            raise ValueError("limit must be between 1 and 100 (the API rejects more)")
        if days < 1 or max_pages < 1 or retries < 0:
            raise ValueError("days and max_pages must be >= 1, retries >= 0")
        self.url = url
        self.name = name
        self.listing = listing
        self.days = days
        self.limit = limit
        self.max_pages = max_pages
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.deadline = deadline
        self._client = client
        self._token = token or None
        self._sleep = sleep
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self._token:
            self._headers["Authorization"] = f"Bearer {self._token}"

    def __repr__(self) -> str:
        # Never the token: this may end up in a log line.
        return (
            f"HuggingFaceSource({redact_url(self.url)!r}, name={self.name!r},"
            f" listing={self.listing!r},"
            f" days={self.days})"
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, *, now: datetime) -> ParseResult:
        """Every page of every day, merged; any request that finally fails fails the whole poll."""
        now = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)
        if self.listing == "trending":
            return merge_results(await self._fetch_trending(now))
        results: list[ParseResult] = []
        for back in range(self.days):
            results.extend(await self._fetch_day(now.date() - timedelta(days=back), now))
        return merge_results(results)

    async def _fetch_day(self, day: date, now: datetime) -> list[ParseResult]:
        results: list[ParseResult] = []
        for page in range(self.max_pages):
            params = {"date": day.isoformat(), "limit": str(self.limit), "p": str(page)}
            result, count = self._parse(params, await self._get(params, now))
            results.append(_locate(result, day, page))
            if count < self.limit:
                return results
        # All or nothing: a listing cut short would hide its later pages for good.
        raise self._error(
            f"GET {self.url} date={day}: still full after {self.max_pages} pages"
            f" (cap: {self.max_pages} pages per listing day and poll); the poll is refused",
            transient=False,
        )

    async def _fetch_trending(self, now: datetime) -> list[ParseResult]:
        """The trending list: one page (the top `limit`), whatever day the papers were listed."""
        params = {"sort": "trending", "limit": str(self.limit), "p": "0"}
        result, _ = self._parse(params, await self._get(params, now))
        return [result]

    def _parse(self, params: dict[str, str], raw: bytes) -> tuple[ParseResult, int]:
        try:
            return parse_page(raw, max_items=MAX_ITEMS_PER_PAGE)
        except SourceError as exc:
            raise self._error(f"{self._where(params)}: {exc}", transient=False) from None

    async def _get(self, params: dict[str, str], now: datetime) -> bytes:
        """One page's body, retried; raises `SourceError` once retries are exhausted or on a 4xx."""
        attempt = 0
        while True:
            try:
                return await self._attempt(params, now)
            except RetryLater as failure:
                if attempt >= self.retries:
                    raise self._error(
                        f"{self._where(params)}: {failure} (gave up after {attempt + 1} attempts)",
                        transient=True,
                        status=failure.status,
                    ) from None
                delay = self._delay(attempt, failure.wait)
                log.info(
                    "retrying source=%s %s error=%s in=%.1fs",
                    self.name,
                    self._where(params),
                    self._scrub(str(failure)),
                    delay,
                )
                attempt += 1
                await self._sleep(delay)

    async def _attempt(self, params: dict[str, str], now: datetime) -> bytes:
        async with deadline(self.deadline):
            return await self._request(params, now)

    async def _request(self, params: dict[str, str], now: datetime) -> bytes:
        try:
            async with self._client.stream(
                "GET", self.url, params=params, headers=self._headers
            ) as response:
                if response.status_code == 200:
                    return await _read_capped(response)
                excerpt = (await _read_capped(response, limit=4096))[:200]
        except httpx.TimeoutException as exc:
            raise RetryLater(f"timed out ({type(exc).__name__})") from None
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            raise RetryLater(f"connection failed ({type(exc).__name__}: {exc})") from None
        except httpx.HTTPError as exc:
            # A bad URL, an unsupported scheme, a redirect loop: retrying will not help.
            message = f"{self._where(params)}: {type(exc).__name__}: {exc}"
            raise self._error(message, transient=False) from None
        self._refuse(response, excerpt, params, now)

    def _refuse(
        self, response: httpx.Response, excerpt: bytes, params: dict[str, str], now: datetime
    ) -> NoReturn:
        status = response.status_code
        if status == 429:
            raise RetryLater("HTTP 429 rate limited", status=429, wait=server_wait(response, now))
        if status >= 500:
            raise RetryLater(f"HTTP {status}", status=status)
        body = excerpt.decode("utf-8", "replace")
        raise self._error(
            f"{self._where(params)}: HTTP {status} {response.reason_phrase}: {body!r}",
            transient=False,
            status=status,
        )

    def _delay(self, attempt: int, wait: float | None) -> float:
        return backoff_delay(attempt, wait, backoff=self.backoff, max_wait=self.max_wait)

    def _where(self, params: dict[str, str]) -> str:
        listing = f"date={params['date']}" if "date" in params else f"sort={params.get('sort')}"
        return f"GET {redact_url(self.url)} {listing} p={params['p']}"

    def _error(self, message: str, *, transient: bool, status: int | None = None) -> SourceError:
        return SourceError(self._scrub(message), transient=transient, status=status)

    def _scrub(self, message: str) -> str:
        # A hostile or echoing server could quote our Authorization header back at us.
        return message.replace(self._token, "***") if self._token else message


async def _read_capped(response: httpx.Response, *, limit: int = MAX_BODY) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if limit == MAX_BODY:
                raise SourceError(f"reply larger than {MAX_BODY} bytes", transient=False)
            break
    return b"".join(chunks)


def _locate(result: ParseResult, day: date, page: int) -> ParseResult:
    """Prefix each problem with the page it came from: indexes restart on every page."""
    if not result.problems:
        return result
    problems = tuple(
        ParseProblem(index=p.index, reason=f"date={day} p={page}: {p.reason}")
        for p in result.problems
    )
    return ParseResult(papers=result.papers, problems=problems)
