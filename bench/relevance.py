"""Relevance: ranking quality on hand-labelled real abstracts, and scoring/training speed; one JSON line.

    python bench/relevance.py [--readers 10000] [--papers 1000] [--draws 20] [--seed 1]
                              [--backend embeddings]   # also the dense model (digestd[embeddings])

Quality: the 54 real titles and abstracts of tests/fixtures/hf_daily_papers_seed.json, one topic
each (bench/data/seed_topics.json). A reader likes k papers of one topic (k = 1, 3, 5; `--draws`
random draws per topic and k); the other papers are ranked, and precision@5 and nDCG@10 count the
remaining papers of that topic. Three rankings in the same run: the relevance model (nearest liked
papers below 5 likes, the linear model from 5), the topic's obvious keywords as an `any:` rule
ranked by digestd's score (non-matching papers after, in random order), and random order; with
`--backend embeddings` a fourth, the same models over all-MiniLM-L6-v2 vectors ("embeddings_*").

Speed: a synthetic corpus (Zipf words, 5,000 papers fitted, `--papers` new ones) and `--readers`
readers with models (70% linear, 30% nearest with 1-4 likes): one `Bank.score` of all readers × the
new papers (median of 3, wall and CPU time: on a shared machine the CPU time is the honest figure,
`load_average` says how shared), the peak memory, and training one reader with 200 ratings (median
of 20).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from digestd.core.model import Paper, Rule, Subscriber
from digestd.core.text import make_term
from digestd.relevance.dense import Embeddings
from digestd.relevance.features import Features, paper_text
from digestd.relevance.model import Bank, ReaderModel, train
from digestd.rules.reference import match

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tests" / "fixtures" / "hf_daily_papers_seed.json"
LABELS = ROOT / "bench" / "data" / "seed_topics.json"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def load_seed() -> tuple[list[Paper], dict[str, str], dict[str, list[str]]]:
    raw = json.loads(SEED.read_text())
    papers = [
        Paper(id=r["paper"]["id"], title=r["paper"]["title"], abstract=r["paper"]["summary"])
        for r in raw
    ]
    labels = json.loads(LABELS.read_text())
    return papers, labels["topics"], labels["keywords"]


def precision_at(ranked: list[str], relevant: set[str], k: int) -> float:
    return sum(1 for p in ranked[:k] if p in relevant) / k


def ndcg_at(ranked: list[str], relevant: set[str], k: int) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, p in enumerate(ranked[:k]) if p in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal if ideal else 0.0


def model_ranking(
    features: Features | Embeddings,
    x: sp.csr_matrix,
    ids: list[str],
    liked: list[int],
    rng: random.Random,
) -> list[str]:
    others = [i for i in range(len(ids)) if i not in liked]
    sample = rng.sample(others, min(20, len(others)))  # the corpus sample: unrated papers
    model = train(
        x[liked], [1] * len(liked), [ids[i] for i in liked], x[sample], seed=rng.randrange(1 << 30)
    )
    assert model is not None
    scores = Bank.of({"r": model}, features.size).score(x[others])[0]
    order = np.argsort(-scores, kind="stable")
    return [ids[others[i]] for i in order]


def keyword_ranking(
    papers: list[Paper], liked: list[int], words: list[str], rng: random.Random
) -> list[str]:
    others = [p for i, p in enumerate(papers) if i not in liked]
    rule = Rule(any=tuple(make_term(w) for w in words))
    hits = [m.paper.id for m in match(others, Subscriber(email="r@example.org", rules=(rule,)))]
    rest = [p.id for p in others if p.id not in set(hits)]
    rng.shuffle(rest)
    return hits + rest


def quality(draws: int, seed: int, backend: str = "tfidf") -> dict[str, object]:
    """`backend="embeddings"` adds the dense model's ranking of the same draws ("embeddings_*"),
    its corpus samples from a generator of its own so that the other figures stay comparable."""
    papers, topics, keywords = load_seed()
    ids = [p.id for p in papers]
    features = Features.fit([paper_text(p) for p in papers])
    x = features.papers(papers)
    rng = random.Random(seed)
    dense = Embeddings() if backend == "embeddings" else None
    dense_x = dense.papers(papers) if dense is not None else None
    dense_rng = random.Random(seed + 1)
    names = ("model", "keywords", "random", *(("embeddings",) if dense is not None else ()))
    out: dict[str, object] = {}
    for k in (1, 3, 5):
        scores: dict[str, list[float]] = {f"{m}_{q}": [] for m in names for q in ("p5", "ndcg10")}
        for topic, words in keywords.items():
            members = [i for i, pid in enumerate(ids) if topics[pid] == topic]
            if len(members) - k < 2:
                continue
            for _ in range(draws):
                liked = rng.sample(members, k)
                relevant = {ids[i] for i in members if i not in liked}
                others = [pid for i, pid in enumerate(ids) if i not in liked]
                shuffled = others[:]
                rng.shuffle(shuffled)
                rankings = [
                    ("model", model_ranking(features, x, ids, liked, rng)),
                    ("keywords", keyword_ranking(papers, liked, words, rng)),
                    ("random", shuffled),
                ]
                if dense is not None:
                    dense_ranked = model_ranking(dense, dense_x, ids, liked, dense_rng)
                    rankings.append(("embeddings", dense_ranked))
                for name, ranked in rankings:
                    scores[f"{name}_p5"].append(precision_at(ranked, relevant, 5))
                    scores[f"{name}_ndcg10"].append(ndcg_at(ranked, relevant, 10))
        out[f"k{k}"] = {name: round(statistics.fmean(v), 3) for name, v in scores.items()}
    return out


def synthetic_corpus(n: int, rng: np.random.Generator, vocabulary: int = 60_000) -> list[str]:
    words = np.array([f"w{i}" for i in range(vocabulary)])
    ranks = np.minimum(rng.zipf(1.2, size=(n, 160)), vocabulary) - 1
    return [" ".join(words[row]) for row in ranks]


def speed(n_readers: int, n_papers: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    corpus = synthetic_corpus(5000, rng)
    features = Features.fit(corpus)
    x = features.transform(corpus)
    new = features.transform(synthetic_corpus(n_papers, rng))
    # Train a handful of real models, then give every reader one of them with its weights shuffled
    # over the vocabulary: same shape and density as 10,000 trained models, without training each.
    base_rss = rss_mb()
    models: dict[str, ReaderModel] = {}
    linear = train(x[:200], [1] * 100 + [-1] * 100, [str(i) for i in range(200)], x[200:400])
    assert linear is not None and linear.kind == "linear"
    for r in range(n_readers):
        if r % 10 < 7:
            cols = rng.choice(features.size, size=linear.rows.nnz, replace=False)
            row = sp.csr_matrix(
                (linear.rows.data, (np.zeros(len(cols), dtype=np.int64), cols)),
                shape=(1, features.size),
            )
            models[f"r{r}"] = ReaderModel("linear", row, bias=linear.bias)
        else:
            liked = rng.choice(x.shape[0], size=int(rng.integers(1, 5)), replace=False)
            models[f"r{r}"] = ReaderModel("nearest", x[liked])
    bank = Bank.of(models, features.size)
    times, cpu = [], []
    for _ in range(3):
        start, start_cpu = time.perf_counter(), time.process_time()
        scores = bank.score(new)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert scores.shape == (n_readers, n_papers)
    train_times, train_cpu = [], []
    labels = [1] * 100 + [-1] * 100
    for i in range(20):
        rows = rng.choice(x.shape[0], size=400, replace=False)
        start, start_cpu = time.perf_counter(), time.process_time()
        train(x[rows[:200]], labels, [str(r) for r in rows[:200]], x[rows[200:]], seed=i)
        train_times.append(time.perf_counter() - start)
        train_cpu.append(time.process_time() - start_cpu)
    return {
        "vocabulary": features.size,
        "bank_rows": int(bank.rows.shape[0]),
        "bank_nnz": int(bank.rows.nnz),
        "score_seconds_median": round(statistics.median(times), 3),
        "score_seconds_runs": [round(t, 3) for t in times],
        "score_cpu_seconds_median": round(statistics.median(cpu), 3),
        "rss_before_models_mb": round(base_rss, 1),
        "peak_rss_mb": round(peak, 1),
        "train_200_ms_median": round(1000 * statistics.median(train_times), 1),
        "train_200_cpu_ms_median": round(1000 * statistics.median(train_cpu), 1),
        "load_average": round(os.getloadavg()[0], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=10_000)
    parser.add_argument("--papers", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--backend",
        choices=("tfidf", "embeddings"),
        default="tfidf",
        help="embeddings: also rank with the dense model (needs digestd[embeddings])",
    )
    args = parser.parse_args()
    figures = {
        "quality": quality(args.draws, args.seed, args.backend),
        "readers": args.readers,
        "papers": args.papers,
        **speed(args.readers, args.papers, args.seed),
    }
    print(json.dumps(figures, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
