"""Per-reader relevance models and scoring every reader against a batch of papers at once.

A reader's model is a few sparse rows over the `Features` vocabulary (`ReaderModel`):
- **nearest** (fewer than `MIN_POSITIVES` likes): the liked papers' own TF-IDF rows; a paper scores
  its cosine similarity to the nearest liked paper;
- **linear** (enough likes): one row of weights, as arxiv-sanity-lite: a linear SVM of the reader's
  likes against their dislikes and a sample of the corpus (balanced classes), pruned to its
  `KEEP_WEIGHTS` strongest terms; a paper scores sigmoid(2 × margin): 0.5 on the boundary, 0.88
  one margin inside (logistic regression ranked alike here and trained 10× slower).
Both give a score from 0 to 1, which `similar>=x` compares. A reader without likes (only dislikes,
or nothing) has no model: `similar` never holds for them and their ranking is unchanged.

`Bank` stacks every reader's rows into one sparse matrix, so scoring a batch is one sparse product
(all rows × the new papers), a bias and a sigmoid for the linear rows, then a max per reader.
A dense-embedding backend fits the same shape: rows are vectors, a paper is a vector, score = max.
Pure: no I/O, no clock (randomness comes from a seed the caller passes).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

__all__ = ["KEEP_WEIGHTS", "MIN_POSITIVES", "Bank", "ReaderModel", "train"]

Kind = Literal["nearest", "linear"]
MIN_POSITIVES = 5  # below this a classifier overfits: similarity to the liked papers instead
MAX_NEAREST = 50  # the most recent likes kept as rows in nearest mode
KEEP_WEIGHTS = 1000  # strongest terms a linear model keeps (a compact model, a fast product)
_C = 0.1  # as arxiv-sanity-lite's SVM (0.01), a little less regularised: few ratings, short rows
_SCALE = 2.0  # margin → sigmoid(2 × margin), folded into the stored weights and bias
_DENSE_SHARE = 0.5  # rows fuller than this (embeddings) are multiplied as dense arrays
_CHUNK_ROWS = 4096  # rows scored at once: bounds the dense intermediate (rows × papers)


@dataclass(frozen=True, slots=True)
class ReaderModel:
    """One reader's rows over a vocabulary (`fingerprint`); `liked` names nearest rows' papers."""

    kind: Kind
    rows: sp.csr_matrix  # float32, k × vocabulary size
    bias: float = 0.0
    liked: tuple[str, ...] = ()
    fingerprint: str = ""

    def top_terms(self, terms: Sequence[str], n: int = 10) -> tuple[list[str], list[str]]:
        """What the model learned: its n most positive and most negative terms (none in a space
        without terms: an embedding's dimensions name nothing)."""
        if not terms:
            return [], []
        weights = np.asarray(self.rows.sum(axis=0)).ravel()
        order = np.argsort(weights)
        positive = [terms[i] for i in order[::-1][:n] if weights[i] > 0]
        negative = [terms[i] for i in order[:n] if weights[i] < 0]
        return positive, negative


def train(
    rated: sp.csr_matrix,
    labels: Sequence[int],
    ids: Sequence[str],
    sample: sp.csr_matrix,
    *,
    fingerprint: str = "",
    seed: int = 0,
) -> ReaderModel | None:
    """A reader's model from their rated papers' rows (`labels` +1 like / -1 dislike, oldest
    first) and a corpus sample (rows of papers they did not rate); None without a like."""
    y = np.asarray(labels)
    liked = np.flatnonzero(y > 0)
    if len(liked) == 0:
        return None
    if len(liked) < MIN_POSITIVES:
        keep = liked[-MAX_NEAREST:]
        rows = sp.csr_matrix(rated[keep], dtype=np.float32)
        return ReaderModel(
            "nearest", rows, liked=tuple(ids[i] for i in keep), fingerprint=fingerprint
        )
    return _linear(rated, y, sample, fingerprint, seed)


def _linear(
    rated: sp.csr_matrix,
    y: npt.NDArray[np.int_],
    sample: sp.csr_matrix,
    fingerprint: str,
    seed: int,
) -> ReaderModel:
    negatives = sp.vstack([rated[y < 0], sample], format="csr")
    x = sp.vstack([rated[y > 0], negatives], format="csr")
    target = np.r_[np.ones(int((y > 0).sum())), np.zeros(negatives.shape[0])]
    if negatives.shape[0] == 0:  # nothing to contrast with: a centroid of the likes
        centroid = sp.csr_matrix(rated[y > 0].mean(axis=0), dtype=np.float32)
        return ReaderModel("nearest", centroid, fingerprint=fingerprint)
    model = LinearSVC(C=_C, class_weight="balanced", max_iter=5000, random_state=seed)
    with warnings.catch_warnings():
        # An unconverged SVM still ranks; the warning would only reach a log nobody can act on.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, target)
    weights = (_SCALE * model.coef_.ravel()).astype(np.float32)
    if weights.size > KEEP_WEIGHTS:
        weak = np.argpartition(np.abs(weights), -KEEP_WEIGHTS)[:-KEEP_WEIGHTS]
        weights[weak] = 0.0
    row = sp.csr_matrix(weights.reshape(1, -1))
    bias = _SCALE * float(model.intercept_[0])
    return ReaderModel("linear", row, bias=bias, fingerprint=fingerprint)


@dataclass(frozen=True, slots=True)
class Bank:
    """Every reader's rows stacked: reader i owns rows offsets[i]:offsets[i+1]."""

    readers: tuple[str, ...]
    rows: sp.csr_matrix
    offsets: npt.NDArray[np.int64]
    bias: npt.NDArray[np.float32]  # per row
    linear: npt.NDArray[np.bool_]  # per row: a probability (sigmoid) rather than a cosine

    @classmethod
    def of(cls, models: Mapping[str, ReaderModel], size: int) -> Bank:
        readers = tuple(sorted(models))
        blocks = [models[r].rows for r in readers]
        counts = [b.shape[0] for b in blocks]
        offsets = np.zeros(len(readers) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        rows = (
            sp.vstack(blocks, format="csr", dtype=np.float32)
            if blocks
            else sp.csr_matrix((0, size), dtype=np.float32)
        )
        bias = np.repeat([np.float32(models[r].bias) for r in readers], counts).astype(np.float32)
        linear = np.repeat([models[r].kind == "linear" for r in readers], counts).astype(bool)
        return cls(readers, rows, offsets, bias, linear)

    def score(self, papers: sp.csr_matrix) -> npt.NDArray[np.float32]:
        """readers × papers scores in [0, 1]: one sparse product, chunked by reader."""
        out = np.zeros((len(self.readers), papers.shape[0]), dtype=np.float32)
        if not self.readers or papers.shape[0] == 0:
            return out
        columns = sp.csc_matrix(papers.T, dtype=np.float32)  # csc: ~20% faster products here
        start = 0
        while start < len(self.readers):
            stop = int(np.searchsorted(self.offsets, self.offsets[start] + _CHUNK_ROWS, "right"))
            stop = min(max(stop - 1, start + 1), len(self.readers))
            out[start:stop] = self._chunk(columns, start, stop)
            start = stop
        return out

    def _chunk(self, columns: sp.csr_matrix, first: int, last: int) -> npt.NDArray[np.float32]:
        lo, hi = int(self.offsets[first]), int(self.offsets[last])
        block = self.rows[lo:hi]
        if block.nnz > _DENSE_SHARE * block.shape[0] * block.shape[1]:
            # Embedding rows are full: BLAS on arrays is ~20x faster than a sparse product here.
            raw = block.toarray() @ columns.toarray()
        else:
            raw = (block @ columns).toarray()
        raw += self.bias[lo:hi, None]
        linear = self.linear[lo:hi]
        if linear.any():
            raw[linear] = 1.0 / (1.0 + np.exp(-raw[linear]))
        starts = self.offsets[first:last] - lo
        return np.maximum.reduceat(np.clip(raw, 0.0, 1.0), starts, axis=0)

    def scores_of(self, reader: str, papers: sp.csr_matrix, ids: Sequence[str]) -> dict[str, float]:
        """One reader's scores by paper id (for `rules.reference.ReaderScores`)."""
        try:
            i = self.readers.index(reader)
        except ValueError:
            return {}
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        one = Bank(
            (reader,),
            self.rows[lo:hi],
            np.array([0, hi - lo]),
            self.bias[lo:hi],
            self.linear[lo:hi],
        )
        row = one.score(papers)[0]
        return {pid: float(s) for pid, s in zip(ids, row, strict=True)}
