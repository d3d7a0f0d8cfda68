"""Render and assemble personalised messages, on the second core when there are many.

Composing a large run is CPU-bound and Python runs one thread at a time, so with more than one
core a big batch is rendered in a worker process while the main process matches the next batch
and writes the previous one to the outbox. Only plain data crosses: `MailJob`s in, message bytes
out. The worker runs the very function the main process uses (`assemble`), so the bytes are the
same either way; the outbox and SQLite stay in the main process (one writer), which queues a
message only after its bytes came back. A worker that dies (killed, out of memory) loses nothing:
its batch, and every later one, is rendered in the main process instead.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2

from digestd.core.model import Digest
from digestd.mail.mime import build_message
from digestd.mail.parts import Spliced
from digestd.mail.render import Environments, RenderContext, make_environments, templates_dir
from digestd.mail.shapes import TOKENS, page_template, personal_template, render_personal
from digestd.mail.webcopy import WebBody, body_for

__all__ = [
    "POOL_MIN",
    "Composed",
    "Composer",
    "MailJob",
    "WebCopy",
    "assemble",
    "composer",
    "web_copy",
]

log = logging.getLogger(__name__)

MAX_WORKERS = 4  # beyond this the single writer (the main process) is the bottleneck anyway
POOL_MIN = 200  # due digests below which a worker's start-up (~0.5 s) costs more than it saves


@dataclass(frozen=True, slots=True)
class MailJob:
    """Everything one personalised message depends on, as picklable values."""

    digest: Digest
    ctx: RenderContext
    sender: str
    to: str
    to_name: str | None
    message_id: str
    date: datetime
    headers: Mapping[str, str]
    web: RenderContext | None = None  # the web copy's context, when one is stored


@dataclass(frozen=True, slots=True)
class WebCopy:
    """A web copy to store: a shared `body` plus `fills`, or (`body` None) the `whole` page."""

    body: WebBody | None
    fills: Mapping[str, str]
    whole: bytes = b""  # zlib-compressed HTML


@dataclass(frozen=True, slots=True)
class Composed:
    """One message's unsigned bytes and its web copy.

    The bytes come spliced (`Spliced`): the long runs of a shape's template are `Part` objects
    shared by every message of the shape, so a batch pickles each once on its way back from a
    worker, and the outbox stores each once. Nothing is compressed: zlib in the workers and at
    every claim cost more of the two cores than writing the bytes.
    """

    message: Spliced
    web: WebCopy | None


def assemble(job: MailJob, envs: Environments) -> Composed:
    """The message's bytes (`render_personal` then `build_message`) and its web copy."""
    rendered = personal_template(job.digest, envs, job.ctx)  # filled as it is encoded
    message = build_message(
        rendered,
        sender=job.sender,
        to=job.to,
        to_name=job.to_name,
        message_id=job.message_id,
        date=job.date,
        headers=job.headers,
    )
    web = None if job.web is None else web_copy(job.digest, envs, job.web)
    return Composed(message, web)


def web_copy(digest: Digest, envs: Environments, ctx: RenderContext) -> WebCopy:
    """The page behind "view in browser": every paper, whole, no size budget.

    From the shape's template when it has one: the body is the same object for every copy of a
    shape, so a batch pickles it once on its way back from a worker.
    """
    shared = page_template(digest, envs, ctx)
    if shared is not None:
        template, values = shared
        return WebCopy(body_for(template, TOKENS), values)
    html = render_personal(digest, envs, ctx, budget=None).html
    return WebCopy(None, {}, zlib.compress(html.encode("utf-8"), 1))  # level 1: 4x faster than 6


