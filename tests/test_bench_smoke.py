"""bench/deliver.py still runs end to end (N=50) when Postfix's smtp-sink/smtp-source are installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("smtp-sink", "smtp-source")


def _have(name: str) -> bool:
    return bool(shutil.which(name) or os.path.exists(f"/usr/sbin/{name}"))


@pytest.mark.skipif(not all(_have(t) for t in TOOLS), reason="postfix's smtp-sink not installed")
def test_bench_deliver_prints_one_json_line() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "deliver.py"), "--subscribers", "50"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    figures = json.loads(line)
    assert figures["subscribers"] == 50 and figures["ratio"] > 0
    assert figures["digestd_peak_rss_kib"] > 0 and figures["message_bytes"] > 10_000


@pytest.mark.timeout(300)  # fits a vocabulary of 50,000 terms on a loaded machine
def test_bench_relevance_prints_one_json_line() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "relevance.py"), "--readers", "50", "--papers", "20",
         "--draws", "1"],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    figures = json.loads(line)
    quality = figures["quality"]["k3"]
    assert quality["model_ndcg10"] > quality["random_ndcg10"]
    assert figures["readers"] == 50 and figures["train_200_ms_median"] > 0


@pytest.mark.skipif(not _have("smtp-sink"), reason="postfix's smtp-sink not installed")
def test_bench_web_prints_one_json_line() -> None:
    """bench/web.py at N=20: both runs (threaded, on the loop) give figures for each route."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "web.py"), "--subscribers", "20", "--clients", "2"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    figures = json.loads(line)
    for run in ("threaded", "on_loop"):
        routes = figures[run]["routes"]
        assert {"/healthz", "/unsubscribe", "/view"} <= set(routes), routes
        assert routes["/healthz"]["statuses"] == {"200": routes["/healthz"]["n"]}
        assert routes["/unsubscribe"]["p99_ms"] is not None
    assert set(figures["p99_ratio_on_loop_vs_threaded"]) == set(figures["threaded"]["routes"])
