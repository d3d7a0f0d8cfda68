"""Fault suite, source side (issue 12 item 1): a feed that trickles its body or its headers.

The real daemon (and `run --once`) as a subprocess, a healthy Hugging Face source on a local HTTP
server next to a hostile one on a raw socket, subscribers on aiosmtpd. The hostile source must
delay only itself: the healthy source's papers reach every subscriber once, the slow poll is
recorded as failed with a clear error, and SIGTERM ends the daemon within `delivery.timeout`.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemonproc import NotifyListener, daemon, item, wait_for
from httpserver import LocalHTTPServer
from smtpserver import SMTPTestServer
from test_multi_source import close, make_deps
from test_service import Listing

from digestd.core.errors import SourceError
from digestd.service.daemon import Daemon
from digestd.service.sdnotify import Notifier
from digestd.sources import HuggingFaceSource, make_client
from digestd.sources.http import HttpGetter

pytestmark = pytest.mark.timeout(60)

SUBSCRIBERS = """\
defaults:
  schedule: "0 7 * * *"
subscribers:
  - email: alice@example.org
    rules:
      - any: ["kv cache"]
        alert: true
  - email: bob@example.org
    rules:
      - any: ["kv cache"]
"""


class Trickler:
    """A raw HTTP peer that answers every request slowly: one byte every `every` seconds.

    `where="body"`: the status line and headers (`Content-Length: 100000`) at once, then the body
    byte by byte. `where="headers"`: the headers themselves byte by byte. Each byte arrives well
    within any per-read timeout, so only a whole-request deadline ends the request.
    """

    def __init__(self, where: str, every: float = 0.2) -> None:
        self.where = where
        self.every = every
        self.requests = 0
        self._closed = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/feed.xml"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.requests += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\nContent-Length: 100000\r\n\r\n"
        body = b"<rss>" + b" " * 99995
        fast, slow = (head, body) if self.where == "body" else (b"", head + body)
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(fast)
                for i in range(len(slow)):
                    if self._closed.wait(self.every):
                        return
                    conn.sendall(slow[i : i + 1])
            except OSError:
                return  # the client gave up: what we want

    def close(self) -> None:
        self._closed.set()
        self._sock.close()


@pytest.fixture(params=["body", "headers"])
def trickler(request: pytest.FixtureRequest) -> Iterator[Trickler]:
    peer = Trickler(request.param)
    try:
        yield peer
    finally:
        peer.close()


def write_config(tmp: Path, *, healthy: str, slow: str, smtp_port: int) -> Path:
    (tmp / "subscribers.yaml").write_text(SUBSCRIBERS)
    config = tmp / "digestd.yaml"
    config.write_text(
        f"""\
sources:
  - name: slow
    kind: feed
    url: {slow}
    poll_every: 1s
    timeout: 2s
    retries: 0
  - name: hf
    url: {healthy}/api/daily_papers
    poll_every: 1s
    timeout: 2s
    retries: 0
state: var/digestd.sqlite3
delivery:
  host: 127.0.0.1
  port: {smtp_port}
  security: none
  timeout: 3s
  from: "Paper Digest <digest@example.org>"
