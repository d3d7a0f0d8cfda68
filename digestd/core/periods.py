"""Pure schedule arithmetic: a subscriber's cron, read in their timezone, cut time into digest periods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from cronsim import CronSim

__all__ = ["date_label", "latest_slot", "local_time", "next_slot", "period_key"]

# cronsim yields times strictly before/after its start; nudging by a microsecond makes a slot that
# falls exactly on `now` count as already begun, and one exactly on `after` count as not yet.
_EPSILON = timedelta(microseconds=1)


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def latest_slot(schedule: str, timezone: str, now: datetime) -> datetime:
    """The most recent time at or before `now` when `schedule` fired in `timezone`, as aware UTC."""
    local = (now + _EPSILON).astimezone(_zone(timezone))
    slot: datetime = next(CronSim(schedule, local, reverse=True))
    return slot.astimezone(UTC)


def next_slot(schedule: str, timezone: str, after: datetime) -> datetime:
    """The first time strictly after `after` when `schedule` fires in `timezone`, as aware UTC."""
    local = after.astimezone(_zone(timezone))
    slot: datetime = next(CronSim(schedule, local))
    return slot.astimezone(UTC)


def period_key(slot: datetime) -> str:
    """A stable text key for the period that starts at `slot` (minute resolution, UTC)."""
    return slot.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def local_time(at: datetime, timezone: str) -> str:
    """`at` as the subscriber reads a time: their wall clock and zone, "2026-12-02 08:30 JST"."""
    return at.astimezone(_zone(timezone)).strftime("%Y-%m-%d %H:%M %Z")


def date_label(at: datetime, timezone: str) -> str:
    """The day `at` falls on for the subscriber, as a heading: "Wednesday 02 December 2026"."""
    return at.astimezone(_zone(timezone)).strftime("%A %d %B %Y")
