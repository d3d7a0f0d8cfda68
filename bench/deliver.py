"""End-to-end delivery speed: `digestd run --once` vs Postfix's `smtp-source`, same sink, same run.

    python bench/deliver.py [--subscribers 20000] [--connections 4] [--profile out.prof]
                            [--state postgresql://postgres@127.0.0.1/test] [--instances 2]

Starts `smtp-sink` on a free loopback port, runs the real CLI as a subprocess for N subscribers (no
rules, the same 10 papers each, ~20 KB messages), then drives `smtp-source` with connection reuse
(`-d`), the same number of parallel sessions, the same message size and count against the same sink.
Prints ONE JSON line: both rates (messages/s), their ratio, digestd's peak RSS (KiB), wall times
(digestd's whole run and its match/compose and send phases) and the bytes the outbox stored per
message (its own plus its share of the parts common to many).
`--state postgresql://…`: the state in a fresh schema of that database (dropped after) instead of
a SQLite file; `--instances N` (PostgreSQL only) runs N `run --once` at the same time on it, each
composing and sending (claims skip each other's rows); the rate counts from the first start to the
last exit.
Needs `smtp-sink` and `smtp-source` (Debian package `postfix`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tests" / "fixtures" / "hf_daily_papers_seed.json"
PAPERS = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"smtp-sink did not listen on port {port}")


def start_sink(port: int) -> subprocess.Popen[bytes]:
    root = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink refuses root without -u
    proc = subprocess.Popen(
        [tool("smtp-sink"), *root, "-m", "64", f"127.0.0.1:{port}", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port)
    return proc


def tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )
    if path is None:
        raise SystemExit(f"{name} not found: install the Debian package postfix")
    return path


def write_setup(
    work: Path, *, subscribers: int, port: int, connections: int, state: str = "state.sqlite3"
) -> Path:
    items = json.loads(SEED.read_text())[:PAPERS]
    (work / "papers.json").write_text(json.dumps(items))
    with (work / "subscribers.yaml").open("w") as out:
        out.write('defaults:\n  max_papers: 10\n  schedule: "0 7 * * *"\nsubscribers:\n')
        out.writelines(f"  - email: reader{i}@example.org\n" for i in range(subscribers))
    config = work / "digestd.yaml"
    config.write_text(
        f"""\
source:
  kind: file
  url: papers.json
state: "{state}"
delivery:
  kind: smtp
  host: 127.0.0.1
  port: {port}
  security: none
  from: "Paper Digest <digest@example.org>"
  connections: {connections}
subscribers: subscribers.yaml
lookback: 3650d
http:
  public_url: https://digest.example.org
