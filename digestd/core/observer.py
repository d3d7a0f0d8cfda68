"""What the pipeline reports while it works, for progress bars and metrics; it never needs an answer.

The pipeline calls an `Observer`; the shells decide what to do with it (a rich progress bar in
`run --once`, plain lines off a terminal, Prometheus counters in the daemon). Pure: no I/O here.
"""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ["NULL", "NullObserver", "Observer", "Phase"]

Phase = Literal["poll", "match", "send"]


class Observer(Protocol):
    def begin(self, phase: Phase, total: int | None = None) -> None:
        """A phase starts; `total` steps when known (subscribers to match, messages to send)."""

    def advance(self, phase: Phase, n: int = 1) -> None:
        """`n` more steps of `phase` are done."""

    def matched(self, kind: Literal["digest", "alert"], n_papers: int) -> None:
        """A message of `kind` with `n_papers` matched papers was composed (0: an empty period)."""

    def end(self, phase: Phase, summary: str) -> None:
        """The phase is over; `summary` is one human line ("54 papers, 3 new")."""


class NullObserver:
    """Reports go nowhere: the default, so the pipeline never checks for None."""

    def begin(self, phase: Phase, total: int | None = None) -> None:
        pass

    def advance(self, phase: Phase, n: int = 1) -> None:
        pass

    def matched(self, kind: Literal["digest", "alert"], n_papers: int) -> None:
        pass

    def end(self, phase: Phase, summary: str) -> None:
        pass


NULL = NullObserver()
