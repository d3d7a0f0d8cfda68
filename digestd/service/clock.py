"""The service's clock: the daemon and the CLI read the time here and pass `now` down."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)
