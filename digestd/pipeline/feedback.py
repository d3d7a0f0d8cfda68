"""Issue #16: a reader's "more / less like this" click recorded, and the relevance models brought up
to date off the event loop, so the next digest ranks by it.

`refresh_relevance` is the one refresh the daemon's digest job, `run --once` and a click all use:
in a thread with its own store connection (a refit must not block the loop), saved beside the
state file, and serialised by one lock so that an older refresh never overwrites a newer one.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from datetime import datetime
from pathlib import Path

from digestd.core.addresses import address_key
from digestd.pipeline.deps import Deps, Write, written
from digestd.pipeline.relevance import RelevanceState, load, refresh, save
from digestd.relevance.dense import MISSING, available
from digestd.store import StateStore

__all__ = ["forget_model", "model_path", "rate", "refresh_relevance"]

log = logging.getLogger(__name__)

# One refresh at a time per event loop (the daemon has one; tests start several).
_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def model_path(store: StateStore) -> Path | None:
    """Where the models are saved: beside a state file. A database has no "beside" (and several
    instances share it): there each instance keeps its models in memory and refits after a restart."""
    return Path(f"{store.path}.relevance.npz") if isinstance(store.path, Path) else None


def rate(store: StateStore, email: str, paper_id: str, value: int, *, now: datetime) -> None:
    """One verdict (+1 more, -1 less) of the reader on a paper; a later one replaces it. Only the
    store changes, so the page runs it on a connection of its own (`ReaderSite.write`)."""
    store.ratings.rate(address_key(email), paper_id, value, at=now, origin="click")


async def forget_model(deps: Deps, email: str, *, write: Write | None = None) -> int:
    """The reader's ratings (written through `write`) and model gone (the preferences page's
    reset); how many ratings."""
    reader = address_key(email)
    removed = await written(deps, write, lambda store: store.ratings.forget(reader))
    state = deps.relevance
    if state is not None and reader in state.models:
        models = {k: v for k, v in state.models.items() if k != reader}
        deps.relevance = RelevanceState(
            state.features, models, state.fitted_on, state.trained_at, state.threshold
        )
    return removed


async def refresh_relevance(deps: Deps, *, now: datetime) -> None:
    """The readers' models brought up to date with the ratings; nothing until someone rates.
    A failure keeps the previous models: relevance is a ranking aid, never a reason not to send."""
    store = deps.store
    # One refresh at a time, each reading the ratings once it holds the lock: a retrain that a
    # click started must not put back a model that a reset (queued behind it) has forgotten.
    lock = _LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        if store.ratings.count() == (0, 0):
            # Nobody rates (yet, or any more: the last reset or removal): no model, none kept.
            deps.relevance = None
            if (path := model_path(store)) is not None:
                path.unlink(missing_ok=True)
            return
        backend = _backend(deps.options.relevance_backend)
        previous, path = deps.relevance, model_path(store)

        def work() -> RelevanceState:
            side = store.side()
            try:
                loaded = previous or (load(path) if path else None)
                state = refresh(side, loaded, now=now, backend=backend)
                if path is not None:
                    save(path, state)
                return state
            finally:
                side.close()

        try:
            deps.relevance = await asyncio.to_thread(work)
        except Exception:
            log.exception("relevance models not refreshed; the previous ones stay")


def _backend(chosen: str) -> str:
    """The backend to train with: embeddings only when installed (`check` says so; the log too)."""
    if chosen == "embeddings" and not available():
        log.warning(MISSING)
        return "tfidf"
    return chosen
