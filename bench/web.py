"""Page latency while the daemon composes and delivers: threaded compose vs on the loop, same run.

    python bench/web.py [--subscribers 20000] [--clients 8] [--routes /healthz,/view/{view}]

Starts `smtp-sink` (as bench/deliver.py does, with its setup), seeds the state file with the papers
and with subscribers registered two days ago, so the daemon's start-up catch-up composes and sends
a digest to every one of them. Concurrent HTTP clients (asyncio, raw sockets, keep-alive) request
each route in turn, one request due every 50 ms per client, from the moment the listener answers
until every message is sent. Latency counts from when a request was due (no coordinated omission:
a stalled loop is charged for every request it kept waiting). Done twice: the current code, then
the baseline with compose on the event loop (DIGESTD_COMPOSE_ON_LOOP=1). Prints ONE JSON line:
p50/p99 latency (ms) per route for both runs, their p99 ratio, each run's compose-and-deliver
seconds.
Route placeholders: {unsubscribe} a valid unsubscribe token, {view} a stored web copy's token
(an unknown one until the first copy is queued), {preferences} a preferences token when digestd
makes them. A route the server does not have (starlette's plain 404) is left out of the figures.
Needs `smtp-sink` (Debian package `postfix`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from deliver import PAPERS, SEED, free_port, start_sink, wait_listening, write_setup

from digestd.config import sections
from digestd.core.addresses import address_key
from digestd.mail import linktokens
from digestd.pipeline.paper_merge import record_papers
from digestd.sources.hf_json import parse_hf_daily
from digestd.store.sqlite import Store

ROUTES = "/healthz,/unsubscribe/{unsubscribe},/view/{view},/subscribe,/preferences/{preferences}"
UNKNOWN_VIEW = "A" * 24  # a well-formed token no copy has: the lookup still runs


@dataclass
class Route:
    template: str
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    missing: bool = False  # the server has no such route

    def figures(self) -> dict[str, object]:
        ms = sorted(x * 1000 for x in self.latencies)
        return {
            "n": len(ms),
            "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1) if ms else None,
            "max_ms": round(ms[-1], 1) if ms else None,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


def seed(work: Path, subscribers: int) -> dict[str, str]:
    """Papers and registrations (two days old, so today's slot is owed) in a fresh state file;
    the tokens the routes need."""
    now = datetime.now(UTC)
    papers = parse_hf_daily(SEED.read_bytes()).papers[:PAPERS]
    with Store(work / "state.sqlite3") as store:
        record_papers(store, papers, seen_at=now)
        emails = [f"reader{i}@example.org" for i in range(subscribers)]
        store.subscribers.register(emails, at=now - timedelta(days=2))
        key = linktokens.derive_key(store.secret(), "unsubscribe")
        email = address_key(emails[-1])
        sub_id = store.subscribers.id_of(email)
        unsubscribe = linktokens.unsubscribe_token(key, sub_id, email)
        # The manage link's token, where digestd has the preferences page (issue 15's sign-up);
        # without it, the unsubscribe token stands in (refused with a page: still the full work).
        manage = getattr(linktokens, "manage_token", None)
        secret = store.secret()
    preferences = (
        manage(linktokens.derive_key(secret, "manage"), sub_id, email)
        if callable(manage)
        else unsubscribe
    )
    return {"unsubscribe": unsubscribe, "view": UNKNOWN_VIEW, "preferences": preferences}


def signup_lines() -> str:
    """The settings that turn the sign-up and preferences pages on, where digestd has them."""
    return "signup:\n  enabled: true\n" if hasattr(sections, "SignupSettings") else ""


def wait_http(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"digestd ended ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            wait_listening(port, timeout=0.5)
            return
        except SystemExit:
            continue
    raise SystemExit(f"digestd did not listen on port {port}")


def sent_count(state: Path) -> int:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'sent'").fetchone()[0])


def a_view_token(state: Path) -> str | None:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
        row = db.execute("SELECT token FROM web_copies LIMIT 1").fetchone()
    return str(row[0]) if row else None


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One keep-alive GET; its status. The body is read whole (Content-Length)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        (int(h.split(":", 1)[1]) for h in lines if h.lower().startswith("content-length:")), 0
    )
    body = await reader.readexactly(length)
    status = int(lines[0].split()[1])
    if status == 404 and body == b"Not Found":  # starlette's own: no such route
        return -404
    return status


async def client(port: int, routes: list[Route], tokens: dict[str, str], done: asyncio.Event,
                 every: float, offset: int) -> None:  # fmt: skip
    """One keep-alive connection, a request due every `every` seconds (an open-loop schedule).

    Latency counts from when a request was due, not from when it could be sent: a stalled
    server is charged for every request it kept waiting, not just the one in flight
    ("coordinated omission"); a client that falls behind sends the late ones back to back.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    due = time.perf_counter() + every * offset / 8  # clients spread over one interval
    try:
        while not done.is_set():
            route = routes[i % len(routes)]
            i += 1
            if route.missing:
                continue
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            status = await get(reader, writer, route.template.format(**tokens))
            took = time.perf_counter() - due
            due += every
            if status == -404:
                route.missing = True
                continue
            route.latencies.append(took)
            route.statuses[status] = route.statuses.get(status, 0) + 1
    finally:
        writer.close()


async def drive(port: int, state: Path, n: int, args: argparse.Namespace,
                tokens: dict[str, str]) -> tuple[list[Route], float]:  # fmt: skip
    """Clients on every route until all `n` messages are sent; (routes, seconds it took)."""
    routes = [Route(t) for t in args.routes.split(",") if t]
    done = asyncio.Event()
    start = time.perf_counter()
    tasks = [
        asyncio.create_task(client(port, routes, tokens, done, args.every, i))
        for i in range(args.clients)
    ]
    deadline = start + args.timeout
    while sent_count(state) < n:
        if time.perf_counter() > deadline:
            raise SystemExit(f"only {sent_count(state)} of {n} sent within {args.timeout}s")
        if tokens["view"] == UNKNOWN_VIEW:
            tokens["view"] = a_view_token(state) or UNKNOWN_VIEW
        await asyncio.sleep(0.25)
    seconds = time.perf_counter() - start
    done.set()
    await asyncio.gather(*tasks)
    return routes, seconds


def one_run(args: argparse.Namespace, smtp_port: int, *, on_loop: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="digestd-bench-web-") as tmp:
        work = Path(tmp)
        config = write_setup(work, subscribers=args.subscribers, port=smtp_port,
                             connections=args.connections)  # fmt: skip
        http_port = free_port()
        config.write_text(
            config.read_text().replace("http:\n", f"http:\n  listen: 127.0.0.1:{http_port}\n")
            + signup_lines()
        )
        tokens = seed(work, args.subscribers)
        env = {**os.environ, "DIGESTD_COMPOSE_ON_LOOP": "1" if on_loop else "0"}
        cmd = [sys.executable, "-m", "digestd", "--log-level", "warning", "--config", str(config)]
        with (work / "daemon.log").open("wb") as log:
            proc = subprocess.Popen([*cmd, "run"], stdout=subprocess.DEVNULL, stderr=log, env=env)
        try:
            wait_http(http_port, proc, work / "daemon.log")
            routes, seconds = asyncio.run(
                drive(http_port, work / "state.sqlite3", args.subscribers, args, tokens)
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            if args.keep_logs:
                name = f"daemon-{'on_loop' if on_loop else 'threaded'}.log"
                shutil.copy(work / "daemon.log", Path(args.keep_logs) / name)
        return {
            "seconds": round(seconds, 2),
            "routes": {r.template.split("/{")[0]: r.figures() for r in routes if not r.missing},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", "-n", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument(
        "--every",
        type=float,
        default=0.05,
        help="a client's request is due every this many seconds",
    )
    parser.add_argument("--routes", default=ROUTES, help="comma-separated paths")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the on-loop run")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy each run's daemon log here")
    args = parser.parse_args()
    port = free_port()
    sink = start_sink(port)
    try:
        threaded = one_run(args, port, on_loop=False)
        baseline = None if args.no_baseline else one_run(args, port, on_loop=True)
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    result: dict[str, object] = {
        "bench": "web",
        "subscribers": args.subscribers,
        "clients": args.clients,
        "threaded": threaded,
        "on_loop": baseline,
    }
    if baseline is not None:
        result["p99_ratio_on_loop_vs_threaded"] = {
            name: _ratio(figures, baseline["routes"].get(name))  # type: ignore[attr-defined]
            for name, figures in threaded["routes"].items()  # type: ignore[attr-defined]
        }
    print(json.dumps(result))


def _ratio(new: dict[str, object], old: dict[str, object] | None) -> float | None:
    if not old or not new.get("p99_ms") or old.get("p99_ms") is None:
        return None
    return round(float(old["p99_ms"]) / float(new["p99_ms"]), 1)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
