"""The readers' relevance models, kept current: fitted on the store, trained from the ratings.

`refresh` brings a `RelevanceState` up to date with the store: the vocabulary is refitted on the
newest `CORPUS` papers when the corpus grew by a quarter (then every reader is retrained), and
otherwise only readers whose ratings changed since the last refresh are retrained. `save`/`load`
keep the state in one `.npz` beside the state file (relevance/persist.py; written atomically);
a missing or unusable file is rebuilt from the ratings, which are the truth.
`RelevanceState.relevance_for` gives the rules evaluator one reader's scores; `score_all` is the
batch form (every reader × the papers, one sparse product).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from digestd.core.addresses import address_key
from digestd.core.latex import readable_paper
from digestd.core.model import Paper
from digestd.relevance.features import Features, paper_text, should_refit
from digestd.relevance.model import Bank, ReaderModel, train
from digestd.relevance.persist import ModelFileError, dumps, loads_with_meta
from digestd.rules.reference import DEFAULT_THRESHOLD, ReaderScores
from digestd.store.sqlite import Store

__all__ = ["CORPUS", "RelevanceState", "load", "refresh", "save"]

CORPUS = 10_000  # newest papers the vocabulary is fitted on (a fit: ~7 s CPU, +150 MB peak)
SAMPLE = 200  # unrated corpus papers a linear model contrasts the likes with


@dataclass
class RelevanceState:
    features: Features
    models: dict[str, ReaderModel]
    fitted_on: int = 0  # corpus size at the fit
    trained_at: datetime | None = None
    threshold: float = DEFAULT_THRESHOLD
    _bank: Bank | None = field(default=None, repr=False)

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
        rows = self.features.papers(papers)
        scores = self.bank.scores_of(reader, rows, [p.id for p in papers])
        return ReaderScores(scores, self.threshold)

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
    store: Store, state: RelevanceState | None, *, now: datetime, seed: int = 0
) -> RelevanceState:
    """`state` brought up to date with the store's papers and ratings (a new state when refitted)."""
    corpus = store.papers.count()
    if state is None or should_refit(state.fitted_on, corpus):
        papers = [readable_paper(p) for p in store.papers.corpus(CORPUS)]
        features = Features.fit([paper_text(p) for p in papers])
        state = RelevanceState(features, {}, fitted_on=corpus)
        readers = store.ratings.readers()
    else:
        since = state.trained_at
        readers = store.ratings.changed_since(since) if since else store.ratings.readers()
    models = dict(state.models)
    for reader in readers:
        model = _train_one(store, state.features, reader, seed=seed)
        if model is None:
            models.pop(reader, None)
        else:
            models[reader] = model
    return RelevanceState(state.features, models, state.fitted_on, now, state.threshold)


def _train_one(store: Store, features: Features, reader: str, *, seed: int) -> ReaderModel | None:
    ratings = store.ratings.ratings(reader)
    papers = {p.id: readable_paper(p) for p in store.papers.get(r.paper_id for r in ratings)}
    rated = [r for r in ratings if r.paper_id in papers]  # an import still being fetched waits
    if not any(r.value > 0 for r in rated):
        return None
    rng = random.Random(f"{seed}:{reader}")
    pool = [p for p in store.papers.corpus(CORPUS // 4) if p.id not in papers]
    sample = rng.sample(pool, min(SAMPLE, len(pool)))
    return train(
        features.papers(papers[r.paper_id] for r in rated),
        [r.value for r in rated],
        [r.paper_id for r in rated],
        features.papers(readable_paper(p) for p in sample),
        fingerprint=features.fingerprint(),
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
