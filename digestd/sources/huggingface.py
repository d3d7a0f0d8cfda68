"""`HuggingFaceSource`: polls `/api/daily_papers` day by day, page by page, all or nothing.

A thin client on the shared `HttpGetter` (retries, the server's wait, the bearer token and its
scrubbing, the caps): this module owns only the paging (`p` while a page is full), the per-page and
per-poll caps, and the rule that a poll returns every page of every day or raises `SourceError`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal

from digestd.core.errors import SourceError
from digestd.core.model import ParseProblem, ParseResult
from digestd.core.redact import redact_url
from digestd.sources.hf_json import merge_results, parse_page
from digestd.sources.http import HttpGetter

__all__ = ["HF_ACCEPT", "HF_MAX_BODY", "HuggingFaceSource"]

HF_ACCEPT = "application/json"
# A reply larger than this is not a Daily Papers page (100 items are about 1 MB).
HF_MAX_BODY = 32 * 1024 * 1024
# The API's pages hold ~50 items (100 at most, the `limit` we ask for); more is a hostile or broken
# server, refused before its items are read. With `max_pages` per day it bounds a poll's work.
MAX_ITEMS_PER_PAGE = 2000
MAX_PAGES = 10


class HuggingFaceSource:
    """Daily Papers for the last `days` UTC listing days of `now`, newest first."""

    def __init__(
        self,
        getter: HttpGetter,
        *,
        url: str,
        name: str = "huggingface",
        days: int = 2,
        limit: int = 100,
        max_pages: int = MAX_PAGES,
        listing: Literal["daily", "trending"] = "daily",
    ) -> None:
        if not 1 <= limit <= 100:
            raise ValueError("limit must be between 1 and 100 (the API rejects more)")
        if days < 1 or max_pages < 1:
            raise ValueError("days and max_pages must be >= 1")
        self.url = url
        self.name = name
        self.listing = listing
        self.days = days
        self.limit = limit
        self.max_pages = max_pages
        self._getter = getter

    def __repr__(self) -> str:
        # Never the token: this may end up in a log line.
        return (
            f"HuggingFaceSource({redact_url(self.url)!r}, name={self.name!r},"
            f" listing={self.listing!r},"
            f" days={self.days})"
        )

    async def aclose(self) -> None:
        await self._getter.aclose()

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
        raise self._getter.failure(
            self.url,
            f"GET {self.url} date={day}: still full after {self.max_pages} pages"
            f" (cap: {self.max_pages} pages per listing day and poll); the poll is refused",
            transient=False,
        )

    async def _fetch_trending(self, now: datetime) -> list[ParseResult]:
        """The trending list: one page (the top `limit`), whatever day the papers were listed."""
        params = {"sort": "trending", "limit": str(self.limit), "p": "0"}
        result, _ = self._parse(params, await self._get(params, now))
        return [result]

    async def _get(self, params: dict[str, str], now: datetime) -> bytes:
        # No conditional GET: the API sends no validators, and a page is part of a listing.
        reply = await self._getter.get(
            self.url, params=params, now=now, conditional=False, label=self._where(params)
        )
        return reply.body

    def _parse(self, params: dict[str, str], raw: bytes) -> tuple[ParseResult, int]:
        try:
            return parse_page(raw, max_items=MAX_ITEMS_PER_PAGE)
        except SourceError as exc:
            message = f"{self._where(params)}: {exc}"
            raise self._getter.failure(self.url, message, transient=False) from None

    def _where(self, params: dict[str, str]) -> str:
        listing = f"date={params['date']}" if "date" in params else f"sort={params.get('sort')}"
        return f"GET {self.url} {listing} p={params['p']}"


def _locate(result: ParseResult, day: date, page: int) -> ParseResult:
    """Prefix each problem with the page it came from: indexes restart on every page."""
    if not result.problems:
        return result
    problems = tuple(
        ParseProblem(index=p.index, reason=f"date={day} p={page}: {p.reason}")
        for p in result.problems
    )
    return ParseResult(papers=result.papers, problems=problems)
