"""Pure parsers for arXiv's two formats: the API's Atom replies and the RSS listing feeds.

Owns what those formats mean: a versioned id in `<id>` or the RSS `<guid>`, the primary category
first, the RSS `Announce Type` (new, cross, replace, replace-cross), and the API's way of failing
(a feed holding one entry titled "Error"). One bad entry is a `ParseProblem`; a bad feed raises.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from digestd.core.errors import SourceError
from digestd.core.model import Authority, Paper, ParseProblem, ParseResult
from digestd.core.text import collapse
from digestd.sources.xmlfeed import check_xml, find_arxiv_id, local, text_of, utc

__all__ = ["ANNOUNCE_TYPES", "ApiPage", "parse_arxiv_api", "parse_arxiv_rss"]

ANNOUNCE_TYPES = ("new", "cross", "replace", "replace-cross")
_ANNOUNCE = re.compile(r"Announce Type:\s*([a-z-]+)", re.IGNORECASE)
_ABSTRACT = re.compile(r"^.*?Abstract:\s*", re.IGNORECASE | re.DOTALL)
_AUTHOR_SPLIT = re.compile(r",\s*(?:and\s+)?|\s+and\s+")


@dataclass(frozen=True, slots=True)
class ApiPage:
    """One API reply: its papers, how many entries it held, and the query's total hit count."""

    result: ParseResult
    entries: int
    total: int | None


def parse_arxiv_api(raw: bytes) -> ApiPage:
    """Parse one `export.arxiv.org/api/query` reply.

    :raises SourceError: not an Atom feed, or the API's error entry.
    """
    root = check_xml(raw, roots=("feed",))
    entries = [child for child in root if local(child.tag) == "entry"]
    papers: list[Paper] = []
    problems: list[ParseProblem] = []
    for index, entry in enumerate(entries):
        _raise_if_error(entry)
        paper = _api_entry(entry)
        if isinstance(paper, str):
            problems.append(ParseProblem(index=index, reason=paper))
        else:
            papers.append(paper)
    result = ParseResult(papers=tuple(papers), problems=tuple(problems))
    return ApiPage(result=result, entries=len(entries), total=_total(root))


def _raise_if_error(entry: ET.Element) -> None:
    entry_id = text_of(_child(entry, "id"))
    if text_of(_child(entry, "title")) == "Error" and "/api/errors" in entry_id:
        message = text_of(_child(entry, "summary"))[:200] or entry_id
        raise SourceError(f"arXiv API error: {message}", transient=False)


def _total(root: ET.Element) -> int | None:
    value = text_of(_child(root, "totalResults"))
    return int(value) if value.isdigit() else None


def _api_entry(entry: ET.Element) -> Paper | str:
    raw_id = text_of(_child(entry, "id"))
    found = find_arxiv_id(raw_id)
    if found is None:
        return f"entry id is not an arXiv id: {raw_id[:60]!r}"
    paper_id, version = found
    title = text_of(_child(entry, "title"))
    if not title:
        return f"entry {paper_id} has no title"
    primary = _child(entry, "primary_category")
    terms = [primary.get("term", "")] if primary is not None else []
    terms += [c.get("term", "") for c in entry if local(c.tag) == "category"]
    authors = (text_of(_child(a, "name")) for a in entry if local(a.tag) == "author")
    return Paper(
        id=paper_id,
        title=title,
        abstract=text_of(_child(entry, "summary")),
        authors=tuple(a for a in authors if a),
        published_at=_iso(text_of(_child(entry, "published"))),
        categories=_categories(terms),
        version=version,
        authority=Authority.ARXIV_API,
    )


def parse_arxiv_rss(
    raw: bytes, *, announce_types: Collection[str] = ("new", "cross")
) -> ParseResult:
    """Parse an `rss.arxiv.org/rss/…` feed, keeping the items of the wanted announce types.

    :raises SourceError: not an RSS feed.
    """
    root = check_xml(raw, roots=("rss",))
    channel = _child(root, "channel")
    if channel is None:
        raise SourceError("RSS feed has no <channel>", transient=False)
    papers: list[Paper] = []
    problems: list[ParseProblem] = []
    items = (child for child in channel if local(child.tag) == "item")
    for index, item in enumerate(items):
        paper = _rss_item(item)
        if isinstance(paper, str):
            problems.append(ParseProblem(index=index, reason=paper))
        elif paper[1] in announce_types:
            papers.append(paper[0])
    return ParseResult(papers=tuple(papers), problems=tuple(problems))


def _rss_item(item: ET.Element) -> tuple[Paper, str] | str:
    description = text_of(_child(item, "description"))
    found = find_arxiv_id(text_of(_child(item, "guid")), description, text_of(_child(item, "link")))
    if found is None:
        return "item names no arXiv id in its guid, description or link"
    paper_id, version = found
    title = text_of(_child(item, "title"))
    if not title:
        return f"item {paper_id} has no title"
    announce = text_of(_child(item, "announce_type")).lower()
    if not announce:
        match = _ANNOUNCE.search(description)
        announce = match.group(1).lower() if match else "new"
    paper = Paper(
        id=paper_id,
        title=title,
        abstract=collapse(_ABSTRACT.sub("", description, count=1)),
        authors=_creators(text_of(_child(item, "creator"))),
        published_at=_rfc822(text_of(_child(item, "pubDate"))),
        categories=_categories(text_of(c) for c in item if local(c.tag) == "category"),
        version=version,
        authority=Authority.ARXIV_RSS,
    )
    return paper, announce


def _creators(value: str) -> tuple[str, ...]:
    """RSS puts every author in one `dc:creator`, comma-separated (sometimes 'and' before the last)."""
    return tuple(name for name in (collapse(n) for n in _AUTHOR_SPLIT.split(value)) if name)


def _categories(terms: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.strip() for t in terms if t and t.strip()))


def _child(element: ET.Element, name: str) -> ET.Element | None:
    for child in element:
        if local(child.tag) == name:
            return child
    return None


def _iso(value: str) -> datetime | None:
    try:
        return utc(datetime.fromisoformat(value)) if value else None
    except ValueError:
        return None


def _rfc822(value: str) -> datetime | None:
    try:
        return utc(parsedate_to_datetime(value)) if value else None
    except (TypeError, ValueError, IndexError):
        return None
