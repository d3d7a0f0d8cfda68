"""Papers on PostgreSQL: the same rows and conversions as `store/sqlite/papers.py`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from digestd.core.addresses import address_key
from digestd.core.model import Paper
from digestd.store.postgres.database import PgDatabase
from digestd.store.postgres.values import Conn
from digestd.store.sqlite.papers import (  # the row format is the same on both backends
    _PAPER_COLUMNS,
    _UPSERT_PAPER,
    _paper_from_values,
    _paper_params,
)
from digestd.store.sqlite.values import ts

__all__ = ["PgPapers"]

_UPSERT = _UPSERT_PAPER.replace("?", "%s")


def _papers(conn: Conn, query: str, params: Any) -> list[Paper]:
    return [_paper_from_values(tuple(row)) for row in conn.execute(query, params)]


class PgPapers:
    """The papers table; merging what several sources said is the caller's (`core.merge`)."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def save(self, papers: Sequence[Paper], *, seen_at: datetime) -> None:
        """Write `papers` as they are: new ones first seen at `seen_at`, known ones overwritten."""
        seen = ts(seen_at)
        with self._db.write() as db:
            db.cursor().executemany(_UPSERT, [_paper_params(p, seen) for p in papers])

    def known(self, ids: Sequence[str]) -> dict[str, Paper]:
        papers = _papers(
            self._db.conn, f"SELECT {_PAPER_COLUMNS} FROM papers WHERE id = ANY(%s)", (list(ids),)
        )
        return {p.id: p for p in papers}

    def count(self) -> int:
        return cast(int, self._db.scalar("SELECT COUNT(*) FROM papers"))

    def get(self, ids: Iterable[str]) -> list[Paper]:
        wanted = list(dict.fromkeys(ids))
        found = self.known(wanted)
        return [found[i] for i in wanted if i in found]

    def candidates(self, subscriber: str, *, since: datetime) -> list[Paper]:
        """Papers first seen at or after `since` not yet reserved for `subscriber` in the ledger."""
        return _papers(
            self._db.conn,
            f"""SELECT {_PAPER_COLUMNS} FROM papers p
                WHERE p.first_seen_at >= %s
                  AND NOT EXISTS (SELECT 1 FROM deliveries d
                                  WHERE d.subscriber = %s AND d.paper_id = p.id)
                ORDER BY p.upvotes DESC, p.id""",
            (ts(since), address_key(subscriber)),
        )

    def candidates_for(
        self, subscribers: Sequence[str], *, since: datetime
    ) -> dict[str, list[Paper]]:
        """`candidates` for each of `subscribers` from two queries, papers shared."""
        keys = list(dict.fromkeys(address_key(s) for s in subscribers))
        with self._db.read() as db:
            papers = _papers(
                db,
                f"SELECT {_PAPER_COLUMNS} FROM papers WHERE first_seen_at >= %s"
                " ORDER BY upvotes DESC, id",
                (ts(since),),
            )
            reserved: dict[str, set[str]] = {}
            for subscriber, paper_id in db.execute(
                "SELECT d.subscriber, d.paper_id FROM deliveries d JOIN papers p"
                " ON p.id = d.paper_id AND p.first_seen_at >= %s WHERE d.subscriber = ANY(%s)",
                (ts(since), keys),
            ):
                reserved.setdefault(subscriber, set()).add(paper_id)
        return {
            k: [p for p in papers if p.id not in reserved[k]] if k in reserved else list(papers)
            for k in keys
        }
