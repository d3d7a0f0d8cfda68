"""`FeedSource`: any RSS or Atom feed, polled with a conditional GET; `FeedPoll`, the shape it shares."""

from __future__ import annotations

from datetime import datetime

from digestd.core.errors import SourceError
from digestd.core.model import ParseResult
from digestd.core.redact import redact_url
from digestd.sources.feed_xml import parse_feed
from digestd.sources.http import HttpGetter

__all__ = ["FeedPoll", "FeedSource"]


class FeedPoll:
    """One conditional GET of `url` per poll, its body parsed by `parse`: the shape every XML source shares.

    A 304 is a successful poll with nothing new; a parse failure names the URL; the validators of the
    reply travel with the papers so the store saves them only once the papers are stored.
    """

    name: str
    url: str
    _getter: HttpGetter

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.url)!r}, name={self.name!r})"

    def parse(self, body: bytes) -> ParseResult:
        raise NotImplementedError

    async def aclose(self) -> None:
        await self._getter.aclose()

    async def fetch(self, *, now: datetime) -> ParseResult:
        reply = await self._getter.get(self.url, now=now)
        if reply.not_modified:
            return ParseResult(papers=(), not_modified=True)
        try:
            result = self.parse(reply.body)
        except SourceError as exc:
            raise self._getter.failure(
                self.url, f"GET {self.url}: {exc}", transient=exc.transient
            ) from None
        validators = (reply.validators,) if reply.validators else ()
        return ParseResult(papers=result.papers, problems=result.problems, validators=validators)


class FeedSource(FeedPoll):
    def __init__(self, getter: HttpGetter, *, url: str, name: str = "feed") -> None:
        self.name = name
        self.url = url
        self._getter = getter

    def parse(self, body: bytes) -> ParseResult:
        return parse_feed(body, base_url=self.url)
