"""Pure parser for Hugging Face Daily Papers replies: bytes → `ParseResult` of normalised `Paper`s.

Owns the knowledge of the item schema (`upvotes` lives in `paper`, the listing day is
`paper.submittedOnDailyAt`, ids may carry an arXiv version) and what "malformed" means: a reply that
is not a JSON array fails as a whole (`SourceError`), one bad item only becomes a `ParseProblem`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from digestd.core.errors import SourceError
from digestd.core.model import Authority, Paper, ParseProblem, ParseResult, is_arxiv_id
from digestd.core.text import collapse

__all__ = ["merge_results", "parse_hf_daily", "parse_page"]

_T = TypeVar("_T")

# Enough of a reply to recognise it in a log line, never a whole page.
_EXCERPT = 120
_MAX_COUNT = 2**31 - 1
_VERSION = re.compile(r"v\d+$")
_URL_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f<>\"'`\\]")


def _lenient(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """An optional field of the wrong shape is dropped, not a reason to lose the whole paper."""
    try:
        return handler(value)
    except ValidationError:
        return None


Lenient = Annotated[_T | None, WrapValidator(_lenient)]


def _text(value: Any) -> str | None:
    # Lone surrogates (from `\ud800` escapes) cannot be encoded later by sqlite3 or email.
    if not isinstance(value, str):
        return None
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", " ")


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Org(_Base):
    name: Lenient[str] = None
    fullname: Lenient[str] = None


class _Author(_Base):
    name: Lenient[str] = None
    hidden: Lenient[bool] = None


class _Paper(_Base):
    id: str
    title: Lenient[str] = None
    summary: Lenient[str] = None
    authors: Lenient[list[Lenient[_Author]]] = None
    upvotes: Lenient[int] = None
    published_at: Lenient[datetime] = Field(None, alias="publishedAt")
    listed_at: Lenient[datetime] = Field(None, alias="submittedOnDailyAt")
    organization: Lenient[_Org] = None
    ai_summary: Lenient[str] = None
    github_repo: Lenient[str] = Field(None, alias="githubRepo")
    project_page: Lenient[str] = Field(None, alias="projectPage")


class _Item(_Base):
    paper: _Paper
    title: Lenient[str] = None
    summary: Lenient[str] = None
    num_comments: Lenient[int] = Field(None, alias="numComments")
    organization: Lenient[_Org] = None


def parse_hf_daily(raw: bytes) -> ParseResult:
    """Parse one `/api/daily_papers` reply; `SourceError(transient=False)` if it is no list."""
    return parse_page(raw)[0]


def parse_page(raw: bytes, *, max_items: int | None = None) -> tuple[ParseResult, int]:
    """Like `parse_hf_daily`, also returning how many items the reply held (what paging counts).

    A page of more than `max_items` items is refused before any item is read.
    """
    items = _load_list(raw)
    if max_items is not None and len(items) > max_items:
        raise SourceError(
            f"the page holds {len(items)} items, more than the cap of {max_items} per page;"
            " not a Daily Papers page",
            transient=False,
        )
    papers: list[Paper] = []
    problems: list[ParseProblem] = []
    for index, item in enumerate(items):
        paper = _adapt_item(item)
        if isinstance(paper, str):
            problems.append(ParseProblem(index=index, reason=paper))
        else:
            papers.append(paper)
    return ParseResult(papers=_dedupe(papers), problems=tuple(problems)), len(items)


def merge_results(results: Iterable[ParseResult]) -> ParseResult:
    """Merge replies (pages, days) into one, deduplicated by id, the highest upvotes kept."""
    papers: list[Paper] = []
    problems: list[ParseProblem] = []
    for result in results:
        papers.extend(result.papers)
        problems.extend(result.problems)
    return ParseResult(papers=_dedupe(papers), problems=tuple(problems))


def _load_list(raw: bytes) -> list[Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; deep nesting is RecursionError.
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise SourceError(f"reply is not JSON ({why}): {_excerpt(raw)}", transient=False) from None
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and "error" in data:
        message = collapse(str(data["error"]))[:_EXCERPT]
        raise SourceError(f"source replied with an error: {message}", transient=False)
    raise SourceError(
        f"reply is a JSON {type(data).__name__}, expected an array: {_excerpt(raw)}",
        transient=False,
    )


def _excerpt(raw: bytes) -> str:
    head = raw[:_EXCERPT].decode("utf-8", "replace")
    suffix = "…" if len(raw) > _EXCERPT else ""
    return repr(head + suffix) if head else "<empty body>"


def _adapt_item(item: Any) -> Paper | str:
    """The item as a `Paper`, or a one-line reason why it cannot be one."""
    if not isinstance(item, dict):
        return f"item is a JSON {type(item).__name__}, not an object"
    try:
        parsed = _Item.model_validate(item)
    except ValidationError as exc:
        return _describe(exc)
    p = parsed.paper
    paper_id = _VERSION.sub("", p.id.strip())
    # Daily Papers ids are arXiv ids (the API documents no other kind); the id becomes a link.
    if not is_arxiv_id(paper_id):
        return f"paper.id is not an arXiv id: {p.id[:40]!r}"
    title = collapse(_text(p.title) or _text(parsed.title) or "")
    if not title:
        return f"paper {paper_id} has no title"
    return Paper(
        id=paper_id,
        title=title,
        abstract=collapse(_text(p.summary) or _text(parsed.summary) or ""),
        authors=_authors(p.authors or []),
        upvotes=_count(p.upvotes),
        comments=_count(parsed.num_comments),
        published_at=_utc(p.published_at),
        listed_on=_day(p.listed_at),
        organization=_org_name(p.organization) or _org_name(parsed.organization),
        ai_summary=collapse(_text(p.ai_summary) or "") or None,
        github_repo=_http_url(p.github_repo),
        project_page=_http_url(p.project_page),
        on_huggingface=True,
        authority=Authority.HUGGINGFACE,
    )


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}")
    return collapse("; ".join(parts))[:200]


def _count(value: int | None) -> int:
    # SQLite integers are 64-bit; a hostile reply must not overflow the store.
    return min(max(value or 0, 0), _MAX_COUNT)


def _authors(authors: list[_Author | None]) -> tuple[str, ...]:
    names = (collapse(_text(a.name) or "") for a in authors if a is not None and not a.hidden)
    return tuple(name for name in names if name)


def _org_name(org: _Org | None) -> str | None:
    if org is None:
        return None
    return collapse(_text(org.fullname) or "") or collapse(_text(org.name) or "") or None


def _utc(moment: datetime | None) -> datetime | None:
    # HF always sends `Z`; a naive timestamp is taken as UTC rather than as local time.
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _day(moment: datetime | None) -> date | None:
    utc = _utc(moment)
    return utc.date() if utc is not None else None


def _http_url(value: str | None) -> str | None:
    """Only plain http(s) links with a host survive: they end up as hrefs in e-mails."""
    url = (_text(value) or "").strip()
    if not url or _URL_UNSAFE.search(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def _dedupe(papers: Iterable[Paper]) -> tuple[Paper, ...]:
    """One paper per id, keeping the first position and the copy with the most upvotes."""
    best: dict[str, Paper] = {}
    for paper in papers:
        kept = best.get(paper.id)
        if kept is None or paper.upvotes > kept.upvotes:
            best[paper.id] = paper
    return tuple(best.values())
