"""Pure parser for any RSS (0.9x, 1.0, 2.0) or Atom feed: bytes → `ParseResult`, via feedparser.

feedparser is lenient by design (it recovers from broken XML), so `check_xml` runs first: a feed
that is not well-formed fails the poll instead of yielding whatever feedparser could salvage.
An item's key is its arXiv id when its link (or an alternate link) is a paper's page on arXiv or
Hugging Face, or its id/GUID is one or an `oai:arXiv.org:`/`arXiv:` identifier, so the same paper
from a blog aggregator and from arXiv is one paper; otherwise `feed:` + its GUID or link (no arXiv
id holds a colon, so the two cannot collide). A feed is anyone's claim: its text ranks below every
arXiv and Hugging Face source (`Authority.FEED`, see digestd.core.merge) and its version numbers are
not believed (only arXiv's own API and listing state versions).
"""

from __future__ import annotations

import calendar
import html
import re
import time
from datetime import UTC, datetime
from typing import Any

import feedparser

from digestd.core.model import Authority, Paper, ParseProblem, ParseResult
from digestd.core.text import collapse
from digestd.sources.xmlfeed import arxiv_id_of_tag, arxiv_id_of_url, check_xml

__all__ = ["FEED_PREFIX", "parse_feed"]

FEED_PREFIX = "feed:"
_ROOTS = ("rss", "feed", "RDF")
_TAG = re.compile(r"<[^>]*>")
_MAX_KEY = 500
# arXiv categories (cs.LG, q-bio.NC, physics.optics, hep-th): only kept for items that are arXiv
# papers, where a feed's tags are likely to be them.
_CATEGORY = re.compile(
    r"[a-z]+(?:-[a-z]+)?\.[A-Za-z]{2,}(?:-[A-Za-z]+)?"
    r"|hep-(?:th|ph|ex|lat)|nucl-(?:th|ex)|gr-qc|quant-ph|math-ph|cond-mat|astro-ph|nlin"
)


def parse_feed(raw: bytes, *, base_url: str = "") -> ParseResult:
    """Parse one feed; relative links resolve against `base_url`.

    :raises SourceError: the body is not a well-formed RSS or Atom document.
    """
    check_xml(raw, roots=_ROOTS)
    parsed = feedparser.parse(
        raw,
        response_headers={"content-location": base_url} if base_url else None,
        sanitize_html=True,
        resolve_relative_uris=True,
    )
    papers: list[Paper] = []
    problems: list[ParseProblem] = []
    for index, entry in enumerate(parsed.entries):
        paper = _entry(entry)
        if isinstance(paper, str):
            problems.append(ParseProblem(index=index, reason=paper))
        else:
            papers.append(paper)
    return ParseResult(papers=tuple(papers), problems=tuple(problems))


def _entry(entry: Any) -> Paper | str:
    link = _http(entry.get("link"))
    guid = _plain(entry.get("id"))
    title = _plain(entry.get("title"))
    links = [_http(alt.get("href")) for alt in entry.get("links", [])]
    found = _arxiv_id(link, guid, links)
    if found is None and not (guid or link):
        return "item has neither a GUID nor a link"
    if not title:
        return f"item {(guid or link)[:60]!r} has no title"
    key = found or FEED_PREFIX + (guid or link)[:_MAX_KEY]
    tags = (_plain(tag.get("term")) for tag in entry.get("tags", []))
    return Paper(
        id=key,
        title=title,
        abstract=_plain(entry.get("summary")),
        authors=_authors(entry),
        published_at=_when(entry.get("published_parsed") or entry.get("updated_parsed")),
        categories=tuple(t for t in tags if _CATEGORY.fullmatch(t)) if found else (),
        link=link or None,
        authority=Authority.FEED,
    )


def _arxiv_id(link: str, guid: str, links: list[str]) -> str | None:
    """The arXiv id the item's own identifiers name; its version is dropped, never believed."""
    for found in (arxiv_id_of_url(link), arxiv_id_of_tag(guid), arxiv_id_of_url(guid)):
        if found:
            return found[0]
    return next((found[0] for found in map(arxiv_id_of_url, links) if found), None)


def _authors(entry: Any) -> tuple[str, ...]:
    names = [_plain(a.get("name")) for a in entry.get("authors", []) if hasattr(a, "get")]
    if not any(names):
        names = [_plain(entry.get("author"))]
    return tuple(name for name in names if name)


def _plain(value: object) -> str:
    """Feed text may be HTML (sanitised by feedparser): tags dropped, entities decoded."""
    if not isinstance(value, str):
        return ""
    return collapse(html.unescape(_TAG.sub(" ", value)).replace("\x00", " "))


def _http(value: object) -> str:
    text = value.strip() if isinstance(value, str) else ""
    return text if text.lower().startswith(("http://", "https://")) and " " not in text else ""


def _when(parsed: time.struct_time | None) -> datetime | None:
    # feedparser normalises every date format it knows to a UTC struct_time.
    if parsed is None:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(parsed), tz=UTC)
    except (OverflowError, ValueError, OSError):
        return None
