"""Cron periods in the subscriber's timezone, DST included."""

from datetime import UTC, datetime

import pytest

from digestd.core.periods import latest_slot, next_slot, period_key

WEEKDAYS_7 = "0 7 * * mon-fri"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2026, 11, 27, 6, 0), utc(2026, 11, 27, 6, 0)),  # exactly 07:00 Berlin: this slot
        (utc(2026, 11, 27, 5, 59, 59), utc(2026, 11, 26, 6, 0)),  # a second before: yesterday's
        (utc(2026, 11, 29, 12, 0), utc(2026, 11, 27, 6, 0)),  # Sunday: Friday's slot
        (utc(2026, 7, 1, 5, 0), utc(2026, 7, 1, 5, 0)),  # summer time: 07:00 CEST = 05:00 UTC
    ],
)
def test_latest_slot_in_subscriber_zone(now: datetime, expected: datetime) -> None:
    assert latest_slot(WEEKDAYS_7, "Europe/Berlin", now) == expected


def test_next_slot_is_strictly_after() -> None:
    slot = utc(2026, 11, 27, 6, 0)
    assert next_slot(WEEKDAYS_7, "Europe/Berlin", slot) == utc(2026, 11, 30, 6, 0)


def test_spring_forward_gap_fires_once() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29: the digest still goes out once that day.
    first = next_slot("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12, 0))
    assert first.date() == datetime(2026, 3, 29).date()
    assert next_slot("30 2 * * *", "Europe/Berlin", first) == utc(2026, 3, 30, 0, 30)


def test_fall_back_fold_fires_once() -> None:
    first = next_slot("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12, 0))
    second = next_slot("30 2 * * *", "Europe/Berlin", first)
    assert (second - first).total_seconds() > 20 * 3600


def test_period_key_is_utc_minutes() -> None:
    assert period_key(utc(2026, 11, 27, 6, 0, 31)) == "2026-11-27T06:00Z"
