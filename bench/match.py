"""Match every subscriber against every paper, fast and naive, and print one JSON line.

    python bench/match.py SUBSCRIBERS.yaml PAPERS.json [--baseline] [--sample 100] [--seed 1]

The files are loaded exactly as the daemon loads them (`app.load_subscriber_file`, `FileSource`).
The fast path is `index.Matcher` (build once, then paper-major `per_paper`); `seconds` covers the
index build and the matching. The baseline is the reference evaluator `match.match`, one subscriber
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
from array import array
from datetime import UTC, datetime
from pathlib import Path

from digestd.core.model import Match
from digestd.rules.matcher import Matcher
from digestd.rules.reference import match, rank
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
    email_rank = {
        pos: r for r, pos in enumerate(sorted(range(n_subs), key=lambda p: subs[p].email))
    }
    paper_rank = {p.id: r for r, p in enumerate(sorted(papers, key=lambda p: p.id))}
    codes = array("q")
    seen: dict[int, list[Match]] = {pos: [] for pos in watch}

    start = time.perf_counter()
    matcher = Matcher.build(sset)
    index_seconds = time.perf_counter() - start
    gc.freeze()  # config and index are long-lived: the collector need not rescan them per paper
    for paper, found in matcher.per_paper(papers):
        prank = paper_rank[paper.id]
        for pos, m in found:
            codes.append(email_rank[pos] * n_papers + prank)
            if pos in watch:
                seen[pos].append(m)
    seconds = time.perf_counter() - start

    digest = hashlib.sha256()
    by_rank = sorted(range(n_subs), key=lambda p: email_rank[p])
    ids = sorted(p.id for p in papers)
    # Sorted bucket by bucket: one list of millions of Python ints would cost more than matching.
    width = max(n_subs * n_papers // 64, 1)
    buckets = [array("q") for _ in range(65)]
    for code in codes:
        buckets[code // width].append(code)
    del codes
    for bucket in buckets:
        for code in sorted(bucket):
            e, p = divmod(code, n_papers)
            digest.update(f"{subs[by_rank[e]].email}\t{ids[p]}\n".encode())
    pairs = sum(len(b) for b in buckets)
    del buckets

    start = time.perf_counter()
    naive = {pos: match(papers, subs[pos]) for pos in sampled}
    naive_seconds = time.perf_counter() - start
    agree = all(naive[pos] == rank(seen[pos]) for pos in sampled)
    estimate = naive_seconds * n_subs / max(len(sampled), 1)
    out = {
        "subscribers": n_subs,
        "papers": n_papers,
        "pairs": pairs,
        "sha256": digest.hexdigest(),
        "seconds": round(seconds, 3),
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
