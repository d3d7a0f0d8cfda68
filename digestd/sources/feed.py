"""`FeedSource`: any RSS or Atom feed, polled with a conditional GET."""

from __future__ import annotations

from datetime import datetime

from digestd.errors import SourceError
from digestd.model import ParseResult
from digestd.sources.feed_xml import parse_feed
from digestd.sources.http import HttpGetter

__all__ = ["FeedSource"]


class FeedSource:
    def __init__(self, getter: HttpGetter, *, url: str, name: str = "feed") -> None:
        self.name = name
        self.url = url
        self._getter = getter

    def __repr__(self) -> str:
        return f"FeedSource({self.url!r}, name={self.name!r})"

    async def aclose(self) -> None:
        await self._getter.aclose()

    async def fetch(self, *, now: datetime) -> ParseResult:
        reply = await self._getter.get(self.url)
        if reply.not_modified:
            return ParseResult(papers=(), not_modified=True)
        try:
            result = parse_feed(reply.body, base_url=self.url)
        except SourceError as exc:
            raise SourceError(f"GET {self.url}: {exc}", transient=exc.transient) from None
        validators = (reply.validators,) if reply.validators else ()
        return ParseResult(papers=result.papers, problems=result.problems, validators=validators)
