"""The relevance state as bytes: the vocabulary, its idf and every reader's model, in one `.npz`.

Plain arrays only (strings as fixed-width Unicode arrays), loaded with `allow_pickle=False`: a
tampered file can be refused, never executed. With the embeddings backend (relevance/dense.py) the
file names that space (`backend`, its dimension) instead of a vocabulary; the rows are its vectors.
A file from another format version, or one whose readers were trained on another vocabulary than
the one it carries, is refused with a clear error;
the ratings in the store are the truth and the models are retrained from them.
Pure: bytes in, bytes out (the caller reads and writes the file).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from digestd.relevance.dense import Embeddings
from digestd.relevance.features import Features
from digestd.relevance.model import ReaderModel

__all__ = ["FORMAT", "ModelFileError", "Space", "dumps", "loads", "loads_with_meta"]

Space = Features | Embeddings  # what papers become rows in: a TF-IDF vocabulary or an embedding

FORMAT = 1
_KINDS = ("nearest", "linear")


class ModelFileError(ValueError):
    """A model file that cannot be used (damaged, another format, another vocabulary)."""


def dumps(
    features: Space, models: Mapping[str, ReaderModel], *, meta: Mapping[str, str] | None = None
) -> bytes:
    """`meta`: a few strings the caller keeps with the models (when they were fitted, trained)."""
    readers = sorted(models)
    blocks = [models[r].rows for r in readers]
    rows = (
        sp.vstack(blocks, format="csr", dtype=np.float32)
        if blocks
        else sp.csr_matrix((0, features.size), dtype=np.float32)
    )
    counts = np.array([b.shape[0] for b in blocks], dtype=np.int64)
    liked = [models[r].liked for r in readers]
    arrays = {
        "format": np.array([FORMAT]),
        "fingerprint": np.array([features.fingerprint()]),
        "backend": np.array(["embeddings" if isinstance(features, Embeddings) else "tfidf"]),
        "size": np.array([features.size], dtype=np.int64),
        "terms": np.array(features.terms, dtype=str),
        "idf": features.idf,
        "readers": np.array(readers, dtype=str),
        "kinds": np.array([_KINDS.index(models[r].kind) for r in readers], dtype=np.int8),
        "bias": np.array([models[r].bias for r in readers], dtype=np.float64),
        "counts": counts,
        "data": rows.data,
        "indices": rows.indices.astype(np.int32),
        "indptr": rows.indptr.astype(np.int64),
        "liked_counts": np.array([len(x) for x in liked], dtype=np.int64),
        "liked": np.array([i for x in liked for i in x], dtype=str),
        "meta_keys": np.array(list(meta or {}), dtype=str),
        "meta_values": np.array(list((meta or {}).values()), dtype=str),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def loads(data: bytes) -> tuple[Space, dict[str, ReaderModel]]:
    """:raises ModelFileError: for anything but a file `dumps` wrote."""
    features, models, _ = loads_with_meta(data)
    return features, models


def loads_with_meta(data: bytes) -> tuple[Space, dict[str, ReaderModel], dict[str, str]]:
    """`loads`, and the `meta` strings saved with the models."""
    if not data.startswith(b"PK\x03\x04"):  # not a zip: never let numpy guess (pickle) at it
        raise ModelFileError("not a digestd relevance model file")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        features, models = _decode(arrays)
        keys, values = arrays.get("meta_keys", ()), arrays.get("meta_values", ())
        return features, models, {str(k): str(v) for k, v in zip(keys, values, strict=True)}
    except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"not a digestd relevance model file ({exc})") from None


def _space(a: dict[str, Any]) -> Space:
    """The space the file names; a file from before the embeddings backend is TF-IDF."""
    if "backend" in a and str(a["backend"][0]) == "embeddings":
        return Embeddings(size=int(a["size"][0]))
    return Features(tuple(str(t) for t in a["terms"]), a["idf"].astype(np.float32))


def _decode(a: dict[str, Any]) -> tuple[Space, dict[str, ReaderModel]]:
    if int(a["format"][0]) != FORMAT:
        raise ModelFileError(f"model format {int(a['format'][0])}, this digestd reads {FORMAT}")
    features = _space(a)
    fingerprint = features.fingerprint()
    if str(a["fingerprint"][0]) != fingerprint:
        raise ModelFileError("the vocabulary does not match its fingerprint (a damaged file)")
    counts = a["counts"]
    rows = sp.csr_matrix(
        (a["data"], a["indices"], a["indptr"]), shape=(int(counts.sum()), features.size)
    )
    starts = np.r_[0, np.cumsum(counts)]
    liked_starts = np.r_[0, np.cumsum(a["liked_counts"])]
    liked = [str(x) for x in a["liked"]]
    models = {}
    for i, reader in enumerate(str(r) for r in a["readers"]):
        models[reader] = ReaderModel(
            kind=_KINDS[int(a["kinds"][i])],  # type: ignore[arg-type]
            rows=sp.csr_matrix(rows[starts[i] : starts[i + 1]], dtype=np.float32),
            bias=float(a["bias"][i]),
            liked=tuple(liked[liked_starts[i] : liked_starts[i + 1]]),
            fingerprint=fingerprint,
        )
    return features, models
