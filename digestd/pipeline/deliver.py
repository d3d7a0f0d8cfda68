"""Deliver: send what the outbox holds once its time has come (`deliver/drain.py` does the work)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from digestd.deliver import drain
from digestd.deliver.drain import DeliverReport
from digestd.pipeline.deps import Deps

__all__ = ["DeliverReport", "deliver_due"]


async def deliver_due(deps: Deps, *, now: datetime, clock: Callable[[], datetime]) -> DeliverReport:
    """Send every queued message whose time has come, committing each outcome before the next send.

    `clock` is read after each send so the stored times are true ones; `stopping` is checked between
    messages so a shutdown finishes the messages in flight and leaves the rest queued. Up to
    `options.connections` messages are in flight at once (see `drain`).
    """
    return await drain.drain(deps, now=now, clock=clock, workers=deps.options.connections)
