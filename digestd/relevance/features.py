"""Text features: TF-IDF over title + abstract, folded exactly as rules fold text (core/text.py).

Owned here: the analyzer (folded words without stop words, plus word bigrams), fitting a vocabulary
and its idf on the store's papers (scikit-learn's `TfidfVectorizer`, sublinear tf), and turning
papers into l2-normalised sparse rows with a fitted vocabulary, so a paper scored today and one
scored next month share a space until the vocabulary is refitted (`fingerprint` changes then).
Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer, TfidfVectorizer
from sklearn.preprocessing import normalize

from digestd.core.model import Paper
from digestd.core.text import fold_words

__all__ = ["Features", "analyze", "paper_text", "should_refit"]

_STOP = frozenset(ENGLISH_STOP_WORDS) | {"paper", "propose", "proposed", "method", "results"}
# Enough papers that a term seen once is noise: drop it (fewer features, a smaller model).
_MIN_DF_FROM = 1000
MAX_FEATURES = 50_000


def paper_text(paper: Paper) -> str:
    return f"{paper.title}\n{paper.abstract}"


def analyze(text: str) -> list[str]:
    """Folded words (the rules' folding), stop words and numbers dropped, then word bigrams."""
    words = [w for w in fold_words(text) if len(w) > 1 and not w.isdigit() and w not in _STOP]
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]


@dataclass(frozen=True, slots=True)
class Features:
    """A fitted vocabulary: term → column, and each column's idf."""

    terms: tuple[str, ...]
    idf: npt.NDArray[np.float32]

    @classmethod
    def fit(cls, texts: Sequence[str], *, max_features: int = MAX_FEATURES) -> Features:
        """Fit on a corpus (the store's papers); an empty corpus gives an empty vocabulary."""
        if not texts:
            return cls((), np.zeros(0, dtype=np.float32))
        vectorizer = TfidfVectorizer(
            analyzer=analyze,
            sublinear_tf=True,
            min_df=2 if len(texts) >= _MIN_DF_FROM else 1,
            max_df=0.5 if len(texts) >= 20 else 1.0,  # in most papers: says nothing of a topic
            max_features=max_features,
            dtype=np.float32,
        )
        try:
            vectorizer.fit(texts)
        except ValueError:  # every text was only stop words
            return cls((), np.zeros(0, dtype=np.float32))
        terms = vectorizer.get_feature_names_out()
        return cls(tuple(str(t) for t in terms), vectorizer.idf_.astype(np.float32))

    @property
    def size(self) -> int:
        return len(self.terms)

    def fingerprint(self) -> str:
        """Names this vocabulary: reader models trained on another one must be retrained."""
        digest = hashlib.blake2b(digest_size=12)
        digest.update("\x1f".join(self.terms).encode())
        digest.update(self.idf.tobytes())
        return digest.hexdigest()

    def transform(self, texts: Iterable[str]) -> sp.csr_matrix:
        """l2-normalised TF-IDF rows (sublinear tf), float32; terms outside the vocabulary drop."""
        texts = list(texts)
        if not self.terms:
            return sp.csr_matrix((len(texts), 0), dtype=np.float32)
        counts = CountVectorizer(
            analyzer=analyze, vocabulary={t: i for i, t in enumerate(self.terms)}, dtype=np.float32
        ).transform(texts)
        counts = sp.csr_matrix(counts, dtype=np.float32)
        np.log(counts.data, out=counts.data)
        counts.data += 1.0
        weighted = counts @ sp.diags(self.idf, format="csr", dtype=np.float32)
        return sp.csr_matrix(normalize(weighted, norm="l2", copy=False), dtype=np.float32)

    def papers(self, papers: Iterable[Paper]) -> sp.csr_matrix:
        return self.transform(paper_text(p) for p in papers)


def should_refit(fitted_on: int, corpus: int) -> bool:
    """Refit when the corpus grew by a quarter since the fit (and always from nothing)."""
    return corpus > 0 and (fitted_on == 0 or corpus >= fitted_on * 1.25)