subscribers: subscribers.yaml
config_check_every: 0s
"""
    )
    return config


def polls(tmp: Path, source: str) -> list[tuple[int, str | None]]:
    with sqlite3.connect(tmp / "var" / "digestd.sqlite3") as db:
        return db.execute(
            "SELECT ok, error FROM polls WHERE source = ? ORDER BY id", (source,)
        ).fetchall()


def received(server: SMTPTestServer) -> dict[str, list[Any]]:
    """Per recipient, the messages it got: (kind by subject, Message-ID)."""
    out: dict[str, list[Any]] = {}
    for r in server.received:
        for rcpt in r.rcpt_tos:
            out.setdefault(rcpt, []).append((str(r.message["Subject"]), r.message["Message-ID"]))
    return out


def test_item1_a_trickling_source_delays_only_itself(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer, trickler: Trickler
) -> None:
    Listing(http_server, [item("2611.00001", "KV cache tricks")])
    config = write_config(
        tmp_path, healthy=http_server.url, slow=trickler.url, smtp_port=smtp_server.port
    )
    log = tmp_path / "daemon.log"
    with daemon(config, log) as proc:
        wait_for(lambda: received(smtp_server).get("alice@example.org"), 10, "for alice's alert")
        # The slow source's poll ends at its deadline, recorded as failed with a clear error.
        wait_for(lambda: polls(tmp_path, "slow"), 10, "for the slow poll to be recorded")
        ok, error = polls(tmp_path, "slow")[0]
        assert ok == 0 and error and "2s" in error and "deadline" in error, error
        # Meanwhile the healthy source kept its own rhythm.
        assert sum(ok for ok, _ in polls(tmp_path, "hf")) >= 2
        wait_for(lambda: trickler.requests >= 2, 10, "for the slow source's next poll")
        time.sleep(0.5)  # a slow fetch is surely in flight now
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
        assert time.monotonic() - start < 3 + 1.5  # delivery.timeout + a margin
    text = log.read_text()
    assert "Traceback" not in text and "maximum number of running instances" not in text, text
    mail = received(smtp_server)
    assert list(mail) == ["alice@example.org"]  # bob has no alert rule: his digest is due at 07:00
    assert len(mail["alice@example.org"]) == 1


def test_item1_run_once_with_a_trickling_source_finishes(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer, trickler: Trickler
) -> None:
    Listing(http_server, [item("2611.00001", "KV cache tricks")])
    config = write_config(
        tmp_path, healthy=http_server.url, slow=trickler.url, smtp_port=smtp_server.port
    )
    config.write_text(config.read_text().replace("timeout: 2s", "timeout: 5s"))
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "digestd", "--config", str(config), "run", "--once"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    elapsed = time.monotonic() - start
    assert elapsed < 5 + 8, elapsed  # the deadline plus start-up, composing and sending
    assert done.returncode == 1, done.stderr  # the poll failed, said so, and the rest went on
    assert "slow:" in done.stderr and "5s" in done.stderr and "deadline" in done.stderr
    assert "Traceback" not in done.stderr
    mail = received(smtp_server)
    # Per recipient: the paper exactly once (alice by alert, bob by digest), nothing lost.
    assert sorted(mail) == ["alice@example.org", "bob@example.org"]
    for got in mail.values():
        assert len(got) == 1, got
    assert all("KV cache" in r.content.decode() for r in smtp_server.received)
    assert polls(tmp_path, "slow")[0][0] == 0 and polls(tmp_path, "hf")[0][0] == 1


@pytest.mark.parametrize("where", ["body", "headers"])
async def test_item1_every_source_request_has_a_whole_request_deadline(where: str) -> None:
    peer = Trickler(where, every=0.05)
    hf_getter = HttpGetter(make_client(5.0), name="hf", retries=0, deadline=0.5)
    hf = HuggingFaceSource(hf_getter, url=peer.url)
    getter = HttpGetter(make_client(5.0), name="feed", retries=0, deadline=0.5)
    try:
        for fetch in (lambda: hf.fetch(now=datetime.now(UTC)), lambda: getter.get(peer.url)):
            start = time.monotonic()
            with pytest.raises(SourceError, match=r"within 0\.5s \(whole-request deadline\)"):
                await fetch()
            assert time.monotonic() - start < 2.0  # not the 100,000 × 0.05 s of the trickle
    finally:
        await hf.aclose()
        await getter.aclose()
        peer.close()


async def test_item1_the_watchdog_stops_pinging_while_a_job_is_stuck(
    tmp_path: Path, http_server: LocalHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    notify = NotifyListener()
    deps = make_deps(tmp_path, http_server)
    env = {"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "100000"}  # a ping every 50 ms
    daemon = Daemon(
        deps,
        poll_every=timedelta(minutes=30),
        notifier=Notifier(env),
        stuck_after=timedelta(seconds=1),
    )
    unstick = asyncio.Event()

    async def stuck() -> None:
        await unstick.wait()  # a job that neither ends nor progresses: no peer can do this now

    try:
        daemon._background()
        await asyncio.sleep(0.3)
        assert len(notify.having("WATCHDOG")) >= 3  # pings while nothing is stuck
        job = asyncio.create_task(daemon.work_lock.run(stuck))
        await asyncio.sleep(1.3)  # past stuck_after: the pings stop…
        before = len(notify.having("WATCHDOG"))
        await asyncio.sleep(0.4)
        assert len(notify.having("WATCHDOG")) == before
        assert "watchdog: not pinging; job=stuck has held the work lock" in caplog.text
        assert "without finishing a message (bound 1s)" in caplog.text, caplog.text
        unstick.set()  # …and start again once the job moves
        await job
        await asyncio.sleep(0.3)
        assert len(notify.having("WATCHDOG")) > before
    finally:
        for task in daemon._tasks:
            task.cancel()
        await asyncio.gather(*daemon._tasks, return_exceptions=True)
        await close(deps)
        daemon.notifier.close()
        notify.close()


def test_item1_sigterm_mid_send_ends_within_delivery_timeout_and_loses_nothing(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    """The relay sits on the end of DATA (data_timeout is long): the stop waits delivery.timeout,
    cuts the send, and the next start re-sends it with the same Message-ID."""
    Listing(http_server, [item("2611.00001", "KV cache tricks")])
    config = write_config(tmp_path, healthy=http_server.url, slow=http_server.url + "/nothing",
                          smtp_port=smtp_server.port)  # fmt: skip
    config.write_text(
        config.read_text().replace("  timeout: 3s\n", "  timeout: 2s\n  data_timeout: 60s\n")
    )
    smtp_server.handler.stall_data = 30.0
    log = tmp_path / "daemon.log"
    with daemon(config, log) as proc:
        wait_for(lambda: smtp_server.received, 10, "for the message to reach DATA")
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
        assert time.monotonic() - start < 2 + 1.5, log.read_text()
    assert "cancelling it job=_store_poll" in log.read_text()
    assert "Traceback" not in log.read_text() and "Error running job" not in log.read_text()
    first = smtp_server.received[0].message["Message-ID"]
    smtp_server.handler.stall_data = 0.0
    with daemon(config, tmp_path / "again.log") as proc:
        wait_for(lambda: len(smtp_server.received) >= 2, 10, "for the re-send")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert {r.message["Message-ID"] for r in smtp_server.received} == {first}
    assert {tuple(r.rcpt_tos) for r in smtp_server.received} == {("alice@example.org",)}
