"""The form guard's parts alone: the sliding-window limiter and its bounded memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from digestd.service.formguard import RateLimiter

NOW = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)


def test_sliding_window() -> None:
    limit = RateLimiter(2, timedelta(minutes=10))
    assert limit.allow("a", NOW) and limit.allow("a", NOW + timedelta(minutes=1))
    assert not limit.allow("a", NOW + timedelta(minutes=2))
    assert limit.allow("b", NOW + timedelta(minutes=2))
    assert limit.allow("a", NOW + timedelta(minutes=10, seconds=1))


def test_memory_stays_bounded_under_many_keys() -> None:
    limit = RateLimiter(1, timedelta(hours=1), max_keys=100)
    for i in range(1000):
        assert limit.allow(f"ip{i}", NOW)
    assert len(limit._seen) <= 100
