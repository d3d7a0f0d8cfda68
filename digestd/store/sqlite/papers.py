"""Papers seen, and which of them each subscriber's next message may still carry."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any, cast

from digestd.core.addresses import address_key
from digestd.core.model import Authority, Paper
from digestd.store.sqlite.database import Database
from digestd.store.sqlite.values import chunks, dt, marks, opt_dt, opt_ts, ts

__all__ = ["SqlitePapers"]


_PAPER_COLUMNS = (
    "id, title, abstract, authors, upvotes, comments, organization, published_at, listed_on,"
    " ai_summary, github_repo, project_page, first_seen_at, categories, sources, version,"
    " on_huggingface, link, authority"
)

# The row is the merge of what every source said (digestd.core.merge, done before writing), so a
# known paper is simply overwritten; only first_seen_at never changes.
_UPSERT_PAPER = """
INSERT INTO papers (id, title, abstract, authors, upvotes, comments, organization, published_at,
                    listed_on, ai_summary, github_repo, project_page, first_seen_at, updated_at,
                    categories, sources, version, on_huggingface, link, authority)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    title = excluded.title,
    abstract = excluded.abstract,
    authors = excluded.authors,
    upvotes = excluded.upvotes,
    comments = excluded.comments,
    organization = excluded.organization,
    published_at = excluded.published_at,
    listed_on = excluded.listed_on,
    ai_summary = excluded.ai_summary,
    github_repo = excluded.github_repo,
    project_page = excluded.project_page,
    updated_at = excluded.updated_at,
    categories = excluded.categories,
    sources = excluded.sources,
    version = excluded.version,
    on_huggingface = excluded.on_huggingface,
    link = excluded.link,
    authority = excluded.authority
