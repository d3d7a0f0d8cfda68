"""Progress of `digestd run --once`: rich bars on a terminal, plain lines anywhere else.

Both are `Observer`s handed to the pipeline, which never imports rich.
"""

from __future__ import annotations

import time
from typing import IO, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
)

from digestd.core.observer import Observer, Phase
from digestd.service.logs import divert

__all__ = ["PlainProgress", "RichProgress", "make_progress"]

_LABELS: dict[Phase, str] = {"poll": "polling", "match": "matching", "send": "sending"}


class PlainProgress:
    """One line when a phase starts and one when it ends: fit for logs, pipes and cron mail."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.matched_papers = 0
        # Sources are polled side by side: a phase may begin again before it ends (first in, first out).
        self.started: dict[Phase, list[float]] = {}

    def begin(self, phase: Phase, total: int | None = None) -> None:
        self.started.setdefault(phase, []).append(time.monotonic())
        count = f" ({total})" if total is not None else ""
        print(f"{_LABELS[phase]}{count}…", file=self.out, flush=True)

    def advance(self, phase: Phase, n: int = 1) -> None:
        pass

    def matched(self, kind: Literal["digest", "alert"], n_papers: int) -> None:
        self.matched_papers += n_papers

    def end(self, phase: Phase, summary: str) -> None:
        took = ""
        if self.started.get(phase):
            took = f" in {time.monotonic() - self.started[phase].pop(0):.1f} s"
        print(f"{phase}: {summary}{took}", file=self.out, flush=True)

    def close(self) -> None:
        pass


class RichProgress:
    """A bar per phase with counts (a spinner while the poll's size is unknown)."""

    def __init__(self, out: IO[str]) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[summary]}"),
            console=Console(file=out),
            transient=False,
        )
        self.progress.start()
        # A bar per begin; `end` closes the oldest open one (sources are polled side by side).
        self._tasks: dict[Phase, list[TaskID]] = {}
        # A log line written straight to the terminal would land inside the bars being redrawn;
        # printed through their console it appears above them, whole.
        self._undivert = divert(self._print_log)

    def _print_log(self, line: str) -> None:
        self.progress.console.print(
            line, markup=False, highlight=False, emoji=False, soft_wrap=True
        )

    def begin(self, phase: Phase, total: int | None = None) -> None:
        task = self.progress.add_task(_LABELS[phase], total=total, summary="")
        self._tasks.setdefault(phase, []).append(task)

    def advance(self, phase: Phase, n: int = 1) -> None:
        if self._tasks.get(phase):
            self.progress.advance(self._tasks[phase][0], n)

    def matched(self, kind: Literal["digest", "alert"], n_papers: int) -> None:
        pass

    def end(self, phase: Phase, summary: str) -> None:
        if not self._tasks.get(phase):
            return
        task = self._tasks[phase].pop(0)
        if self.progress.tasks[task].total is None:  # the poll: one step, size unknown up front
            self.progress.update(task, total=1, completed=1)
        self.progress.update(task, summary=summary)

    def close(self) -> None:
        self._undivert()
        self.progress.stop()


def make_progress(out: IO[str]) -> PlainProgress | RichProgress:
    """Bars when `out` is a terminal, plain lines otherwise."""
    return RichProgress(out) if out.isatty() else PlainProgress(out)


def _check(p: PlainProgress | RichProgress) -> Observer:
    return p  # mypy checks both against the protocol
