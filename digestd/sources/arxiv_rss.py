"""`ArxivRssSource`: arXiv's daily listing feed for one or more categories (`rss.arxiv.org`).

One conditional GET per poll; the feed changes once a day (midnight US Eastern) and is empty on
weekends and holidays, which is a successful poll with nothing new, not an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from digestd.errors import SourceError
from digestd.model import ParseResult
from digestd.sources.arxiv_xml import parse_arxiv_rss
from digestd.sources.http import HttpGetter

__all__ = ["ARXIV_RSS", "ArxivRssSource"]

ARXIV_RSS = "https://rss.arxiv.org/rss/"


class ArxivRssSource:
    def __init__(
        self,
        getter: HttpGetter,
        *,
        categories: Sequence[str],
        announce_types: Sequence[str] = ("new", "cross"),
        base_url: str = ARXIV_RSS,
        name: str = "arxiv_rss",
    ) -> None:
        if not categories:
            raise ValueError("arxiv_rss needs at least one category")
        self.name = name
        self.url = base_url.rstrip("/") + "/" + "+".join(categories)
        self.announce_types = tuple(announce_types)
        self._getter = getter

    def __repr__(self) -> str:
        return f"ArxivRssSource({self.url!r}, name={self.name!r})"

    async def aclose(self) -> None:
        await self._getter.aclose()

    async def fetch(self, *, now: datetime) -> ParseResult:
        reply = await self._getter.get(self.url)
        if reply.not_modified:
            return ParseResult(papers=(), not_modified=True)
        try:
            result = parse_arxiv_rss(reply.body, announce_types=self.announce_types)
        except SourceError as exc:
            raise SourceError(f"GET {self.url}: {exc}", transient=exc.transient) from None
        validators = (reply.validators,) if reply.validators else ()
        return ParseResult(papers=result.papers, problems=result.problems, validators=validators)
