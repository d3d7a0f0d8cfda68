"""`ArxivRssSource`: arXiv's daily listing feed for one or more categories (`rss.arxiv.org`).

One conditional GET per poll; the feed changes once a day (midnight US Eastern) and is empty on
weekends and holidays, which is a successful poll with nothing new, not an error.
"""

from __future__ import annotations

from collections.abc import Sequence

from digestd.core.model import ParseResult
from digestd.sources.arxiv_xml import parse_arxiv_rss
from digestd.sources.feed import FeedPoll
from digestd.sources.http import HttpGetter

__all__ = ["ARXIV_RSS", "ArxivRssSource"]

ARXIV_RSS = "https://rss.arxiv.org/rss/"


class ArxivRssSource(FeedPoll):
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

    def parse(self, body: bytes) -> ParseResult:
        return parse_arxiv_rss(body, announce_types=self.announce_types)