class Composer:
    """Turns batches of jobs into bytes: in this process, or in a worker once it is warm."""

    def __init__(
        self, envs: Environments, pool: ProcessPoolExecutor | None = None, workers: int = 1
    ) -> None:
        self._envs = envs
        self._pool = pool
        self._workers = max(1, workers)
        # Rendering waits for no cold worker: batches go in-process until the warm-ups are done
        # (one per worker: each submit while none is idle starts another process).
        self._warm = [pool.submit(_ready) for _ in range(self._workers)] if pool is not None else []

    def ready(self, timeout: float | None = None) -> bool:
        """Whether batches now go to the workers, after waiting up to `timeout` s for them."""
        if self._pool is None:
            return False
        try:
            for warm in self._warm:
                warm.result(timeout=timeout)
        except TimeoutError:
            return False
        except BrokenProcessPool:
            self._lost()
            return False
        return self._pool is not None

    def submit(self, jobs: Sequence[MailJob]) -> Callable[[], list[Composed]]:
        """Start `jobs`; the returned call gives their bytes in order (rendering here if needed).

        With several workers the batch is split between them, so all render at once.
        """
        if self._pool is not None and all(w.done() for w in self._warm):
            size = -(-len(jobs) // self._workers) or 1
            parts = [list(jobs[i : i + size]) for i in range(0, len(jobs), size)]
            try:
                futures = [self._pool.submit(_assemble_all, part) for part in parts]
            except (BrokenProcessPool, RuntimeError):
                self._lost()
            else:
                return lambda: self._collect(futures, jobs)
        done = [assemble(job, self._envs) for job in jobs]
        return lambda: done

    def _collect(
        self, futures: Sequence[Future[list[Composed]]], jobs: Sequence[MailJob]
    ) -> list[Composed]:
        try:
            return [composed for future in futures for composed in future.result()]
        except BrokenProcessPool:
            self._lost()
            return [assemble(job, self._envs) for job in jobs]

    def _lost(self) -> None:
        if self._pool is not None:
            log.warning("compose worker died; composing the rest in the main process")
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None


@contextmanager
def composer(envs: Environments, n_due: int) -> Iterator[Composer]:
    """A `Composer` with a worker process for a large run on a multi-core machine."""
    dirs = template_dirs(envs)
    if n_due <= POOL_MIN or (os.cpu_count() or 1) < 2 or dirs is None:
        yield Composer(envs)
        return
    # spawn, not fork: the main process holds SQLite connections and threads.
    # As many workers as cores: the main process spends part of its time waiting for them.
    workers = min(os.cpu_count() or 1, MAX_WORKERS)
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init,
        initargs=(dirs[0] if dirs else None, os.getpid()),
    )
    try:
        yield Composer(envs, pool, workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def template_dirs(envs: Environments) -> list[Path] | None:
    """The override dirs `make_environments` was given ([] or [dir]), or None if built otherwise.

    Anything else (a test's own loader, another option) cannot be rebuilt in a worker faithfully,
    so such environments are only used in-process.
    """
    loader = envs.html.loader
    if not isinstance(loader, jinja2.ChoiceLoader) or loader is not envs.text.loader:
        return None
    paths: list[Path] = []
    for inner in loader.loaders:
        if not isinstance(inner, jinja2.FileSystemLoader) or len(inner.searchpath) != 1:
            return None
        paths.append(Path(inner.searchpath[0]))
    if not paths or paths[-1] != templates_dir() or len(paths) > 2:
        return None
    return paths[:-1]


_ENVS: Environments | None = None
_PARENT_CHECK = 0.5  # seconds between checks that the main process still lives


def _init(extra_dir: Path | None, parent: int) -> None:
    global _ENVS
    # The main process decides when to stop (Ctrl-C reaches the whole process group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _leave_with(parent)
    _ENVS = make_environments(extra_dir)


def _leave_with(parent: int) -> None:
    """Exit once `parent` is gone (kill -9, out of memory): an idle worker would wait for work
    for ever, as it holds the task queue's write end itself and so never sees EOF.

    A thread watching the parent id, not prctl(PR_SET_PDEATHSIG): that fires when the parent
    *thread* that started the worker ends, which a pool started from a short-lived thread would
    take for the parent's death.
    """
    if os.getppid() != parent:  # gone before we got here
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:  # an orphan is adopted by init (or a subreaper)
        time.sleep(_PARENT_CHECK)
    os._exit(1)  # nothing to save: the main process writes the outbox, not us


def _ready() -> bool:
    return _ENVS is not None


def _assemble_all(jobs: list[MailJob]) -> list[Composed]:
    assert _ENVS is not None
    return [assemble(job, _ENVS) for job in jobs]
