"""Copying a SQLite state file into an empty PostgreSQL database (`digestd migrate --to`).

Every table of the file goes, row for row and column for column (both backends store the same
values: times as the same text, flags as 0/1), in foreign-key order, in ONE PostgreSQL
transaction; then each table's row count and an order-independent checksum of its rows are
compared on both sides before the commit. Any difference, or any error, rolls the whole copy
back: the target is left as empty as it was. The server secret (`meta.secret`) goes with the
rest, so every link and Message-ID made before keeps working; identity sequences continue after
the largest id ever given (SQLite's `sqlite_sequence`), so a retired unsubscribe id is never
given again.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from digestd.core.errors import DigestdError
from digestd.core.redact import redact
from digestd.store.postgres.database import PgDatabase, conninfo, pg_explain
from digestd.store.sqlite.database import Database

__all__ = ["MigrateFailed", "MigrateRefused", "TableCopy", "copy_state"]

_READ_ROWS = 5000  # rows fetched from SQLite at a time: a large outbox is not held in memory
_META_SKIPPED = frozenset({"schema_version"})  # each side's own, set by its migrations


class MigrateRefused(DigestdError):
    """The target database is not empty, or the source is no digestd state file."""

    hint = "migrate copies into an empty database: create one (or a schema) and try again"


class MigrateFailed(DigestdError):
    """The target database failed during the copy; nothing of it was kept."""

    hint = "the state file is unchanged; fix the database and run migrate again"


@dataclass(frozen=True, slots=True)
class TableCopy:
    """One table copied: rows on each side and whether their checksums agree."""

    table: str
    rows: int
    checksum: str


def copy_state(source: Path, target: str, *, password: str | None = None) -> list[TableCopy]:
    """Copy the SQLite state file `source` into the empty PostgreSQL database `target`.

    :raises MigrateRefused: `source` does not exist, or `target` holds data.
    :raises DigestdError: the copy does not verify (nothing is kept).
    :raises sqlite3.Error | psycopg.Error: either side fails (nothing is kept).
    """
    if not source.is_file():
        raise MigrateRefused(f"the state file {source} does not exist")
    try:
        _refuse_foreign_tables(target, password)
        lite = Database(source)  # brought to this digestd's schema version first, as a run would
        try:
            pg = PgDatabase(target, password=password)
            try:
                _refuse_data(pg, target)
                return _copy_all(lite.conn, pg, target)
            finally:
                pg.close()
        finally:
            lite.close()
    except psycopg.Error as exc:  # the target's: named by its URL, password masked
        raise MigrateFailed(pg_explain(target, exc)) from None


def _refuse_foreign_tables(target: str, password: str | None) -> None:
    """Before migrating the target: a schema with tables that are not digestd's is refused."""
    with psycopg.connect(conninfo(target, password), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    tables = {str(row[0]) for row in rows}
    if tables and "meta" not in tables:
        raise MigrateRefused(
            f"the target {redact(target)} already holds {len(tables)} table(s) that are not"
            f" digestd's ({', '.join(sorted(tables)[:5])})"
        )


def _refuse_data(pg: PgDatabase, target: str) -> None:
    found = {table: _count(pg.conn, table) for table in pg.tables() if table != "meta"}
    meta = pg.conn.execute("SELECT key FROM meta").fetchall()
    full = {t: n for t, n in found.items() if n}
    if any(row[0] not in _META_SKIPPED for row in meta):
        full["meta"] = len(meta)
    if full:
        listed = ", ".join(f"{n} {t}" for t, n in sorted(full.items()))
        raise MigrateRefused(f"the target {redact(target)} is not empty ({listed})")


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT COUNT(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


# -- the copy --------------------------------------------------------------------------------


def _copy_all(lite: sqlite3.Connection, pg: PgDatabase, target: str) -> list[TableCopy]:
    tables = _in_foreign_key_order(lite)
    missing = sorted(set(tables) - set(pg.tables()))
    if missing:
        raise MigrateRefused(
            f"the target {redact(target)} lacks table(s) {', '.join(missing)}: this digestd's"
            " PostgreSQL migrations do not match its SQLite ones"
        )
    done: list[TableCopy] = []
    with pg.write() as conn:
        for table in tables:
            columns = _columns(lite, table)
            _copy_table(lite, conn, table, columns)
            done.append(_verify(lite, conn, table, columns))
        _continue_identities(lite, conn)
    return done


def _in_foreign_key_order(lite: sqlite3.Connection) -> list[str]:
    """The file's tables, each after the tables its foreign keys name."""
    names = [
        str(row[0])
        for row in lite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
    ]
    needs = {
        name: {str(fk[2]) for fk in lite.execute(f'PRAGMA foreign_key_list("{name}")')} - {name}
        for name in names
    }
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and needs[n] <= set(ordered)]
        if not ready:  # a cycle: cannot happen in digestd's schema; copy the rest as listed
            ready = [n for n in names if n not in ordered]
        ordered += ready
    return ordered


def _columns(lite: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in lite.execute(f'PRAGMA table_info("{table}")')]


def _rows(lite: sqlite3.Connection, table: str, columns: list[str]) -> Iterator[tuple[Any, ...]]:
    listed = ", ".join(f'"{c}"' for c in columns)
    cursor = lite.execute(f'SELECT {listed} FROM "{table}"')
    while batch := cursor.fetchmany(_READ_ROWS):
        for row in batch:
            if table == "meta" and row[0] in _META_SKIPPED:
                continue
            yield tuple(row)


def _copy_table(
    lite: sqlite3.Connection, conn: psycopg.Connection[Any], table: str, columns: list[str]
) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    with conn.cursor().copy(statement) as copy:
        for row in _rows(lite, table, columns):
            copy.write_row(row)


def _verify(
    lite: sqlite3.Connection, conn: psycopg.Connection[Any], table: str, columns: list[str]
) -> TableCopy:
    """Count and checksum `table` on both sides.

    :raises DigestdError: they differ (the caller's transaction then rolls the copy back).
    """
    here_n, here = _checksum(_rows(lite, table, columns))
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(table)
    )
    with conn.cursor(name=f"digestd_verify_{table}") as cursor:  # server-side: streamed
        cursor.itersize = _READ_ROWS
        cursor.execute(query)
        pg_rows = (tuple(row) for row in cursor)
        if table == "meta":
            pg_rows = (row for row in pg_rows if row[0] not in _META_SKIPPED)
        there_n, there = _checksum(pg_rows)
    if (here_n, here) != (there_n, there):
        raise DigestdError(
            f"migrate: table {table} does not verify ({here_n} rows in the file, {there_n}"
            " copied, or their contents differ); nothing was kept"
        )
    return TableCopy(table, here_n, here[:16])


