"""Ratings storage: one verdict per reader and paper (the latest wins), likes, forgetting a reader;
on both backends (`store` and `state` are tests/store/conftest.py's)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from digestd.store import StateStore as Store
from digestd.store import open_store

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def test_a_second_click_on_the_other_link_replaces_the_first(store: Store) -> None:
    store.ratings.rate("ada@example.org", "2502.60001", 1, at=T0)
    store.ratings.rate("ada@example.org", "2502.60001", -1, at=T0 + timedelta(minutes=1))
    (only,) = store.ratings.ratings("ada@example.org")
    assert (only.paper_id, only.value, only.at, only.origin) == (
        "2502.60001",
        -1,
        T0 + timedelta(minutes=1),
        "click",
    )
    assert store.ratings.likes("ada@example.org") == []


def test_likes_in_order_and_counts(store: Store) -> None:
    store.ratings.rate("ada@example.org", "2502.60002", 1, at=T0 + timedelta(hours=1))
    store.ratings.rate("ada@example.org", "2502.60001", 1, at=T0, origin="import")
    store.ratings.rate("bob@example.org", "2502.60001", -1, at=T0)
    assert store.ratings.likes("ada@example.org") == ["2502.60001", "2502.60002"]
    assert store.ratings.readers() == ["ada@example.org", "bob@example.org"]
    assert store.ratings.count() == (2, 1)
    assert store.ratings.changed_since(T0 + timedelta(minutes=30)) == ["ada@example.org"]


def test_removing_a_reader_removes_their_ratings(store: Store) -> None:
    store.ratings.rate("ada@example.org", "2502.60001", 1, at=T0)
    store.ratings.rate("ada@example.org", "2502.60002", -1, at=T0)
    store.ratings.rate("bob@example.org", "2502.60001", 1, at=T0)
    assert store.ratings.forget("ada@example.org") == 2
    assert store.ratings.ratings("ada@example.org") == []
    assert store.ratings.count() == (1, 0)
    assert store.ratings.unrate("bob@example.org", "2502.60001")
    assert not store.ratings.unrate("bob@example.org", "2502.60001")


def test_a_rating_is_plus_or_minus_one(store: Store) -> None:
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        store.ratings.rate("ada@example.org", "2502.60001", 2, at=T0)


def test_ratings_survive_reopening(state: str | Path) -> None:
    with open_store(state) as store:
        store.ratings.rate("ada@example.org", "2502.60001", 1, at=T0)
    with open_store(state) as store:
        assert store.status().ratings == (1, 0)
        assert store.ratings.likes("ada@example.org") == ["2502.60001"]
