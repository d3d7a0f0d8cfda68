"""The form guard's parts alone: the sliding-window limiter and its bounded memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from digestd.service.formguard import RateLimiter, rate_key

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


def test_an_ipv6_client_is_counted_by_its_64() -> None:
    assert (
        rate_key("2001:db8:1:2:aaaa::1") == rate_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    )
    assert rate_key("2001:db8:1:3::1") != rate_key("2001:db8:1:2::1")
    assert rate_key("::ffff:192.0.2.7") == rate_key("192.0.2.7") == "192.0.2.7"
    assert rate_key("unknown") == "unknown"
