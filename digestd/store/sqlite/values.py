"""Conversions between Python values and their SQLite text, shared by the repositories.

Times are stored as fixed-width ISO-8601 UTC text so that text order is time order, and returned
as aware UTC datetimes; addresses are compared lowercased.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TypeVar

_T = TypeVar("_T")

# Well under SQLite's default limit of host parameters per statement (32766 since 3.32, 999 before).
_CHUNK = 500


def ts(value: datetime) -> str:
    """Aware datetime → fixed-width UTC text (always with microseconds: text order = time order)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime given to the store: {value!r}")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def opt_ts(value: datetime | None) -> str | None:
    return None if value is None else ts(value)


def dt(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def opt_dt(text: str | None) -> datetime | None:
    return None if text is None else dt(text)


def chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """`items` in slices small enough for one statement's parameters."""
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def marks(n: int) -> str:
    """`?, ?, …` for an IN list of `n` values."""
    return ",".join("?" * n)
