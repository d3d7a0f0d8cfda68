"""The relevance model on real abstracts: cold start, nearest likes, the linear model, a reader who
dislikes everything, one product for every reader, persistence, and why a paper is similar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from digestd.core.model import Paper
from digestd.relevance.explain import Liked, explain, why_text
from digestd.relevance.features import Features, analyze, paper_text, should_refit
from digestd.relevance.model import MIN_POSITIVES, Bank, train
from digestd.relevance.persist import ModelFileError, dumps, loads

HERE = Path(__file__).resolve().parent
SEED = HERE.parent / "fixtures" / "hf_daily_papers_seed.json"


@pytest.fixture(scope="module")
def papers() -> list[Paper]:
    raw = json.loads(SEED.read_text())
    return [
        Paper(id=r["paper"]["id"], title=r["paper"]["title"], abstract=r["paper"]["summary"])
        for r in raw
    ]


@pytest.fixture(scope="module")
def features(papers: list[Paper]) -> Features:
    return Features.fit([paper_text(p) for p in papers])


@pytest.fixture(scope="module")
def x(features: Features, papers: list[Paper]) -> sp.csr_matrix:
    return features.papers(papers)


def index(papers: list[Paper], *ids: str) -> list[int]:
    where = {p.id: i for i, p in enumerate(papers)}
    return [where[i] for i in ids]


KV = ("2501.90011", "2503.90050")  # Task-KV, WindowKV: KV cache papers
KERNELS = ("2602.90004", "2602.90020", "2511.90038", "2601.90040", "2603.90028")


def test_text_is_folded_as_rules_fold_it_with_bigrams() -> None:
    assert analyze("Étude of the KV-Cache") == ["etude", "kv", "cache", "etude kv", "kv cache"]


def test_cold_start_no_likes_no_model(x: sp.csr_matrix) -> None:
    assert train(x[:0], [], [], x[:10]) is None


def test_a_reader_who_dislikes_everything_has_no_model(
    x: sp.csr_matrix, papers: list[Paper]
) -> None:
    labels = [-1] * len(papers)
    assert train(x, labels, [p.id for p in papers], x[:0]) is None


def test_few_likes_rank_the_nearest_topic_first(
    x: sp.csr_matrix, features: Features, papers: list[Paper]
) -> None:
    liked = index(papers, KV[0])
    model = train(x[liked], [1], [KV[0]], x[:5])
    assert model is not None and model.kind == "nearest" and model.liked == (KV[0],)
    scores = Bank.of({"ada": model}, features.size).score(x)[0]
    assert scores[liked[0]] == pytest.approx(1.0, abs=1e-5)  # the liked paper itself
    others = np.argsort(-scores)[1:4]
    assert index(papers, KV[1])[0] in others
    assert ((scores >= 0) & (scores <= 1)).all()


def test_enough_likes_train_a_linear_model_that_ranks_the_topic_above_the_rest(
    x: sp.csr_matrix, features: Features, papers: list[Paper]
) -> None:
    liked = index(papers, *KERNELS)
    rest = [i for i in range(len(papers)) if i not in liked]
    disliked = rest[:5]
    rated = liked + disliked
    model = train(x[rated], [1] * 5 + [-1] * 5, [papers[i].id for i in rated], x[rest[5:25]])
    assert model is not None and model.kind == "linear" and len(liked) >= MIN_POSITIVES
    scores = Bank.of({"ada": model}, features.size).score(x)[0]
    assert scores[liked].mean() > 0.5 > scores[rest].mean()
    positive, negative = model.top_terms(features.terms, 5)
    assert "kernel" in positive or "kernels" in positive
    assert negative


def test_one_product_scores_every_reader_as_each_alone(
    x: sp.csr_matrix, features: Features, papers: list[Paper]
) -> None:
    ids = [p.id for p in papers]
    models = {
        "ada": train(x[index(papers, *KV)], [1, 1], list(KV), x[:5]),
        "bob": train(x[index(papers, *KERNELS)], [1] * 5, list(KERNELS), x[20:40]),
        "cy": train(x[index(papers, KERNELS[0])], [1], [KERNELS[0]], x[:5]),
    }
    bank = Bank.of({k: m for k, m in models.items() if m is not None}, features.size)
    together = bank.score(x)
    for row, reader in enumerate(bank.readers):
        alone = Bank.of({reader: models[reader]}, features.size).score(x)[0]  # type: ignore[dict-item]
        np.testing.assert_allclose(together[row], alone, rtol=1e-5, atol=1e-6)
        assert bank.scores_of(reader, x, ids)[ids[0]] == pytest.approx(float(alone[0]), abs=1e-6)
    assert bank.scores_of("nobody", x, ids) == {}


def test_persistence_round_trip(x: sp.csr_matrix, features: Features, papers: list[Paper]) -> None:
    models = {
        "ada@example.org": train(x[index(papers, *KV)], [1, 1], list(KV), x[:5]),
        "bob@example.org": train(x[index(papers, *KERNELS)], [1] * 5, list(KERNELS), x[20:40]),
    }
    data = dumps(features, models)  # type: ignore[arg-type]
    again, loaded = loads(data)
    assert again.terms == features.terms and again.fingerprint() == features.fingerprint()
    assert loaded["ada@example.org"].liked == KV and loaded["bob@example.org"].kind == "linear"
    before = Bank.of(models, features.size).score(x)  # type: ignore[arg-type]
    np.testing.assert_array_equal(Bank.of(loaded, again.size).score(again.papers(papers)), before)
    assert len(data) < 200_000


def test_a_damaged_or_foreign_model_file_is_refused(features: Features) -> None:
    with pytest.raises(ModelFileError, match="not a digestd relevance model file"):
        loads(b"\x80\x04pickled?")
    with pytest.raises(ModelFileError):
        loads(b"PK\x03\x04 truncated")
    data = bytearray(dumps(features, {}))
    assert loads(bytes(data))[1] == {}


def test_why_names_the_nearest_liked_paper_and_shared_terms(
    x: sp.csr_matrix, features: Features, papers: list[Paper]
) -> None:
    liked = [Liked(p, papers[i].title, x[i]) for p, i in zip(KV, index(papers, *KV), strict=True)]
    liked.append(
        Liked(
            KERNELS[0], papers[index(papers, KERNELS[0])[0]].title, x[index(papers, KERNELS[0])[0]]
        )
    )
    target = index(papers, "2405.90034")[0]  # vAttention: memory for KV cache serving
    why = explain(x[target], liked, features.terms)
    assert why is not None and why.liked_id in KV
    text = why_text(why)
    assert text.startswith("similar to ‘") and "that you liked: " in text
    assert explain(x[target], [], features.terms) is None


def test_refit_policy() -> None:
    assert should_refit(0, 10) and not should_refit(0, 0)
    assert not should_refit(1000, 1200) and should_refit(1000, 1250)


def test_an_empty_corpus_has_an_empty_vocabulary() -> None:
    assert Features.fit([]).size == 0
    assert Features.fit(["the of and"]).transform(["anything"]).shape == (1, 0)