"""


def _paper_params(paper: Paper, seen: str) -> tuple[Any, ...]:
    return (
        paper.id,
        paper.title,
        paper.abstract,
        json.dumps(list(paper.authors), ensure_ascii=False),
        paper.upvotes,
        paper.comments,
        paper.organization,
        opt_ts(paper.published_at),
        None if paper.listed_on is None else paper.listed_on.isoformat(),
        paper.ai_summary,
        paper.github_repo,
        paper.project_page,
        seen,
        seen,
        json.dumps(list(paper.categories)),
        json.dumps(list(paper.sources), ensure_ascii=False),
        paper.version,
        int(paper.on_huggingface),
        paper.link,
        int(paper.authority),
    )


def _paper_from_row(row: sqlite3.Row) -> Paper:
    return _paper_from_values(tuple(row[c] for c in _PAPER_FIELDS))


_PAPER_FIELDS = (
    "id", "title", "abstract", "authors", "upvotes", "comments", "organization", "published_at",
    "listed_on", "ai_summary", "github_repo", "project_page", "first_seen_at",
    "categories", "sources", "version", "on_huggingface", "link", "authority",
)  # fmt: skip


@functools.lru_cache(maxsize=4096)  # every subscriber's candidates are the same few rows
def _paper_from_values(values: tuple[Any, ...]) -> Paper:
    row = dict(zip(_PAPER_FIELDS, values, strict=True))
    return Paper(
        id=row["id"],
        title=row["title"],
        abstract=row["abstract"],
        authors=tuple(json.loads(row["authors"])),
        upvotes=row["upvotes"],
        comments=row["comments"],
        organization=row["organization"],
        published_at=opt_dt(row["published_at"]),
        listed_on=None if row["listed_on"] is None else date.fromisoformat(row["listed_on"]),
        ai_summary=row["ai_summary"],
        github_repo=row["github_repo"],
        project_page=row["project_page"],
        first_seen_at=dt(row["first_seen_at"]),
        categories=tuple(json.loads(row["categories"])),
        sources=tuple(json.loads(row["sources"])),
        version=row["version"],
        on_huggingface=bool(row["on_huggingface"]),
        link=row["link"],
        authority=Authority(row["authority"]),
    )


class SqlitePapers:
    """The papers table; merging what several sources said is the caller's (`core.merge`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def save(self, papers: Sequence[Paper], *, seen_at: datetime) -> None:
        """Write `papers` as they are: new ones first seen at `seen_at`, known ones overwritten
        (their first_seen_at kept). Joins the caller's transaction, if any."""
        seen = ts(seen_at)
        with self._db.write() as db:
            db.executemany(_UPSERT_PAPER, (_paper_params(p, seen) for p in papers))

    def known(self, ids: Sequence[str]) -> dict[str, Paper]:
        """The stored papers among `ids`, by id (inside the caller's transaction, if any)."""
        found: dict[str, Paper] = {}
        for chunk in chunks(ids):
            sql = f"SELECT {_PAPER_COLUMNS} FROM papers WHERE id IN ({marks(len(chunk))})"
            rows = self._db.conn.execute(sql, chunk)
            found.update((row["id"], _paper_from_row(row)) for row in rows)
        return found

    def count(self) -> int:
        return cast(int, self._db.scalar("SELECT COUNT(*) FROM papers"))

    def corpus(self, limit: int) -> list[Paper]:
        """The `limit` most recently first-seen papers: what the relevance vocabulary is fitted on."""
        rows = self._db.conn.execute(
            f"SELECT {_PAPER_COLUMNS} FROM papers ORDER BY first_seen_at DESC, id LIMIT ?", (limit,)
        )
        return [_paper_from_row(row) for row in rows]

    def get(self, ids: Iterable[str]) -> list[Paper]:
        """The stored papers with these ids, in the order asked; unknown ids are left out."""
        wanted = list(dict.fromkeys(ids))
        with self._db.read():
            found = self.known(wanted)
        return [found[i] for i in wanted if i in found]

    def candidates(self, subscriber: str, *, since: datetime) -> list[Paper]:
        """Papers first seen at or after `since` not yet reserved for `subscriber` in the ledger."""
        rows = self._db.conn.execute(
            f"""SELECT {_PAPER_COLUMNS} FROM papers p
                WHERE p.first_seen_at >= ?
                  AND NOT EXISTS (SELECT 1 FROM deliveries d
                                  WHERE d.subscriber = ? AND d.paper_id = p.id)
                ORDER BY p.upvotes DESC, p.id""",
            (ts(since), address_key(subscriber)),
        )
        return [_paper_from_row(row) for row in rows]

    def candidates_for(
        self, subscribers: Sequence[str], *, since: datetime
    ) -> dict[str, list[Paper]]:
        """`candidates` for each of `subscribers` from two queries, not one per subscriber.

        The papers are read and parsed once and shared between subscribers (same objects), in
        the order `candidates` gives; each subscriber's reserved ones are left out.
        """
        keys = list(dict.fromkeys(address_key(s) for s in subscribers))
        with self._db.read() as db:
            rows = db.execute(
                f"SELECT {_PAPER_COLUMNS} FROM papers WHERE first_seen_at >= ?"
                " ORDER BY upvotes DESC, id",
                (ts(since),),
            ).fetchall()
            papers = [_paper_from_row(row) for row in rows]
            reserved = _reserved(db, keys, ts(since))
        return {
            k: [p for p in papers if p.id not in reserved[k]] if k in reserved else list(papers)
            for k in keys
        }


def _reserved(db: sqlite3.Connection, keys: Sequence[str], since: str) -> dict[str, set[str]]:
    """Per subscriber key, the ids of papers seen since `since` that the ledger reserved."""
    reserved: dict[str, set[str]] = {}
    for chunk in chunks(keys):
        for subscriber, paper_id in db.execute(
            "SELECT d.subscriber, d.paper_id FROM deliveries d JOIN papers p"
            " ON p.id = d.paper_id AND p.first_seen_at >= ?"
            f" WHERE d.subscriber IN ({marks(len(chunk))})",
            (since, *chunk),
        ):
            reserved.setdefault(subscriber, set()).add(paper_id)
    return reserved
