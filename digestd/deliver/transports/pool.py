"""Several mailers used in parallel behind the one `Mailer` interface, with a global rate cap.

Each `SmtpMailer` is one SMTP connection (SMTP is sequential); the pool hands each send to an idle
one, so N concurrent callers use N connections. The rate cap spaces the starts of sends evenly over
all connections (`rate_limit` messages per second; 0 = no cap).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from digestd.core.model import Outcome
from digestd.deliver.transports.base import Mailer

__all__ = ["MailerPool", "RateLimiter"]


class RateLimiter:
    """Start slots 1/rate seconds apart; a caller waits for its slot (no burst beyond one)."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate < 0:
            raise ValueError("rate_limit must be 0 (none) or positive")
        self.interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self.interval  # reserved before sleeping: concurrent callers queue up
        if slot > now:
            await self._sleep(slot - now)


class MailerPool:
    """A `Mailer` over several mailers; each concurrent `send` gets an idle one."""

    def __init__(self, mailers: Sequence[Mailer], *, rate_limit: float = 0.0) -> None:
        if not mailers:
            raise ValueError("a mailer pool needs at least one mailer")
        self.mailers = tuple(mailers)
        self.limiter = RateLimiter(rate_limit)
        self._idle: asyncio.Queue[Mailer] | None = None

    @property
    def size(self) -> int:
        return len(self.mailers)

    def __repr__(self) -> str:
        return f"MailerPool({self.mailers[0]!r} x{self.size})"

    async def send(
        self, sender: str, recipient: str, data: bytes, *, canonical: bool = False
    ) -> Outcome:
        idle = self._queue()
        mailer = await idle.get()
        try:
            await self.limiter.wait()
            return await mailer.send(sender, recipient, data, canonical=canonical)
        finally:
            idle.put_nowait(mailer)

    async def aclose(self) -> None:
        for mailer in self.mailers:
            await mailer.aclose()

    def _queue(self) -> asyncio.Queue[Mailer]:
        # Created on first use, inside the running loop that will use it.
        if self._idle is None:
            self._idle = asyncio.Queue()
            for mailer in self.mailers:
                self._idle.put_nowait(mailer)
        return self._idle
