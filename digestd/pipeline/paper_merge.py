"""Recording what a poll listed: papers merged with what is stored, then written.

Merging is the pipeline's decision (`digestd.core.merge`); the store only reads and writes rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from digestd.core.merge import merge, merge_all
from digestd.core.model import Paper
from digestd.store import StateStore

__all__ = ["record_papers"]


def record_papers(store: StateStore, papers: Sequence[Paper], *, seen_at: datetime) -> list[Paper]:
    """Insert unknown papers, merge known ones; return the inserted ones with first_seen_at.

    A paper known already (from another source, or in another version) is merged with what
    is stored and is not new: the ledger keys on its id, so it is never delivered twice. A paper
    listed twice in `papers` counts once, merged in order. One transaction (or the caller's
    batch): the rows read are the rows overwritten.
    """
    batch = merge_all(papers)
    with store.batch():
        known = store.papers.known([p.id for p in batch])
        rows = [merge(known[p.id], p) if p.id in known else p for p in batch]
        store.papers.save(rows, seen_at=seen_at)
    first_seen = seen_at.astimezone(UTC)  # as the store gives it back
    return [replace(p, first_seen_at=first_seen) for p in batch if p.id not in known]
