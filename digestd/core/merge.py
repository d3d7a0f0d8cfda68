"""One paper, whatever the source: how two records of the same arXiv id become one.

Each source knows part of the truth: Hugging Face the upvotes, comments and AI summary; arXiv the
categories and versions. The title, abstract and authors come from the record stating the newest
arXiv version (only arXiv's API and RSS state versions; a record without one never replaces one
with one), and between records of the same version from the more authoritative source
(`Authority`: arXiv API > Hugging Face > arXiv RSS > generic feed; the same kind refreshes itself).
A less authoritative record only fills what is missing, so a feed can never rewrite a paper that
arXiv or Hugging Face listed. The sources that listed the paper accumulate; the first sighting
stays the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from digestd.core.model import Paper

__all__ = ["merge", "merge_all"]


def merge(old: Paper, new: Paper) -> Paper:
    """`old` (stored) updated with what `new` (just fetched) knows better."""
    text = new if _newer_text(old, new) else old
    other = old if text is new else new
    hf = new if new.on_huggingface or not old.on_huggingface else old
    return replace(
        text,
        abstract=text.abstract or other.abstract,
        authors=text.authors or other.authors,
        upvotes=hf.upvotes,
        comments=hf.comments,
        published_at=_earliest(old.published_at, new.published_at),
        listed_on=new.listed_on or old.listed_on,
        organization=new.organization or old.organization,
        ai_summary=new.ai_summary or old.ai_summary,
        github_repo=new.github_repo or old.github_repo,
        project_page=new.project_page or old.project_page,
        first_seen_at=old.first_seen_at or new.first_seen_at,
        categories=text.categories or other.categories,
        sources=tuple(dict.fromkeys((*old.sources, *new.sources))),
        version=max((v for v in (old.version, new.version) if v is not None), default=None),
        on_huggingface=old.on_huggingface or new.on_huggingface,
        link=new.link or old.link,
        authority=text.authority,
    )


def merge_all(papers: Iterable[Paper]) -> list[Paper]:
    """One paper per id, merged in order, at the position of its first occurrence."""
    merged: dict[str, Paper] = {}
    for paper in papers:
        kept = merged.get(paper.id)
        merged[paper.id] = paper if kept is None else merge(kept, paper)
    return list(merged.values())


def _newer_text(old: Paper, new: Paper) -> bool:
    # At equal rank the new record wins: a refresh from the same kind of source.
    return _text_rank(new) >= _text_rank(old)


def _text_rank(paper: Paper) -> tuple[int, int]:
    return paper.version or 0, paper.authority


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    # The v1 date: a replacement's announcement day must not make a paper look newer.
    known = [d for d in (a, b) if d is not None]
    return min(known) if known else None
