"""The store's tests run against both backends: `state` is a SQLite file or a PostgreSQL schema
of its own (tests/pgstate.py), and `store` is opened on it through `open_store`, as callers do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pgstate import pg_schema

from digestd.store import StateStore, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | Path]:
    if request.param == "sqlite":
        yield tmp_path / "state" / "nested" / "digestd.sqlite3"
        return
    with pg_schema() as url:
        yield url


@pytest.fixture
def store(state: str | Path) -> Iterator[StateStore]:
    with open_store(state) as opened:
        yield opened
