"""`ArxivApiSource`: the newest submissions of a category query, from arXiv's API (Atom), paged.

Politeness is arXiv's rule, not ours to tune: one request every 3 s and one connection at a time
(the shared `Throttle`), a page size well under the API's limit, and a bounded number of pages.
Only the first page is requested conditionally: when it has not changed, no later page has.
"""

from __future__ import annotations

from datetime import datetime

import httpx

from digestd.core.errors import SourceError
from digestd.core.model import ParseProblem, ParseResult, Validators
from digestd.sources.arxiv_xml import ApiPage, parse_arxiv_api
from digestd.sources.http import HttpGetter

__all__ = ["ARXIV_API", "ID_BATCH", "ArxivApiSource", "category_query", "fetch_ids"]

ARXIV_API = "https://export.arxiv.org/api/query"
ID_BATCH = 100  # ids per `id_list` request: a short URL, a reply well under the body cap


def category_query(categories: list[str] | tuple[str, ...]) -> str:
    """`cat:cs.LG OR cat:cs.CL`: the API's query for papers in any of the categories."""
    return " OR ".join(f"cat:{c}" for c in categories)


class ArxivApiSource:
    """`search_query` sorted by submission date, newest first, `max_results` at most."""

    def __init__(
        self,
        getter: HttpGetter,
        *,
        query: str,
        url: str = ARXIV_API,
        name: str = "arxiv",
        page_size: int = 100,
        max_results: int = 200,
    ) -> None:
        if not 1 <= page_size <= 2000 or max_results < 1:
            raise ValueError("page_size must be 1..2000 (the API's limit), max_results >= 1")
        self.name = name
        self.url = url
        self.query = query
        self.page_size = page_size
        self.max_results = max_results
        self._getter = getter

    def __repr__(self) -> str:
        return f"ArxivApiSource({self.query!r}, name={self.name!r})"

    async def aclose(self) -> None:
        await self._getter.aclose()

    def page_url(self, start: int) -> str:
        params = {
            "search_query": self.query,
            "sortBy": "submittedDate",
            "sortOrder": "descending",
            "start": str(start),
            "max_results": str(min(self.page_size, self.max_results - start)),
        }
        return str(httpx.URL(self.url, params=params))

    async def fetch(self, *, now: datetime) -> ParseResult:
        """Every page up to `max_results`, or `SourceError`; `not_modified` when page 0 is a 304."""
        pages: list[ApiPage] = []
        validators: tuple[Validators, ...] = ()
        for start in range(0, self.max_results, self.page_size):
            url = self.page_url(start)
            reply = await self._getter.get(url, now=now, conditional=start == 0)
            if reply.not_modified:
                return ParseResult(papers=(), not_modified=True)
            if start == 0 and reply.validators is not None:
                validators = (reply.validators,)
            try:
                page = parse_arxiv_api(reply.body)
            except SourceError as exc:
                raise self._getter.failure(
                    url, f"GET {url}: {exc}", transient=exc.transient
                ) from None
            pages.append(page)
            if page.entries < self.page_size or (
                page.total is not None and start + page.entries >= page.total
            ):
                break
        return _combine(pages, validators)


def _combine(pages: list[ApiPage], validators: tuple[Validators, ...]) -> ParseResult:
    papers = [p for page in pages for p in page.result.papers]
    problems = [
        ParseProblem(index=p.index, reason=f"page {n}: {p.reason}")
        for n, page in enumerate(pages)
        for p in page.result.problems
    ]
    return ParseResult(papers=tuple(papers), problems=tuple(problems), validators=validators)


async def fetch_ids(
    getter: HttpGetter, ids: list[str] | tuple[str, ...], *, now: datetime, url: str = ARXIV_API
) -> ParseResult:
    """The papers of `ids` (a reader's `like:` list), `ID_BATCH` per `id_list` request, through
    `getter` (its throttle keeps arXiv's one request every 3 s); ids the API does not know are
    simply absent from the result. :raises SourceError: as `fetch` does."""
    pages: list[ApiPage] = []
    for start in range(0, len(ids), ID_BATCH):
        batch = ids[start : start + ID_BATCH]
        params = {"id_list": ",".join(batch), "max_results": str(len(batch))}
        page_url = str(httpx.URL(url, params=params))
        reply = await getter.get(page_url, now=now, conditional=False)
        try:
            pages.append(parse_arxiv_api(reply.body))
        except SourceError as exc:
            message = f"GET {page_url}: {exc}"
            raise getter.failure(page_url, message, transient=exc.transient) from None
    return _combine(pages, ())
