"""End to end: the real CLI and daemon as subprocesses, a real HTTP source and a real SMTP server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from daemonproc import NotifyListener
from httpserver import LocalHTTPServer
from smtpserver import SMTPTestServer

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parents[1] / "fixtures"
HOSTILE_TITLE = "<script>alert(1)</script> KV-Cache tricks\r\nBcc: evil@attacker.example =?UTF-8?Q?=0A?=Bcc: x@y"

SUBSCRIBERS = """\
defaults:
  schedule: "0 7 * * mon-fri"
  timezone: UTC
  max_papers: 20
subscribers:
  - email: alice@example.org
    name: Alice
    timezone: Europe/Berlin
    rules:
      - any: ["kv cache", "attention offloading"]
      - authors: ["Anika García"]
        alert: true
  - email: bob@example.org
    max_papers: 5
  - email: refused@example.org
"""


def digestd(
    config: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digestd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def seed_items(extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())
    return items + (extra or [])


def hostile_item() -> dict[str, Any]:
    item = json.loads(json.dumps(seed_items()[0]))
    item["paper"]["id"] = "2611.99999v2"
    item["paper"]["title"] = HOSTILE_TITLE
    item["title"] = HOSTILE_TITLE
    item["paper"]["summary"] = "We <b>bold</b> a KV cache. <img src=x onerror=alert(1)>"
    item["paper"]["projectPage"] = "javascript:alert(1)"
    item["paper"]["upvotes"] = 999
    return item


def serve_listing(server: LocalHTTPServer, items: list[dict[str, Any]]) -> None:
    """The first page of the first day holds every item; everything else is empty."""
    first_date: list[str] = []

    def handler(path: str, query: dict[str, str], headers: Mapping[str, str]) -> Any:
        first_date.append(first_date[0] if first_date else query.get("date", ""))
        body = items if query.get("date") == first_date[0] and query.get("p", "0") == "0" else []
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    server.route("/api/daily_papers", handler)


def write_config(tmp_path: Path, *, source_url: str, smtp_port: int, extra: str = "") -> Path:
    (tmp_path / "subscribers.yaml").write_text(SUBSCRIBERS)
    config = tmp_path / "digestd.yaml"
    config.write_text(
        f"""\
source:
  kind: huggingface
  url: {source_url}/api/daily_papers
  poll_every: 30m
  timeout: 5s
state: var/digestd.sqlite3
delivery:
  kind: smtp
  host: 127.0.0.1
  port: {smtp_port}
  security: none
  timeout: 5s
  from: "Paper Digest <digest@example.org>"
