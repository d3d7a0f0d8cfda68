"""One matched paper as the templates see it (`PaperView`, `ListedView`) and the helpers that build it.

Paper text is untrusted: every piece of `Markup` here is built from escaped parts, only http(s)
(and plain mailto:) links survive `safe_url`/`safe_link`, and the text part is wrapped for reading.
The views are cached per paper: thousands of subscribers get the same papers in one run.
"""

from __future__ import annotations

import functools
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from markupsafe import Markup, escape

from digestd.core.model import Match, Paper, Reason
from digestd.core.text import clean_header, collapse

__all__ = [
    "HTML_ABSTRACT_CHARS",
    "Link",
    "ListedView",
    "PaperView",
    "cached_paper_view",
    "listed_view",
    "paper_view",
    "safe_link",
    "safe_url",
    "why",
    "wrap",
]

LISTED_TITLE_CHARS = 160
MAX_AUTHORS = 8
TEXT_ABSTRACT_CHARS = 600
# Gmail clips a message at ~102 KB of HTML (delivery.md §1.5); long abstracts are cut in HTML too.
HTML_ABSTRACT_CHARS = 1500
TITLE_CHARS = 300
TEXT_WIDTH = 72

# Length-preserving: every control or line break becomes one space, so highlight spans stay valid.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True, slots=True)
class Link:
    label: str
    url: str


@dataclass(frozen=True, slots=True)
class PaperView:
    """One paper as the templates see it: plain strings for text, `Markup` built here for HTML."""

    number: int
    title: str
    title_html: Markup
    authors: str
    url: str
    pdf_url: str | None  # None for feed items that are not arXiv papers
    links: tuple[Link, ...]
    upvotes: int
    comments: int
    organization: str | None
    tldr: str | None
    abstract_html: Markup
    abstract_text: str
    why: str
    abstract_cut: bool = False  # the abstract ends in "…": the HTML links to the whole one


def cached_paper_view(number: int, m: Match, abstract_chars: int) -> PaperView:
    highlights = tuple(sorted(m.highlights.items()))
    return _view(number, m.paper, highlights, m.reasons, abstract_chars)


@functools.lru_cache(maxsize=4096)
def _view(
    number: int,
    paper: Paper,
    highlights: tuple[tuple[str, tuple[tuple[int, int], ...]], ...],
    reasons: tuple[Reason, ...],
    abstract_chars: int,
) -> PaperView:
    match = Match(paper=paper, reasons=reasons, highlights=dict(highlights))
    return paper_view(number, match, abstract_chars=abstract_chars)


def paper_view(number: int, m: Match, *, abstract_chars: int = HTML_ABSTRACT_CHARS) -> PaperView:
    p = m.paper
    title = clean_header(p.title, limit=TITLE_CHARS)
    abstract_html = (
        highlight(p.abstract, m.highlights.get("abstract", ()), abstract_chars)
        if abstract_chars
        else Markup("")
    )
    text_chars = min(TEXT_ABSTRACT_CHARS, abstract_chars)
    abstract_text = wrap(shorten(collapse(_CONTROL.sub(" ", p.abstract)), text_chars))
    return PaperView(
        number=number,
        title=title,
        title_html=highlight(p.title, m.highlights.get("title", ()), TITLE_CHARS),
        authors=authors_line(p.authors),
        url=p.url,
        pdf_url=p.pdf_url,
        links=links(p.github_repo, p.project_page),
        upvotes=p.upvotes,
        comments=p.comments,
        organization=clean_header(p.organization, limit=100) if p.organization else None,
        tldr=clean_header(p.ai_summary, limit=500) if p.ai_summary else None,
        abstract_html=abstract_html,
        abstract_text=abstract_text if text_chars else "",
        why=why(m.reasons),
        abstract_cut=0 < abstract_chars < len(p.abstract),
    )


@dataclass(frozen=True, slots=True)
class ListedView:
    """A paper that only fits as a title with its link."""

    number: int
    title: str
    url: str
    upvotes: int


