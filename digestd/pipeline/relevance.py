"""The readers' relevance models, kept current: fitted on the store, trained from the ratings.

`refresh` brings a `RelevanceState` up to date with the store: the vocabulary is refitted on the
newest `CORPUS` papers when the corpus grew by a quarter (then every reader is retrained), and
otherwise only readers whose ratings changed since the last refresh are retrained. `save`/`load`
keep the state in one `.npz` beside the state file (relevance/persist.py; written atomically);
a missing or unusable file is rebuilt from the ratings, which are the truth.
With `backend="embeddings"` (relevance/dense.py) papers are sentence vectors instead: a fixed space,
never refitted; switching backend retrains every reader in the new space.
`RelevanceState.relevance_for` gives the rules evaluator one reader's scores; `score_all` is the
batch form (every reader × the papers, one sparse product).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from digestd.core.addresses import address_key
from digestd.core.latex import readable_paper
from digestd.core.model import Match, Paper, Reason
from digestd.relevance.dense import Embeddings
from digestd.relevance.explain import Liked, explain, why_text
from digestd.relevance.features import Features, paper_text, should_refit
from digestd.relevance.model import Bank, ReaderModel, train
from digestd.relevance.persist import ModelFileError, Space, dumps, loads_with_meta
from digestd.rules.reference import DEFAULT_THRESHOLD, ReaderScores
from digestd.store import StateStore

__all__ = ["CORPUS", "RelevanceState", "load", "refresh", "save"]

CORPUS = 10_000  # newest papers the vocabulary is fitted on (a fit: ~7 s CPU, +150 MB peak)
SAMPLE = 200  # unrated corpus papers a linear model contrasts the likes with
POOL = 2_500  # the newest papers those samples are drawn from
_ROW_CACHE = 50_000  # paper rows kept between readers (~200 nonzeros each)


@dataclass
class RelevanceState:
    features: Space
    models: dict[str, ReaderModel]
    fitted_on: int = 0  # corpus size at the fit
    trained_at: datetime | None = None
    threshold: float = DEFAULT_THRESHOLD
    _bank: Bank | None = field(default=None, repr=False)
    # Paper id → its row: compose asks reader after reader about mostly the same new papers.
    _rows: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def bank(self) -> Bank:
        if self._bank is None:
            self._bank = Bank.of(self.models, self.features.size)
        return self._bank

    def relevance_for(self, email: str, papers: Sequence[Paper]) -> ReaderScores | None:
        """One reader's scores of `papers`; None without a model (no likes)."""
        reader = address_key(email)
        if reader not in self.models or not papers:
            return None
        scores = self.bank.scores_of(reader, self._paper_rows(papers), [p.id for p in papers])
        return ReaderScores(scores, self.threshold)

    def _paper_rows(self, papers: Sequence[Paper]) -> Any:
        missing = [p for p in papers if p.id not in self._rows]
        if missing:
            if len(self._rows) > _ROW_CACHE:
                self._rows.clear()
            rows = self.features.papers(missing)
            self._rows.update((p.id, rows[i]) for i, p in enumerate(missing))
        return sp.vstack([self._rows[p.id] for p in papers], format="csr")

    def with_why(self, store: StateStore, email: str, matches: Sequence[Match]) -> list[Match]:
        """`matches` with, on each paper the reader's model ranked, a reason naming the nearest
        liked paper and the strongest shared terms ("similar to ‘X’ that you liked: a, b").

        For the few papers a mail shows: one product of their rows with the liked rows picks each
        one's nearest liked paper, `explain` names the terms. Unchanged without a model or likes."""
        reader = address_key(email)
        if reader not in self.models or not matches:
            return list(matches)
        liked = [readable_paper(p) for p in store.papers.get(store.ratings.likes(reader))]
        if not liked:
            return list(matches)
        liked_rows = self.features.papers(liked)
        rows = self._paper_rows([m.paper for m in matches])
        nearest = np.asarray((rows @ liked_rows.T).argmax(axis=1)).ravel()
        out = []
        for i, m in enumerate(matches):
            j = int(nearest[i])
            why = explain(rows[i], [Liked(liked[j].id, liked[j].title, liked_rows[j])], self.terms)
            if why is None or liked[j].id == m.paper.id:
                out.append(m)
                continue
            kept = tuple(r for r in m.reasons if r.field != "similar")
            rule = m.reasons[0].rule if m.reasons else 0
            out.append(replace(m, reasons=(*kept, Reason(rule, why_text(why), "liked"))))
        return out

    @property
    def terms(self) -> Sequence[str]:
        return self.features.terms

    def score_all(self, papers: Sequence[Paper]) -> dict[str, ReaderScores]:
        """Every reader with a model × `papers`: one sparse product."""
        if not papers or not self.models:
            return {}
        matrix = self.bank.score(self.features.papers(papers))
        ids = [p.id for p in papers]
        return {
            reader: ReaderScores(dict(zip(ids, map(float, matrix[i]), strict=True)), self.threshold)
            for i, reader in enumerate(self.bank.readers)
        }


