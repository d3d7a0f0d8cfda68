"""Idle memory (RSS) of the daemon with N subscribers, against a bare `python -c` in the same run.

    python bench/idle_memory.py [--subscribers 1000] [--runs 3]

Each run starts the real daemon (file source: the bundled demo sample; Maildir delivery), waits for
READY=1 and for its first poll to finish, lets it idle a moment, and reads VmRSS from /proc. Prints
one JSON line with medians and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]
SCHEDULES = ["0 7 * * mon-fri", "30 6 * * *", "0 8 * * mon"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def subscribers(n: int) -> str:
    lines = ["subscribers:"]
    for i in range(n):
        lines += [
            f"  - email: user{i}@example.org",
            f"    timezone: {ZONES[i % len(ZONES)]}",
            f'    schedule: "{SCHEDULES[i % len(SCHEDULES)]}"',
            "    rules:",
            f'      - any: ["kv cache", "attention", "topic{i}"]',
        ]
    return "\n".join(lines) + "\n"


def daemon_rss(n: int, settle: float) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "subscribers.yaml").write_text(subscribers(n))
        (d / "digestd.yaml").write_text(
            f"source:\n  kind: file\n  url: {ROOT / 'config/demo/sample.json'}\n"
            f"state: {d / 'state.db'}\ndelivery:\n  kind: maildir\n  path: {d / 'mail'}\n"
            f'  from: "Bench <bench@example.org>"\nsubscribers: subscribers.yaml\n'
        )
        name = f"@digestd-bench-{uuid.uuid4().hex}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + name[1:])
        sock.settimeout(60)
        proc = subprocess.Popen(
            [sys.executable, "-m", "digestd", "--config", str(d / "digestd.yaml"), "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "NOTIFY_SOCKET": name},
        )
        try:
            seen = ""
            while (
                "papers" not in seen or "not polled" in seen
            ):  # READY, then the first poll's STATUS
                seen = sock.recv(4096).decode()
            time.sleep(settle)
            return rss_kib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            sock.close()


def baseline_rss(settle: float) -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(settle)
        return rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=1.0)
    args = parser.parse_args()
    daemon = [daemon_rss(args.subscribers, args.settle) for _ in range(args.runs)]
    base = [baseline_rss(args.settle) for _ in range(args.runs)]
    d, b = statistics.median(daemon), statistics.median(base)
    print(
        json.dumps(
            {
                "bench": "idle_memory",
                "subscribers": args.subscribers,
                "runs": args.runs,
                "daemon_rss_mib": round(d / 1024, 1),
                "baseline_rss_mib": round(b / 1024, 1),
                "ratio": round(d / b, 2),
                "daemon_minus_baseline_mib": round((d - b) / 1024, 1),
                "daemon_rss_kib_all": daemon,
                "baseline_rss_kib_all": base,
            }
        )
    )


if __name__ == "__main__":
    main()