def listed_view(number: int, m: Match) -> ListedView:
    p = m.paper
    return ListedView(number, clean_header(p.title, limit=LISTED_TITLE_CHARS), p.url, p.upvotes)


def highlight(text: str, spans: Iterable[tuple[int, int]], limit: int) -> Markup:
    """`text` escaped piece by piece, each span wrapped in <mark>; cut at a word before `limit`."""
    clean = _CONTROL.sub(" ", text)
    cut = _cut_point(clean, limit)
    out: list[str] = []
    pos = 0
    for start, end in _merge(spans, cut):
        out += [escape(clean[pos:start]), Markup("<mark>"), escape(clean[start:end])]
        out.append(Markup("</mark>"))
        pos = end
    out.append(escape(clean[pos:cut]))
    if cut < len(clean):
        out.append(Markup("…"))
    return Markup("").join(out)


def _cut_point(text: str, limit: int) -> int:
    if len(text) <= limit:
        return len(text)
    space = text.rfind(" ", 0, limit)
    return space if space > limit // 2 else limit


def _merge(spans: Iterable[tuple[int, int]], cut: int) -> list[tuple[int, int]]:
    """Spans sorted, clipped to [0, cut) and merged where they overlap or touch."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted((max(0, s), min(e, cut)) for s, e in spans):
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def authors_line(authors: Sequence[str]) -> str:
    names = [clean_header(a, limit=100) for a in authors]
    if len(names) > MAX_AUTHORS:
        return ", ".join(names[:MAX_AUTHORS]) + " et al."
    return ", ".join(names)


def safe_url(url: str | None) -> str | None:
    """`url` when it is an absolute http(s) URL without spaces or controls; None otherwise."""
    if not url or _CONTROL.search(url) or " " in url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def safe_link(url: str | None) -> str | None:
    """`safe_url`, or a plain `mailto:` link (the unsubscribe fallback without a web listener)."""
    if url and url.startswith("mailto:") and not _CONTROL.search(url) and " " not in url:
        return url if re.fullmatch(r"mailto:[^\s<>\"']+", url) else None
    return safe_url(url)


def links(github: str | None, project: str | None) -> tuple[Link, ...]:
    found = [Link("Code", u) for u in [safe_url(github)] if u]
    found += [Link("Project page", u) for u in [safe_url(project)] if u]
    return tuple(found)


def why(reasons: Sequence[Reason]) -> str:
    """'“kv cache” in title; author “Jane Doe”; ≥ 20 upvotes', each reason once, in order.

    Always words: a reader does not know their rules by number."""
    parts: list[str] = []
    for r in reasons:
        part = _reason(r)
        if part not in parts:
            parts.append(part)
    return "; ".join(parts)


_NAMED = {
    "authors": "author",
    "orgs": "organisation",
    "categories": "category",
    "sources": "listed by",
}


def _reason(r: Reason) -> str:
    term = clean_header(r.term, limit=80) if r.term else None
    if r.field == "every":
        return "new today, most upvoted first"
    if r.field == "liked" and r.term:  # "similar to ‘X’ that you liked: a, b", already words
        return clean_header(r.term, limit=200)
    if r.field == "similar":
        return f"similar to papers you liked ({term})" if term else "similar to papers you liked"
    if r.field in ("upvotes", "comments") and term:
        return f"{term} {r.field}"
    if r.field in _NAMED:
        label = _NAMED[r.field]
        return f"{label} “{term}”" if term else label
    if term and r.field:
        return f"“{term}” in {r.field}"
    if term:
        return f"“{term}”"
    # A rule that names nothing it looks for (only `none:` terms): it let the paper through.
    return f"nothing your rule {r.rule + 1} excludes"


def shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: _cut_point(text, limit)].rstrip(" ,;:") + "…"


@functools.lru_cache(maxsize=4096)  # the same paper's lines are wrapped for every subscriber
def wrap(text: str, indent: str = "   ") -> str:
    return textwrap.fill(
        text,
        width=TEXT_WIDTH,
        initial_indent=indent,
        subsequent_indent=indent,
        break_on_hyphens=False,
    )
