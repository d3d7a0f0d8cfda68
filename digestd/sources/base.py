"""The `Source` protocol: what the pipeline needs from anything that yields papers."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from digestd.core.model import ParseResult

__all__ = ["Source"]


class Source(Protocol):
    """A place papers come from, polled once per tick.

    `fetch` returns everything of one poll or raises `SourceError`: a failed poll never yields a
    partial batch, so nothing from it is stored or marked as seen.
    """

    name: str

    async def fetch(self, *, now: datetime) -> ParseResult: ...