def _checksum(rows: Iterable[tuple[Any, ...]]) -> tuple[int, str]:
    """(row count, a digest of the rows that does not depend on their order)."""
    digests = sorted(hashlib.sha256(repr(_plain(row)).encode()).digest() for row in rows)
    return len(digests), hashlib.sha256(b"".join(digests)).hexdigest()


def _plain(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(bytes(v) if isinstance(v, memoryview | bytearray) else v for v in row)


def _continue_identities(lite: sqlite3.Connection, conn: psycopg.Connection[Any]) -> None:
    """Each identity column continues after the largest id the file ever gave."""
    given = dict(lite.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    identities = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
    ).fetchall()
    for table, column in identities:
        top = conn.execute(
            sql.SQL("SELECT COALESCE(MAX({}), 0) FROM {}").format(
                sql.Identifier(column), sql.Identifier(table)
            )
        ).fetchone()
        last = max(int(top[0]) if top else 0, int(given.get(table, 0)))
        if last > 0:
            conn.execute(
                "SELECT setval(pg_get_serial_sequence(%s, %s), %s)",
                (_qualified(conn, table), column, last),
            )


def _qualified(conn: psycopg.Connection[Any], table: str) -> str:
    row = conn.execute("SELECT current_schema()").fetchone()
    schema = str(row[0]) if row else "public"
    return f'"{schema}"."{table}"'
