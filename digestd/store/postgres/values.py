"""Reading rows from psycopg as the SQLite repositories do: by column name, or one value."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

__all__ = ["Conn", "dicts", "one_dict"]

Conn = psycopg.Connection[Any]


def dicts(conn: Conn, query: str, params: Any = ()) -> list[dict[str, Any]]:
    """Every row of `query`, each a dict by column name (what `sqlite3.Row` gave)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(query, params).fetchall()


def one_dict(conn: Conn, query: str, params: Any = ()) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(query, params).fetchone()
