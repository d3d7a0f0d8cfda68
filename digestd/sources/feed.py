"""`FeedSource`: any RSS or Atom feed, polled with a conditional GET."""

from __future__ import annotations

from digestd.core.model import ParseResult
from digestd.sources.feed_xml import parse_feed
from digestd.sources.http import FeedPoll, HttpGetter

__all__ = ["FeedSource"]


class FeedSource(FeedPoll):
    def __init__(self, getter: HttpGetter, *, url: str, name: str = "feed") -> None:
        self.name = name
        self.url = url
        self._getter = getter

    def parse(self, body: bytes) -> ParseResult:
        return parse_feed(body, base_url=self.url)
