"""Why a paper is "similar": the nearest liked paper and the strongest terms they share.

A pure function the mail (and the preferences page) can call for the few papers they show:
`explain(paper row, liked rows)` → `Why`, and `why_text` for the words ("similar to ‘FlashAttention-4’
that you liked: kv cache, attention"). Rows are `Features` rows (l2-normalised), so the product of
two rows is their cosine and each shared term's share of it says how much that term counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from digestd.core.text import clean_header

__all__ = ["Liked", "Why", "explain", "why_text"]


@dataclass(frozen=True, slots=True)
class Liked:
    id: str
    title: str
    row: sp.csr_matrix  # 1 × vocabulary


@dataclass(frozen=True, slots=True)
class Why:
    liked_id: str
    liked_title: str
    similarity: float
    terms: tuple[str, ...]  # strongest first


def explain(
    row: sp.csr_matrix, liked: Sequence[Liked], terms: Sequence[str], *, n_terms: int = 3
) -> Why | None:
    """The liked paper nearest to `row` and the terms that made them near; None when nothing is
    shared (no likes, or no term in common)."""
    best: tuple[float, Liked, sp.csr_matrix] | None = None
    for item in liked:
        shared = row.multiply(item.row).tocsr()
        total = float(shared.sum())
        if total > 0 and (best is None or total > best[0]):
            best = (total, item, shared)
    if best is None:
        return None
    total, item, shared = best
    order = np.argsort(-shared.data)[:n_terms]
    # An embedding's dimensions are not terms: then the nearest liked paper alone is the reason.
    names = tuple(terms[int(shared.indices[i])] for i in order) if terms else ()
    return Why(item.id, item.title, total, names)


def why_text(why: Why) -> str:
    """'similar to ‘FlashAttention-4’ that you liked: kv cache, attention' (one line, bounded)."""
    title = clean_header(why.liked_title, limit=80)
    shared = f": {', '.join(why.terms)}" if why.terms else ""
    return f"similar to ‘{title}’ that you liked{shared}"
