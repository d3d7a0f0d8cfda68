"""The one place a `state` setting becomes a store: a path → SQLite, `postgresql://…` → PostgreSQL.

A second backend is a module of its own (`store/postgres/`), chosen here; callers see the
`StateStore` protocol and never test which backend they hold. The PostgreSQL driver is imported
only when a PostgreSQL state is opened: a SQLite installation does not pay for it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from digestd.core.redact import redact
from digestd.store.protocols import StateStore

__all__ = [
    "explain_error",
    "is_postgres",
    "open_store",
    "operational_errors",
    "probe_state",
    "state_label",
    "store_errors",
]


def is_postgres(state: str | Path) -> bool:
    """Whether a `state` setting names a PostgreSQL database rather than a file."""
    return isinstance(state, str) and state.startswith(("postgresql://", "postgres://"))


def open_store(state: str | Path, *, password: str | None = None) -> StateStore:
    """Open (creating and migrating) the state `state` names.

    `password` is for PostgreSQL only (from `state_password_file` or the environment; libpq
    also reads PGPASSWORD by itself).
    :raises sqlite3.Error | psycopg.Error: see `store_errors`; `explain_error` words them.
    """
    if is_postgres(state):
        from digestd.store.postgres import PgStore  # the driver only when used

        return PgStore(str(state), password=password)
    from digestd.store.sqlite import Store

    return Store(state)


def state_label(state: str | Path) -> str:
    """The state as a person may read it: a file's path, or the URL with its password masked."""
    if not is_postgres(state):
        return str(state)
    from digestd.store.postgres.database import pg_label

    return pg_label(str(state))


def probe_state(state: str | Path, *, password: str | None = None) -> str:
    """What `digestd check` says of the state, changing nothing: a file is writable (or not
    created yet), a database is reachable; either way, the schema version found.

    :raises sqlite3.Error | psycopg.Error | OSError: it is not usable.
    """
    if is_postgres(state):
        from digestd.store.postgres.database import pg_probe

        return pg_probe(str(state), password)
    from digestd.store.sqlite import probe

    return probe(Path(state))


def store_errors() -> tuple[type[Exception], ...]:
    """The database errors any backend raises, for an `except` that means "the state failed"."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def operational_errors() -> tuple[type[Exception], ...]:
    """The errors of a state that cannot be used right now (read-only, full, unreachable), as
    opposed to a bug: a job logs them and the next run tries again."""
    import psycopg

    return (sqlite3.OperationalError, psycopg.OperationalError)


def explain_error(state: str | Path, exc: BaseException) -> str:
    """One line for a person: what is wrong with the state, what to do; never a password."""
    if is_postgres(state):
        from digestd.store.postgres.database import pg_explain

        return pg_explain(str(state), exc)
    from digestd.store.sqlite import explain

    if isinstance(exc, sqlite3.Error):
        return explain(Path(state), exc)
    return redact(f"the state file {state}: {exc}")
