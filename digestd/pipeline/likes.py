"""`like:` lists into ratings: ids from the file and its like files, missing papers fetched once.

For every subscriber: the ids of `like:` and of each like file (relevance/likesfile.py); the papers
the store lacks are fetched in one pass for everyone through the arXiv API (`sources.arxiv.fetch_ids`,
batched `id_list`, throttled by the getter), stored as first seen when they were published (an old
paper is never "new" in a digest), and each id becomes an imported like. A rating the reader gave
by a click is never overwritten by an import, and an import already recorded is left as it is.
Problems (broken files, unknown ids) are reported
and the rest goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from digestd.core.addresses import address_key
from digestd.core.errors import ConfigProblem, SourceError
from digestd.core.model import Paper, Subscriber
from digestd.pipeline.paper_merge import record_papers
from digestd.relevance.likesfile import read_like_file
from digestd.sources.arxiv import ARXIV_API, fetch_ids
from digestd.sources.http import HttpGetter
from digestd.store import StateStore

__all__ = ["LikeReport", "import_likes", "like_ids"]


@dataclass(frozen=True, slots=True)
class LikeReport:
    liked: int = 0  # imported likes newly recorded
    fetched: int = 0  # papers fetched from arXiv
    unknown: tuple[str, ...] = ()  # ids arXiv did not return
    skipped: int = 0  # file entries naming no arXiv paper
    problems: tuple[ConfigProblem, ...] = ()
    fetch_error: str | None = None


def like_ids(sub: Subscriber, *, base: Path) -> tuple[list[str], list[ConfigProblem], int]:
    """The subscriber's liked ids (inline first, then each file's), problems, skipped entries."""
    ids = list(sub.likes)
    problems: list[ConfigProblem] = []
    skipped = 0
    for name in sub.like_files:
        found = read_like_file(name, base=base)
        ids += found.ids
        problems += found.problems
        skipped += found.skipped
    return list(dict.fromkeys(ids)), problems, skipped


async def import_likes(
    store: StateStore,
    getter: HttpGetter | None,
    subscribers: Sequence[Subscriber],
    *,
    now: datetime,
    base: Path,
    url: str = ARXIV_API,
    asked: set[str] | None = None,
) -> LikeReport:
    """Record every subscriber's `like:` list as imported likes (see the module's docstring).

    `asked`: ids already requested from arXiv (by an earlier call): not requested again, so an id
    arXiv does not know costs one request per process, not one per digest run; updated here."""
    wanted: dict[str, list[str]] = {}
    problems: list[ConfigProblem] = []
    skipped = 0
    for sub in subscribers:
        ids, found, n = like_ids(sub, base=base)
        problems += found
        skipped += n
        if ids:
            wanted[address_key(sub.email)] = ids
    every = list(dict.fromkeys(i for ids in wanted.values() for i in ids))
    known = store.papers.known(every)
    missing = [i for i in every if i not in known and (asked is None or i not in asked)]
    fetched, error = await _fetch(store, getter, missing, now=now, url=url)
    if asked is not None and error is None:
        asked.update(missing)
    have = set(store.papers.known(every))
    liked = _record(store, wanted, have, now=now)
    unknown = tuple(i for i in missing if i not in have) if error is None else ()
    return LikeReport(liked, fetched, unknown, skipped, tuple(problems), error)


async def _fetch(
    store: StateStore, getter: HttpGetter | None, ids: list[str], *, now: datetime, url: str
) -> tuple[int, str | None]:
    if not ids or getter is None:
        return 0, None
    try:
        result = await fetch_ids(getter, ids, now=now, url=url)
    except SourceError as exc:
        return 0, str(exc)  # the likes already stored still count; the rest waits for next time
    asked = set(ids)
    papers = list({p.id: p for p in result.papers if p.id in asked}.values())
    for seen, group in _by_first_seen(papers, now).items():
        record_papers(store, group, seen_at=seen)
    return len(papers), None


def _by_first_seen(papers: Sequence[Paper], now: datetime) -> dict[datetime, list[Paper]]:
    """An imported paper is first seen when it was published: never a "new" paper of a digest."""
    groups: dict[datetime, list[Paper]] = {}
    for paper in papers:
        seen = min(paper.published_at, now) if paper.published_at else now
        groups.setdefault(seen, []).append(paper)
    return groups


def _record(
    store: StateStore, wanted: dict[str, list[str]], have: set[str], *, now: datetime
) -> int:
    count = 0
    with store.batch():
        for reader, ids in wanted.items():
            # Rated already (a click either way, or this import before): left as it is, so a
            # repeated import changes nothing and retrains nobody.
            rated = {r.paper_id for r in store.ratings.ratings(reader)}
            for pid in ids:
                if pid in have and pid not in rated:
                    store.ratings.rate(reader, pid, 1, at=now, origin="import")
                    count += 1
    return count
