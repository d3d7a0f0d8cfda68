"""Match every subscriber against every paper, fast and naive, and print one JSON line.

    python bench/match.py SUBSCRIBERS.yaml PAPERS.json [--baseline] [--sample 100] [--seed 1]

The files are loaded exactly as the daemon loads them (`app.load_subscriber_file`, `FileSource`).
The fast path is `matcher.Matcher`: build once, compile the membership plan, then decide
membership paper-major (`members`); `seconds` (= `membership_seconds`) covers the build, the plan and
every pair's membership (`membership_cpu_seconds`: the same in CPU time, steadier on a shared
machine). `explain` times reasons and highlights (`Matcher.explain`, what compose does
for a subscriber whose message it makes) on the sampled subscribers' pairs, per pair and
extrapolated to all pairs. The baseline is the reference evaluator `match.match`, one subscriber
at a time, each rule against each paper: over every subscriber with `--baseline`, otherwise over a
random sample of `--sample` subscribers, extrapolated linearly to all of them (`baseline.extrapolated`
says which). The sample's matches must equal the fast path's, reasons and highlights included.

`pairs` counts (subscriber, paper) matches; `sha256` is the digest of the sorted lines
`email<TAB>paper_id\\n`, so two implementations can be compared byte for byte.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import random
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from digestd.rules.matcher import Matcher, PaperHits
from digestd.rules.reference import match
from digestd.service.wiring import load_subscriber_file
from digestd.sources.file import FileSource


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subscribers", type=Path)
    parser.add_argument("papers", type=Path)
    parser.add_argument("--baseline", action="store_true", help="time the naive run on everyone")
    parser.add_argument("--sample", type=int, default=100, help="subscribers timed naively")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    start = time.perf_counter()
    sset = load_subscriber_file(args.subscribers)
    load_seconds = time.perf_counter() - start
    papers = asyncio.run(FileSource(args.papers).fetch(now=datetime.now(UTC))).papers
    subs = sset.subscribers
    n_subs, n_papers = len(subs), len(papers)

    rng = random.Random(args.seed)
    sampled = (
        range(n_subs) if args.baseline else rng.sample(range(n_subs), min(args.sample, n_subs))
    )
    watch = set(sampled)

    # Ranks in string order, so that sorting integers sorts the `email\tpaper_id` lines.
    email_rank = np.empty(n_subs, dtype=np.int64)
    email_rank[sorted(range(n_subs), key=lambda p: subs[p].email)] = np.arange(n_subs)
    paper_rank = {p.id: r for r, p in enumerate(sorted(papers, key=lambda p: p.id))}
    codes: list[np.ndarray] = []
    watched = np.array(sorted(watch), dtype=np.int64)
    seen: dict[int, list[PaperHits]] = {pos: [] for pos in watch}

    gc.freeze()  # config is long-lived: the collector need not rescan it while matching
    start, cpu = time.perf_counter(), time.process_time()
    matcher = Matcher.build(sset)
    _ = matcher.plan
    index_seconds = time.perf_counter() - start
    for hits, reached in matcher.members(papers):
        codes.append(email_rank[reached] * n_papers + paper_rank[hits.paper.id])
        for pos in np.intersect1d(reached, watched, assume_unique=True):
            seen[int(pos)].append(hits)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu

    # Reasons and highlights, as compose computes them: only for the pairs of a subscriber whose
    # message is being made, timed here on the sample and extrapolated per pair.
    start = time.perf_counter()
    explained = {pos: matcher.explain(seen[pos], subs[pos]) for pos in sampled}
    explain_seconds = time.perf_counter() - start
    sample_pairs = sum(len(seen[pos]) for pos in sampled)

    digest = hashlib.sha256()
    by_rank = np.argsort(email_rank)
    ids = sorted(p.id for p in papers)
    every = np.concatenate(codes) if codes else np.zeros(0, np.int64)
    del codes
    every.sort()  # in place: at 100,000 x 4,000 the pairs alone are 160 MB
    pairs = len(every)
    for block in range(0, pairs, 100_000):
        e, p = np.divmod(every[block : block + 100_000], n_papers)
        lines = (
            f"{subs[by_rank[i]].email}\t{ids[j]}\n"
            for i, j in zip(e.tolist(), p.tolist(), strict=False)
        )
        digest.update("".join(lines).encode())
    del every

    start = time.perf_counter()
    naive = {pos: match(papers, subs[pos]) for pos in sampled}
    naive_seconds = time.perf_counter() - start
    agree = all(naive[pos] == explained[pos] for pos in sampled)
    estimate = naive_seconds * n_subs / max(len(sampled), 1)
    out = {
        "subscribers": n_subs,
        "papers": n_papers,
        "pairs": pairs,
        "sha256": digest.hexdigest(),
        "seconds": round(seconds, 3),
        "membership_seconds": round(seconds, 3),
        "membership_cpu_seconds": round(cpu_seconds, 3),
        "explain": {
            "pairs_timed": sample_pairs,
            "seconds_timed": round(explain_seconds, 3),
            "us_per_pair": round(1e6 * explain_seconds / max(sample_pairs, 1), 1),
            "seconds_all_pairs": round(explain_seconds * pairs / max(sample_pairs, 1), 1),
        },
        "peak_rss_mb": peak_rss_mb(),
        "load_seconds": round(load_seconds, 3),
        "index_seconds": round(index_seconds, 3),
        "baseline": {
            "subscribers_timed": len(sampled),
            "seconds_timed": round(naive_seconds, 3),
            "seconds": round(estimate, 1),
            "extrapolated": len(sampled) < n_subs,
            "agrees": agree,
        },
        "speedup": round(estimate / seconds, 1) if seconds else None,
    }
    print(json.dumps(out))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
