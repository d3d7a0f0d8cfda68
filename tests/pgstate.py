"""A PostgreSQL state for tests: a schema of its own on the machine's server, dropped after.

The server is the one the machines and CI start (127.0.0.1:5432, trust auth, database `test`);
DIGESTD_TEST_PG names another. Unreachable: the PostgreSQL cases skip, saying why, or fail
with DIGESTD_REQUIRE_PG=1 (for CI).
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
import pytest

__all__ = ["PG_URL", "pg_schema", "require_pg", "schema_url"]

PG_URL = os.environ.get("DIGESTD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def _unreachable() -> str | None:
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_URL} is unreachable ({' '.join(str(exc).split())})"
    return None


def require_pg() -> None:
    """Skip the calling test, saying why, when the server cannot be reached; fail it instead
    when DIGESTD_REQUIRE_PG=1 (CI, where a missing server must not pass as skipped tests)."""
    reason = _unreachable()
    if reason is not None:
        if os.environ.get("DIGESTD_REQUIRE_PG") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def schema_url(schema: str) -> str:
    """`PG_URL` with every connection's search_path set to `schema`."""
    options = quote(f"-csearch_path={schema}")
    return f"{PG_URL}{'&' if '?' in PG_URL else '?'}options={options}"


@contextmanager
def pg_schema(prefix: str = "pgstore") -> Iterator[str]:
    """A fresh, empty schema; yields a state URL that uses it. Dropped afterwards."""
    require_pg()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield schema_url(name)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{name}" CASCADE')
