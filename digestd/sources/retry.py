"""What every HTTP source shares about retrying: the retryable failure, the server's wait, the backoff."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

__all__ = ["RetryLater", "backoff_delay", "deadline", "server_wait"]

# `RateLimit: "api";r=0;t=16` (draft-ietf-httpapi-ratelimit-headers, as Hugging Face sends it).
_RATELIMIT_T = re.compile(r"(?:^|;)\s*t\s*=\s*(\d+)")


class RetryLater(Exception):
    """A failed attempt worth retrying: why, the HTTP status, and the server's wait if any."""

    def __init__(self, message: str, *, status: int | None = None, wait: float | None = None):
        super().__init__(message)
        self.status = status
        self.wait = wait


def server_wait(response: httpx.Response, now: datetime | None = None) -> float | None:
    """Seconds the server asks us to wait: `RateLimit`'s `t`, else `Retry-After`.

    A `Retry-After` HTTP date counts only when `now` is given to measure it from.
    """
    match = _RATELIMIT_T.search(response.headers.get("RateLimit", ""))
    if match:
        return float(match.group(1))
    retry_after = response.headers.get("Retry-After", "").strip()
    if retry_after.isdigit():
        return float(retry_after)
    if not retry_after or now is None:
        return None
    try:
        when = parsedate_to_datetime(retry_after)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(float((when - now).total_seconds()), 0.0)


def backoff_delay(attempt: int, wait: float | None, *, backoff: float, max_wait: float) -> float:
    """The server's wait when it named one, else exponential backoff; capped at `max_wait`."""
    if wait is not None:
        return min(wait, max_wait)
    # Jitter keeps several daemons behind one NAT from retrying in lockstep.
    return min(backoff * 2.0**attempt * random.uniform(1.0, 1.5), max_wait)


@asynccontextmanager
async def deadline(seconds: float) -> AsyncIterator[None]:
    """The whole request (connect, headers, every byte of the body) within `seconds`, else RetryLater.

    httpx's timeouts bound each read, so a peer sending one byte a second never trips them; this
    bounds the request itself, so a trickling source costs its own poll `seconds`, no more.
    """
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise RetryLater(
            f"no complete reply within {seconds:g}s (whole-request deadline)"
        ) from None
