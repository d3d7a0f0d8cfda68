"""The one-line status systemd shows (`systemctl status`): the store's line, or why work stopped."""

from __future__ import annotations

from collections.abc import Callable

from digestd.service import health
from digestd.service.clock import utcnow
from digestd.service.sdnotify import Notifier
from digestd.store import StateStore

__all__ = ["StatusLine"]


class StatusLine:
    def __init__(
        self,
        notifier: Notifier,
        store: StateStore,
        *,
        state_lost: Callable[[], str | None],
        stopping: Callable[[], bool],
    ) -> None:
        self._notifier = notifier
        self._store = store
        self._state_lost = state_lost  # the last known reason, without checking again
        self._stopping = stopping

    def text(self) -> str:
        lost = self._state_lost()
        if lost is not None:
            return f"STOPPED: {lost}"
        return health.status_line(self._store, now=utcnow())

    def tell(self) -> None:
        """Say it now, stopping or not (the state file went or came back)."""
        if self._notifier.enabled:
            self._notifier.status(self.text())

    def publish(self) -> None:
        """After a job: a stopping daemon has already said STOPPING, which stays."""
        if self._notifier.enabled and not self._stopping():
            self._notifier.status(self.text())