subscribers: subscribers.yaml
{extra}"""
    )
    return config


def outbox_states(tmp_path: Path) -> dict[str, int]:
    with sqlite3.connect(tmp_path / "var" / "digestd.sqlite3") as db:
        return dict(db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())


def test_demo_from_the_readme_runs_twice_and_sends_once(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    shutil.copytree(ROOT / "config" / "demo", demo)
    env = {
        "DIGESTD_STATE": str(tmp_path / "state.db"),
        "DIGESTD_DELIVERY__PATH": str(tmp_path / "mail"),
    }
    first = digestd(demo / "digestd.yaml", "run", "--once", env=env)
    assert first.returncode == 0, first.stderr
    assert "sent 4," in first.stdout and "Maildir" in first.stdout
    # Not a terminal: plain progress lines, one when each phase starts and one when it ends.
    lines = [re.sub(r" in \d+\.\d s$", "", line) for line in first.stdout.splitlines()]
    assert lines[:2] == ["polling…", "poll: 54 papers, 54 new"], lines
    assert "matching (3)…" in lines and "sending (4)…" in lines
    assert "send: sent 4, deferred 0, failed 0" in lines
    assert re.search(r"^send: .* in \d+\.\d s$", first.stdout, re.M)  # each phase's duration
    assert "\x1b[" not in first.stdout  # no terminal control codes
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 4
    second = digestd(demo / "digestd.yaml", "run", "--once", env=env)
    assert second.returncode == 0, second.stderr
    assert "sent 0," in second.stdout
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 4


def test_run_once_over_http_and_smtp(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    serve_listing(http_server, seed_items([hostile_item()]))
    smtp_server.handler.rcpt_replies["refused@example.org"] = (
        "550 5.1.1 <refused@example.org>: no such user"
    )
    config = write_config(tmp_path, source_url=http_server.url, smtp_port=smtp_server.port)
    result = digestd(config, "run", "--once")
    assert result.returncode == 1, result.stderr  # refused@ failed for good (issue 13: exit 1)
    by_rcpt = {tuple(r.rcpt_tos): r for r in smtp_server.received}
    assert (
        set(by_rcpt) == {("alice@example.org",), ("bob@example.org",)}
        or len(smtp_server.received) == 3
    )
    for received in smtp_server.received:
        assert received.rcpt_tos in (["alice@example.org"], ["bob@example.org"])
        message = received.message
        assert message.get_content_type() == "multipart/alternative"
        parts = [p.get_content_type() for p in message.iter_parts()]
        assert parts == ["text/plain", "text/html"]
        assert "Bcc" not in message and message["Message-ID"] and message["Date"]
        assert "\n" not in str(message["Subject"])
        html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        # Hostile markup arrives as text (&lt;script&gt;), never as a tag or a live link.
        assert "<script" not in html and "<img src=x" not in html and "javascript:" not in html
        assert "https://huggingface.co/papers/" in html
    bob = next(r.message for r in smtp_server.received if r.rcpt_tos == ["bob@example.org"])
    bob_html = bob.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "&lt;script&gt;" in bob_html and "https://huggingface.co/papers/2611.99999" in bob_html
    assert "Bcc: evil" not in bob.as_string().split("\n\n", 1)[0]
    assert outbox_states(tmp_path).get("failed") == 1
    status = digestd(config, "status")
    assert "no such user" in status.stdout

    count = len(smtp_server.received)
    again = digestd(config, "run", "--once")
    assert again.returncode == 1, again.stderr  # refused@'s papers are owed again, refused again
    assert len(smtp_server.received) == count


def test_source_failure_marks_nothing_then_recovers(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    http_server.respond(
        "/api/daily_papers", status=200, body=b'[{"paper": {"id": "2401.0', times=None
    )
    config = write_config(tmp_path, source_url=http_server.url, smtp_port=smtp_server.port)
    failed = digestd(config, "run", "--once")
    assert failed.returncode == 1
    assert "poll failed" in failed.stderr and "Traceback" not in failed.stderr
    assert smtp_server.received == []
    with sqlite3.connect(tmp_path / "var" / "digestd.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM papers").fetchone() == (0,)

    http_server.close()
    with LocalHTTPServer() as healthy:
        serve_listing(healthy, seed_items())
        config = write_config(tmp_path, source_url=healthy.url, smtp_port=smtp_server.port)
        assert digestd(config, "run", "--once").returncode == 0
    assert len(smtp_server.received) >= 2


def test_check_reports_every_error_with_position(tmp_path: Path) -> None:
    config = write_config(tmp_path, source_url="http://127.0.0.1:9", smtp_port=25)
    ok = digestd(config, "check")
    assert ok.returncode == 0, ok.stderr
    assert "alice@example.org" not in ok.stdout or "subscribers" in ok.stdout
    (tmp_path / "subscribers.yaml").write_text(
        "subscribers:\n  - email: not-an-email\n    schedule: '99 * * * *'\n    timezone: Mars/Olympus\n"
    )
    bad = digestd(config, "check")
    assert bad.returncode == 2
    lines = [line for line in bad.stderr.splitlines() if line.startswith(str(tmp_path))]
    assert len(lines) >= 3
    assert any(":2:" in line and "subscribers[0].email" in line for line in lines)
    assert any("Mars/Olympus" in line for line in lines)


def test_preview_renders_without_sending(tmp_path: Path, http_server: LocalHTTPServer) -> None:
    serve_listing(http_server, seed_items())
    config = write_config(tmp_path, source_url=http_server.url, smtp_port=9)
    (tmp_path / "subscribers.yaml").write_text(SUBSCRIBERS)
    # Store papers with a maildir run, then preview a subscriber whose papers are all still unsent.
    env = {"DIGESTD_DELIVERY__KIND": "maildir", "DIGESTD_DELIVERY__PATH": str(tmp_path / "mail")}
    digestd(config, "run", "--once", env=env)
    out = tmp_path / "preview.html"
    result = digestd(config, "preview", "bob@example.org", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert out.read_text().lstrip().lower().startswith("<!doctype html")
    missing = digestd(config, "preview", "nobody@example.org", env=env)
    assert missing.returncode == 1 and "not in" in missing.stderr


# The daemon as a real subprocess --------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def start_daemon(
    config: Path, log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "digestd", "--config", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, **(env or {})},
        )


@pytest.mark.timeout(60)
def test_daemon_finishes_the_send_in_flight_on_sigterm(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    serve_listing(http_server, seed_items())
    smtp_server.handler.stall_data = 1.5  # the end of DATA takes a while
    config = write_config(tmp_path, source_url=http_server.url, smtp_port=smtp_server.port)
    log = tmp_path / "daemon.log"
    notify = NotifyListener()
    proc = start_daemon(config, log, env={"NOTIFY_SOCKET": notify.name})
    try:
        wait_for(
            lambda: len(smtp_server.received) >= 1
        )  # the alert's DATA is in the server's hands
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: notify.having("STOPPING"))  # said at once, before the send finishes
        assert proc.poll() is None
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert (
        "stopping signal=SIGTERM" in text
        and "level=info logger=digestd.service.daemon stopped" in text
    )
    assert "store closed" in text
    # The last connection closed cleanly: SQLite checkpointed and removed the write-ahead log.
    assert not (tmp_path / "var" / "digestd.sqlite3-wal").exists()
    assert outbox_states(tmp_path) == {"sent": 1}


@pytest.mark.timeout(60)
def test_daemon_stops_cleanly_on_sigint_while_idle(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    serve_listing(http_server, seed_items())
    config = write_config(tmp_path, source_url=http_server.url, smtp_port=smtp_server.port)
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, log)
    try:
        wait_for(lambda: "poll ok" in log.read_text())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
