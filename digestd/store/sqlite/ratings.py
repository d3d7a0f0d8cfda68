"""Ratings: what each reader liked (+1) and disliked (-1), the relevance model's teaching."""

from __future__ import annotations

from datetime import datetime

from digestd.store.protocols import Rating
from digestd.store.sqlite.database import Database
from digestd.store.sqlite.values import dt, ts

__all__ = ["SqliteRatings"]


class SqliteRatings:
    """The ratings table: one row per (reader, paper); a new verdict replaces the old."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def rate(
        self, reader: str, paper_id: str, value: int, *, at: datetime, origin: str = "click"
    ) -> None:
        if value not in (-1, 1):
            raise ValueError(f"a rating is +1 or -1, not {value!r}")
        with self._db.write() as db:
            db.execute(
                """INSERT INTO ratings (reader, paper_id, value, origin, at) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (reader, paper_id) DO UPDATE SET value = excluded.value,
                       origin = excluded.origin, at = excluded.at""",
                (reader, paper_id, value, origin, ts(at)),
            )

    def unrate(self, reader: str, paper_id: str) -> bool:
        with self._db.write() as db:
            cursor = db.execute(
                "DELETE FROM ratings WHERE reader = ? AND paper_id = ?", (reader, paper_id)
            )
        return cursor.rowcount > 0

    def ratings(self, reader: str) -> list[Rating]:
        rows = self._db.conn.execute(
            "SELECT * FROM ratings WHERE reader = ? ORDER BY at, paper_id", (reader,)
        ).fetchall()
        return [
            Rating(r["reader"], r["paper_id"], r["value"], dt(r["at"]), r["origin"]) for r in rows
        ]

    def likes(self, reader: str) -> list[str]:
        rows = self._db.conn.execute(
            "SELECT paper_id FROM ratings WHERE reader = ? AND value = 1 ORDER BY at, paper_id",
            (reader,),
        ).fetchall()
        return [r[0] for r in rows]

    def readers(self) -> list[str]:
        rows = self._db.conn.execute("SELECT DISTINCT reader FROM ratings ORDER BY reader")
        return [r[0] for r in rows.fetchall()]

    def changed_since(self, at: datetime) -> list[str]:
        rows = self._db.conn.execute(
            "SELECT DISTINCT reader FROM ratings WHERE at >= ? ORDER BY reader", (ts(at),)
        )
        return [r[0] for r in rows.fetchall()]

    def forget(self, reader: str) -> int:
        with self._db.write() as db:
            cursor = db.execute("DELETE FROM ratings WHERE reader = ?", (reader,))
        return cursor.rowcount

    def count(self) -> tuple[int, int]:
        row = self._db.conn.execute(
            "SELECT COALESCE(SUM(value = 1), 0), COALESCE(SUM(value = -1), 0) FROM ratings"
        ).fetchone()
        return int(row[0]), int(row[1])
