"""Cost of the 90 KB size budget: rendering a digest with `fit` against one plain render (baseline).

Prints one JSON line: median seconds per digest for 20 and 500 matching papers, with and without the
budget, the ratios, and the HTML sizes. Run: .venv/bin/python bench/render_budget.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_budget import CTX, SUB, papers

from digestd.core.model import Digest
from digestd.mail.render import make_environments, render_digest


def median_seconds(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    envs = make_environments()
    result: dict[str, object] = {"bench": "render_budget", "repeat": args.repeat}
    for n in (20, 500):
        digest = Digest(SUB, "digest", papers(n))
        plain = median_seconds(
            lambda d=digest: render_digest(d, envs, CTX, budget=None), args.repeat
        )
        fitted = median_seconds(lambda d=digest: render_digest(d, envs, CTX), args.repeat)
        html = render_digest(digest, envs, CTX).html
        result[f"n{n}_baseline_s"] = round(plain, 4)
        result[f"n{n}_budget_s"] = round(fitted, 4)
        result[f"n{n}_ratio"] = round(fitted / plain, 2)
        result[f"n{n}_html_bytes"] = len(html.encode())
        result[f"n{n}_unbudgeted_bytes"] = len(
            render_digest(digest, envs, CTX, budget=None).html.encode()
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