def refresh(
    store: StateStore,
    state: RelevanceState | None,
    *,
    now: datetime,
    seed: int = 0,
    backend: str = "tfidf",
) -> RelevanceState:
    """`state` brought up to date with the store's papers and ratings (a new state when refitted).
    `backend`: "tfidf" or "embeddings" (the caller checked that the latter is installed)."""
    corpus = store.papers.count()
    if state is None or _stale(state, corpus, backend):
        state = RelevanceState(_space(store, backend), {}, fitted_on=corpus)
        readers = store.ratings.readers()
    else:
        since = state.trained_at
        readers = store.ratings.changed_since(since) if since else store.ratings.readers()
    models = dict(state.models)
    pool = _Pool.of(store, state.features) if readers else None
    fingerprint = state.features.fingerprint()  # hashes the vocabulary: once, not per reader
    for reader in readers:
        assert pool is not None
        model = _train_one(store, state.features, pool, reader, seed=seed, fingerprint=fingerprint)
        if model is None:
            models.pop(reader, None)
        else:
            models[reader] = model
    # A reader who reset their ratings or left keeps no model, even one loaded from the file.
    rated = set(store.ratings.readers())
    models = {reader: model for reader, model in models.items() if reader in rated}
    return RelevanceState(state.features, models, state.fitted_on, now, state.threshold)


def _stale(state: RelevanceState, corpus: int, backend: str) -> bool:
    """A new space is due: another backend's, or a vocabulary the corpus outgrew."""
    if isinstance(state.features, Embeddings) != (backend == "embeddings"):
        return True
    return isinstance(state.features, Features) and should_refit(state.fitted_on, corpus)


def _space(store: StateStore, backend: str) -> Space:
    if backend == "embeddings":
        return Embeddings()  # fixed: nothing to fit
    papers = [readable_paper(p) for p in store.papers.corpus(CORPUS)]
    return Features.fit([paper_text(p) for p in papers])


@dataclass(frozen=True, slots=True)
class _Pool:
    """Recent papers, read and turned into rows once per refresh: each reader's corpus sample."""

    ids: list[str]
    rows: Any  # csr_matrix

    @classmethod
    def of(cls, store: StateStore, features: Space) -> _Pool:
        papers = [readable_paper(p) for p in store.papers.corpus(POOL)]
        return cls([p.id for p in papers], features.papers(papers))

    def sample(self, rng: random.Random, excluding: set[str]) -> Any:
        allowed = [i for i, pid in enumerate(self.ids) if pid not in excluding]
        return self.rows[sorted(rng.sample(allowed, min(SAMPLE, len(allowed))))]


def _train_one(
    store: StateStore, features: Space, pool: _Pool, reader: str, *, seed: int, fingerprint: str
) -> ReaderModel | None:
    ratings = store.ratings.ratings(reader)
    papers = {p.id: readable_paper(p) for p in store.papers.get(r.paper_id for r in ratings)}
    rated = [r for r in ratings if r.paper_id in papers]  # an import still being fetched waits
    if not any(r.value > 0 for r in rated):
        return None
    rng = random.Random(f"{seed}:{reader}")
    return train(
        features.papers(papers[r.paper_id] for r in rated),
        [r.value for r in rated],
        [r.paper_id for r in rated],
        pool.sample(rng, set(papers)),
        fingerprint=fingerprint,
        seed=rng.randrange(1 << 30),
    )


def save(path: Path, state: RelevanceState) -> None:
    """Written beside, then renamed over: a crash leaves the old file or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    meta = {"fitted_on": str(state.fitted_on)}
    if state.trained_at is not None:
        meta["trained_at"] = state.trained_at.isoformat()
    tmp.write_bytes(dumps(state.features, state.models, meta=meta))
    os.replace(tmp, path)


def load(path: Path) -> RelevanceState | None:
    """The saved state, or None when there is none or it cannot be used (then: `refresh`)."""
    try:
        features, models, meta = loads_with_meta(path.read_bytes())
        fitted_on = int(meta.get("fitted_on", "0"))
        trained = meta.get("trained_at")
        trained_at = datetime.fromisoformat(trained) if trained else None
    except (OSError, ModelFileError, ValueError):
        return None
    return RelevanceState(features, models, fitted_on, trained_at)
