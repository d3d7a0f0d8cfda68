"""Ratings on PostgreSQL: what each reader liked (+1) and disliked (-1), one row per (reader,
paper), a new verdict replacing the old (see `store/sqlite/ratings.py`)."""

from __future__ import annotations

from datetime import datetime

from digestd.store.postgres.database import PgDatabase
from digestd.store.postgres.values import Conn
from digestd.store.protocols import Rating
from digestd.store.sqlite.values import dt, ts

__all__ = ["PgRatings", "rating_counts"]


class PgRatings:
    """The ratings table (`_migration_14`)."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def rate(
        self, reader: str, paper_id: str, value: int, *, at: datetime, origin: str = "click"
    ) -> None:
        if value not in (-1, 1):
            raise ValueError(f"a rating is +1 or -1, not {value!r}")
        with self._db.single() as db:
            db.execute(
                """INSERT INTO ratings (reader, paper_id, value, origin, at)
                   VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (reader, paper_id) DO UPDATE SET value = excluded.value,
                       origin = excluded.origin, at = excluded.at""",
                (reader, paper_id, value, origin, ts(at)),
            )

    def unrate(self, reader: str, paper_id: str) -> bool:
        with self._db.single() as db:
            cursor = db.execute(
                "DELETE FROM ratings WHERE reader = %s AND paper_id = %s", (reader, paper_id)
            )
        return cursor.rowcount > 0

    def ratings(self, reader: str) -> list[Rating]:
        rows = self._db.conn.execute(
            "SELECT reader, paper_id, value, at, origin FROM ratings WHERE reader = %s"
            " ORDER BY at, paper_id",
            (reader,),
        )
        return [Rating(r[0], r[1], int(r[2]), dt(r[3]), r[4]) for r in rows]

    def likes(self, reader: str) -> list[str]:
        rows = self._db.conn.execute(
            "SELECT paper_id FROM ratings WHERE reader = %s AND value = 1 ORDER BY at, paper_id",
            (reader,),
        )
        return [str(r[0]) for r in rows]

    def readers(self) -> list[str]:
        rows = self._db.conn.execute("SELECT DISTINCT reader FROM ratings ORDER BY reader")
        return [str(r[0]) for r in rows]

    def changed_since(self, at: datetime) -> list[str]:
        rows = self._db.conn.execute(
            "SELECT DISTINCT reader FROM ratings WHERE at >= %s ORDER BY reader", (ts(at),)
        )
        return [str(r[0]) for r in rows]

    def forget(self, reader: str) -> int:
        with self._db.single() as db:
            cursor = db.execute("DELETE FROM ratings WHERE reader = %s", (reader,))
        return cursor.rowcount

    def count(self) -> tuple[int, int]:
        return rating_counts(self._db.conn)


def rating_counts(conn: Conn) -> tuple[int, int]:
    """(likes, dislikes) over every reader (also `digestd status`'s figure)."""
    row = conn.execute(
        "SELECT COUNT(*) FILTER (WHERE value = 1), COUNT(*) FILTER (WHERE value = -1) FROM ratings"
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)