"""
    )
    return config


def run_digestd(config: Path, profile: str | None, instances: int = 1) -> tuple[float, int, str]:
    """(seconds, peak RSS KiB, stdout) of `instances` concurrent `digestd run --once` (the
    seconds from the first start to the last exit, the largest RSS, the first one's stdout)."""
    prefix = [sys.executable]
    if profile:
        prefix += ["-m", "cProfile", "-o", profile]
    cmd = [*prefix, "-m", "digestd", "--log-level", "warning", "--config", str(config)]
    # Output to files, read after the exit: a pipe nobody reads while waiting fills and blocks
    # the child (a second instance warns once per message the first one already queued).
    outputs = [
        (config.with_name(f"out{i}.txt"), config.with_name(f"err{i}.txt")) for i in range(instances)
    ]
    start = time.perf_counter()
    procs = []
    for i, (out_path, err_path) in enumerate(outputs):
        with out_path.open("wb") as out_file, err_path.open("wb") as err_file:
            procs.append(
                subprocess.Popen(
                    [*cmd, "run", "--once"], stdout=out_file, stderr=err_file,
                    env={**os.environ, "DIGESTD_INSTANCE": f"bench{i}"},
                )
            )  # fmt: skip
    rss, outs = 0, []
    for proc, (out_path, err_path) in zip(procs, outputs, strict=True):
        _, status, usage = os.wait4(proc.pid, 0)
        rss = max(rss, int(usage.ru_maxrss))
        out = out_path.read_text(errors="replace")
        err = err_path.read_text(errors="replace")
        proc.returncode = os.waitstatus_to_exitcode(status)
        # 75: mail still owed when it ended, which another instance was still sending.
        if proc.returncode not in ((0, 75) if instances > 1 else (0,)):
            raise SystemExit(f"digestd failed ({proc.returncode}): {err[-2000:]}")
        outs.append(out.strip())
    return time.perf_counter() - start, rss, outs[0]


def phase_seconds(summary: str) -> dict[str, float]:
    """Each phase's duration from `run --once`'s plain progress lines ("send: ... in 12.3 s")."""
    found = re.findall(r"^(poll|match|send): .* in (\d+(?:\.\d+)?) s$", summary, re.M)
    return {f"{phase}_seconds": float(took) for phase, took in found}


def message_stats(state: Path | str) -> tuple[int, int, int]:
    """(messages sent, their mean size as sent, the mean bytes each queued): a message is its
    body's own bytes plus its shared parts, which are stored once for all messages."""
    if isinstance(state, str):
        import psycopg  # the same SQL; PostgreSQL's LENGTH of a bytea counts bytes too

        connect: Any = psycopg.connect
    else:
        connect = sqlite3.connect
    with connect(state) as db:
        sent, total, own = db.execute(
            "SELECT COUNT(*), SUM(LENGTH(b.data) + (SELECT COALESCE(SUM(LENGTH(p.data)), 0)"
            "  FROM outbox_parts r JOIN message_parts p ON p.key = r.part"
            "  WHERE r.outbox_id = o.id)), SUM(LENGTH(b.data))"
            " FROM outbox o JOIN outbox_bodies b ON b.outbox_id = o.id WHERE o.state = 'sent'"
        ).fetchone()
        shared = db.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM message_parts").fetchone()
    if not sent:
        return 0, 0, 0
    # int(): PostgreSQL's SUM of integers is a numeric (Decimal).
    return int(sent), int(total) // int(sent), int(own + shared[0]) // int(sent)


@contextmanager
def pg_schema(url: str) -> Iterator[str]:
    """A fresh schema in the database `url` names, for this run only; yields its state URL."""
    import uuid

    import psycopg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{name}" CASCADE')


@contextmanager
def state_for(url: str | None, work: Path) -> Iterator[Path | str]:
    if url is None:
        yield work / "state.sqlite3"
        return
    with pg_schema(url) as state:
        yield state


def run_source(port: int, *, count: int, size: int, sessions: int) -> float:
    cmd = [tool("smtp-source"), "-d", "-s", str(sessions), "-l", str(size), "-m", str(count)]
    cmd += ["-f", "digest@example.org", "-t", "reader@example.org", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", "-n", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--profile", help="write digestd's cProfile stats to this file")
    parser.add_argument("--state", help="postgresql://… : the state in a fresh schema there")
    parser.add_argument("--instances", type=int, default=1, help="concurrent runs (PostgreSQL)")
    args = parser.parse_args()
    if args.instances > 1 and not args.state:
        raise SystemExit("--instances needs --state postgresql://… (a SQLite file has one run)")
    port = free_port()
    sink = start_sink(port)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="digestd-bench-") as tmp,
            state_for(args.state, Path(tmp)) as state,
        ):
            work = Path(tmp)
            config = write_setup(
                work, subscribers=args.subscribers, port=port, connections=args.connections,
                state=str(state),
            )  # fmt: skip
            seconds, rss, summary = run_digestd(config, args.profile, args.instances)
            sent, size, queued = message_stats(state)
            source_seconds = run_source(
                port, count=args.subscribers, size=size, sessions=args.connections
            )
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    if sent != args.subscribers:
        raise SystemExit(f"digestd sent {sent} of {args.subscribers}: {summary}")
    digestd_rate = sent / seconds
    source_rate = args.subscribers / source_seconds
    print(
        json.dumps(
            {
                "bench": "deliver",
                "subscribers": args.subscribers,
                "connections": args.connections,
                "state": "postgresql" if args.state else "sqlite",
                "instances": args.instances,
                "message_bytes": size,
                "queued_bytes_per_message": queued,
                "digestd_seconds": round(seconds, 3),
                **phase_seconds(summary),
                "digestd_msgs_per_s": round(digestd_rate, 1),
                "smtp_source_seconds": round(source_seconds, 3),
                "smtp_source_msgs_per_s": round(source_rate, 1),
                "ratio": round(digestd_rate / source_rate, 3),
                "digestd_peak_rss_kib": rss,
            }
        )
    )


if __name__ == "__main__":
    main()
