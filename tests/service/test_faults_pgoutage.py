"""Issue 18: the PostgreSQL server goes away mid-run and comes back (its port blocked, never the
server stopped: a TCP proxy between the daemons and it is cut, then restored).

Two daemons send 300 alerts through the proxy. Cut mid-send: both fail /healthz and each tells
the admins once; restored: both resume by themselves, each tells the admins once that it is
back, and every recipient has its alert (the messages in flight at the cut re-sent, same
Message-ID), nothing else.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from daemonproc import daemon, http_get, http_port, wait_for
from pgstate import pg_schema
from scenes import file_smtp_scene
from smtpserver import SMTPTestServer
from tcpproxy import TcpProxy

RECIPIENTS = 300
OPS = "ops@example.org"


def through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = (
        f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
    )
    return urlunsplit(parts._replace(netloc=netloc))


def scene(tmp_path: Path, port: int, url: str) -> Path:
    lines = ["defaults:\n  rules:\n    - min_upvotes: 0\n      alert: true\nsubscribers:"]
    lines += [f"  - email: r{i}@example.org" for i in range(RECIPIENTS)]
    config = file_smtp_scene(
        tmp_path, port, "\n".join(lines) + "\n", source=", poll_every: 2s",
        delivery="  timeout: 5s\n",
    )  # fmt: skip
    text = config.read_text().replace("state: state.sqlite3", f'state: "{url}"')
    config.write_text(text + f"lease: 3s\nhttp:\n  listen: 127.0.0.1:0\nadmins: [{OPS}]\n")
    return config


def health(port: int) -> int | None:
    """/healthz's status, or None when it did not answer within 5 s: while the database is cut,
    each store call may wait for a connection (the pool's bound) on the loop's thread."""
    try:
        return http_get(port, "/healthz")[0]
    except TimeoutError:
        return None


def outbox(url: str) -> Counter[str]:
    with psycopg.connect(url) as db:
        return Counter(str(r[0]) for r in db.execute("SELECT state FROM outbox"))


def to_ops(smtp: SMTPTestServer, word: str) -> int:
    return sum(
        1 for m in smtp.received if m.rcpt_tos == [OPS] and word in str(m.message["Subject"])
    )


@pytest.mark.timeout(240)
def test_a_database_outage_fails_health_alerts_once_and_loses_nothing(tmp_path: Path) -> None:
    smtp = SMTPTestServer().start()
    try:
        with pg_schema("pgmulti") as url:
            parts = urlsplit(url)
            proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
            config = scene(tmp_path, smtp.port, through(url, proxy))
            logs = [tmp_path / "i0.log", tmp_path / "i1.log"]
            try:
                with (
                    daemon(config, logs[0], env={"DIGESTD_INSTANCE": "i0"}) as first,
                    daemon(config, logs[1], env={"DIGESTD_INSTANCE": "i1"}) as second,
                ):
                    ports = [http_port(log) for log in logs]
                    wait_for(lambda: len(smtp.received) >= RECIPIENTS // 4, 60, "for sending")
                    proxy.cut()
                    for port in ports:
                        wait_for(lambda: health(port) == 503, 30, "for 503")  # noqa: B023
                    body = http_get(ports[0], "/healthz")[1]
                    assert "does not answer" in body, body
                    wait_for(lambda: to_ops(smtp, "PROBLEM") == 2, 30, "an alert per instance")
                    stalled = len(smtp.received)
                    proxy.restore()
                    wait_for(lambda: outbox(url)["sent"] == RECIPIENTS, 90, "all sent")
                    for port in ports:
                        wait_for(lambda: health(port) == 200, 30, "health")  # noqa: B023
                    wait_for(lambda: to_ops(smtp, "RECOVERED") == 2, 30, "back, per instance")
                    for proc in (first, second):
                        proc.send_signal(signal.SIGTERM)
                        assert proc.wait(timeout=30) == 0
            finally:
                proxy.stop()
            states = outbox(url)
            with psycopg.connect(url) as db:
                owed = {
                    str(r[0]): str(r[1])
                    for r in db.execute("SELECT subscriber, message_id FROM outbox")
                }
    finally:
        smtp.stop()
    assert states == Counter(sent=RECIPIENTS), states
    got: dict[str, set[str]] = {}
    for m in smtp.received:
        if m.rcpt_tos != [OPS]:
            got.setdefault(m.rcpt_tos[0], set()).add(str(m.message["Message-ID"]))
    assert got == {rcpt: {mid} for rcpt, mid in owed.items()}, "lost, or re-sent as another"
    assert to_ops(smtp, "PROBLEM") == to_ops(smtp, "RECOVERED") == 2, "once each, per instance"
    assert stalled < len(smtp.received)
    log = logs[0].read_text()
    assert "password" not in log.lower() or "***" in log
