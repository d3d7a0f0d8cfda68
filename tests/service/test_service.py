"""The daemon as a systemd service, run for real as a subprocess: sd_notify read back from a
socket, SIGHUP reloads (good and bad), /healthz and /metrics over HTTP, admin alerts received by
a real SMTP server, the catch-up log, and no secrets on stderr."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult
from daemonproc import NotifyListener, daemon, http_get, http_port, item, wait_for
from httpserver import LocalHTTPServer
from smtpserver import SMTPTestServer

from digestd.store.sqlite import Store

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
        alert: true
"""


@pytest.fixture
def notify() -> Iterator[NotifyListener]:
    listener = NotifyListener()
    try:
        yield listener
    finally:
        listener.close()


class Listing:
    """The local HTTP server playing the Daily Papers API: today's page holds `items`."""

    def __init__(self, server: LocalHTTPServer, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.status = 200
        server.route("/api/daily_papers", self.handler)

    def handler(self, path: str, query: dict[str, str], headers: Mapping[str, str]) -> Any:
        if self.status != 200:
            return self.status, {}, b"upstream trouble"
        today = datetime.now(UTC).date().isoformat()
        first = query.get("date") == today and query.get("p", "0") == "0"
        body = self.items if first else []
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def write_config(
    tmp: Path, *, source: str, smtp_port: int, extra: str = "", subscribers: str = SUBSCRIBERS
) -> Path:
    (tmp / "subscribers.yaml").write_text(subscribers)
    config = tmp / "digestd.yaml"
    config.write_text(
        f"""\
source:
  url: {source}/api/daily_papers
  poll_every: 1s
  timeout: 5s
  retries: 0
state: var/digestd.sqlite3
delivery:
  host: 127.0.0.1
  port: {smtp_port}
  security: none
  timeout: 5s
  from: "Paper Digest <digest@example.org>"
subscribers: subscribers.yaml
config_check_every: 0s
{extra}"""
    )
    return config


def rows(tmp: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(tmp / "var" / "digestd.sqlite3") as db:
        return db.execute("SELECT subscriber, kind, state FROM outbox ORDER BY id").fetchall()


def to(server: SMTPTestServer, address: str) -> list[Any]:
    return [r.message for r in server.received if r.rcpt_tos == [address]]


@pytest.fixture
def tls_smtp(tmp_path: Path) -> Iterator[SMTPTestServer]:
    """A relay that requires STARTTLS and AUTH, and refuses every password (535)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def refuse(*args: object) -> AuthResult:
        return AuthResult(success=False, handled=False)

    server = SMTPTestServer(
        tls_context=context, require_starttls=True, auth_required=True, authenticator=refuse
    ).start()
    try:
        yield server
    finally:
        server.stop()


def test_notify_ready_status_watchdog_and_stopping(
    tmp_path: Path,
    http_server: LocalHTTPServer,
    smtp_server: SMTPTestServer,
    notify: NotifyListener,
) -> None:
    Listing(http_server, [item("2611.00001", "KV cache tricks")])
    config = write_config(tmp_path, source=http_server.url, smtp_port=smtp_server.port)
    log = tmp_path / "daemon.log"
    env = {"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "400000"}
    with daemon(config, log, env=env) as proc:
        wait_for(lambda: notify.having("READY"), what="for READY=1")
        ready = notify.having("READY")[0]
        assert ready["READY"] == "1" and ready["STATUS"]
        wait_for(lambda: len(notify.having("WATCHDOG")) >= 3, what="for watchdog pings")
        # "0 papers" is said before the first poll: wait for the status that follows it.
        wait_for(
            lambda: any(
                "polled" in m["STATUS"] and "1 papers" in m["STATUS"]
                for m in notify.having("STATUS")
            ),
            what="for the status after the first poll",
        )
        status = [m["STATUS"] for m in notify.having("STATUS") if "polled" in m["STATUS"]]
        assert status and "1 papers" in status[-1] and "queued" in status[-1], status
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    assert notify.having("STOPPING")[0]["STOPPING"] == "1"
    assert not (tmp_path / "var" / "digestd.sqlite3-wal").exists()  # closed cleanly


def test_sighup_reloads_subscribers_and_schedules(
    tmp_path: Path,
    http_server: LocalHTTPServer,
    smtp_server: SMTPTestServer,
    notify: NotifyListener,
) -> None:
    listing = Listing(http_server, [item("2611.00001", "KV cache tricks")])
    smtp_server.handler.rcpt_replies["bob@example.org"] = "450 4.2.1 mailbox busy, try later"
    config = write_config(tmp_path, source=http_server.url, smtp_port=smtp_server.port)
    log = tmp_path / "daemon.log"
    with daemon(config, log, env={"NOTIFY_SOCKET": notify.name}) as proc:
        wait_for(lambda: to(smtp_server, "alice@example.org"), what="for alice's alert")
        wait_for(lambda: ("bob@example.org", "alert", "deferred") in rows(tmp_path))
        # Bob leaves, Carol joins with her own rule and schedule; then a paper for her appears.
        (tmp_path / "subscribers.yaml").write_text(
            SUBSCRIBERS.split("  - email: bob")[0]
            + '  - email: carol@example.org\n    schedule: "30 6 * * mon"\n'
            + '    timezone: Asia/Tokyo\n    rules:\n      - any: ["diffusion"]\n'
            + "        alert: true\n"
        )
        del smtp_server.handler.rcpt_replies["bob@example.org"]
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded subscribers=2" in log.read_text(), what="for the reload")
        text = log.read_text()
        assert "added=1 removed=1 changed=0 expired=1 schedules_added=1" in text, text
        assert ("bob@example.org", "alert", "expired") in rows(tmp_path)
        reloading = notify.having("RELOADING")
        assert reloading and int(reloading[0]["MONOTONIC_USEC"]) > 0
        wait_for(lambda: len(notify.having("READY")) >= 2, what="for READY=1 after the reload")

        listing.items = [*listing.items, item("2611.00002", "Diffusion for everything")]
        wait_for(lambda: to(smtp_server, "carol@example.org"), what="for carol's alert")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    assert to(smtp_server, "bob@example.org") == []
    assert "Diffusion" in str(to(smtp_server, "carol@example.org")[0]["Subject"])


def test_sighup_with_a_bad_config_keeps_the_old_one_and_keeps_serving(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    Listing(http_server, [item("2611.00001", "KV cache tricks")])
    extra = "http:\n  listen: 127.0.0.1:0\n"
    config = write_config(tmp_path, source=http_server.url, smtp_port=smtp_server.port, extra=extra)
    log = tmp_path / "daemon.log"
    with daemon(config, log) as proc:
        port = http_port(log)
        wait_for(lambda: http_get(port, "/healthz")[0] == 200, what="for health")
        subs = tmp_path / "subscribers.yaml"
        subs.write_text("subscribers:\n  - email: not-an-email\n    timezone: Mars/Olympus\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused n_errors=2" in log.read_text(), what="for the refusal")
        text = log.read_text()
        assert f"level=error logger=digestd.service.reloader reload refused: {subs}:2:" in text
        assert "subscribers[0].email" in text and "Mars/Olympus" in text
        assert proc.poll() is None
        assert http_get(port, "/healthz")[0] == 200
        # A bad settings file is refused the same way, with its position.
        config.write_text(config.read_text().replace("poll_every: 1s", "poll_every: often"))
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: f"reload refused: {config}:3:15: source.poll_every" in log.read_text(),
            what="settings",
        )
        assert proc.poll() is None and http_get(port, "/healthz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert "reloaded" not in log.read_text()


def test_a_changed_file_reloads_without_a_signal(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    Listing(http_server, [])
    config = write_config(tmp_path, source=http_server.url, smtp_port=smtp_server.port)
    config.write_text(
        config.read_text().replace("config_check_every: 0s", "config_check_every: 100ms")
    )
    log = tmp_path / "daemon.log"
    with daemon(config, log) as proc:
        wait_for(lambda: "poll ok" in log.read_text())
        (tmp_path / "subscribers.yaml").write_text(SUBSCRIBERS + "  - email: dan@example.org\n")
        wait_for(lambda: "reloaded subscribers=3 added=1" in log.read_text(), what="for reload")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_healthz_and_metrics_over_http(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    listing = Listing(http_server, [item("2611.00001", "KV cache tricks")])
    extra = "http:\n  listen: 127.0.0.1:0\n"
    config = write_config(tmp_path, source=http_server.url, smtp_port=smtp_server.port, extra=extra)
    log = tmp_path / "daemon.log"
    with daemon(config, log) as proc:
        port = http_port(log)
        wait_for(lambda: len(smtp_server.received) == 2, what="for both alerts")
        wait_for(lambda: http_get(port, "/healthz")[0] == 200, what="for health")
        # The relay has the mail before the outcome's commit: wait for the store to say so.
        wait_for(
            lambda: 'digestd_messages{state="sent"} 2.0' in http_get(port, "/metrics")[1],
            what="for both sends to be committed",
        )
        body = json.loads(http_get(port, "/healthz")[1])
        assert body["status"] == "ok" and body["last_successful_poll"]
        status, metrics = http_get(port, "/metrics")
        assert status == 200
        for line in (
            'digestd_polls_total{result="failed"} 0.0',
            "digestd_papers_stored 1.0",
            'digestd_messages{state="sent"} 2.0',
            'digestd_matched_papers_total{kind="alert"} 2.0',
            'digestd_smtp_replies_total{class="2xx"} 2.0',
            "digestd_send_seconds_count 2.0",
        ):
            assert line in metrics, line
        assert 'digestd_send_seconds_bucket{le="600.0"} 2.0' in metrics
        assert "digestd_last_successful_poll_timestamp_seconds 1.7" in metrics
        assert "digestd_last_sent_timestamp_seconds 1.7" in metrics
        assert 'digestd_polls_total{result="ok"}' in metrics

        listing.status = 500  # the source breaks: after 3 × poll_every, health says so
        wait_for(lambda: http_get(port, "/healthz")[0] == 503, what="for 503")
        body = json.loads(http_get(port, "/healthz")[1])
        assert body["status"] == "unhealthy"
        assert "last successful poll" in body["reasons"][0], body
        assert 'digestd_polls_total{result="failed"} 0.0' not in http_get(port, "/metrics")[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_admins_get_one_alert_per_outage_and_one_on_recovery(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    listing = Listing(http_server, [])
    listing.status = 500
    extra = "admins: [ops@example.org]\nalerts:\n  source_down_after: 1s\n"
    config = write_config(tmp_path, source=http_server.url, smtp_port=smtp_server.port, extra=extra)
    config.write_text(config.read_text().replace("poll_every: 1s", "poll_every: 300ms"))
    log = tmp_path / "daemon.log"
    with daemon(config, log) as proc:
        wait_for(lambda: to(smtp_server, "ops@example.org"), what="for the problem alert")
        # Several more failed polls: still one mail.
        wait_for(lambda: log.read_text().count("poll failed") >= 8, what="for more failures")
        assert len(to(smtp_server, "ops@example.org")) == 1
        listing.status = 200
        wait_for(lambda: len(to(smtp_server, "ops@example.org")) == 2, what="for the recovery")
        wait_for(lambda: log.read_text().count("poll ok") >= 4)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    problem, recovered = to(smtp_server, "ops@example.org")
    assert str(problem["Subject"]).startswith("[Paper Digest] PROBLEM: the paper source")
    assert "500" in problem.get_body(("plain",)).get_content()
    assert str(recovered["Subject"]).startswith("[Paper Digest] RECOVERED")
    assert len(to(smtp_server, "ops@example.org")) == 2


def test_catch_up_is_logged_and_max_late_is_honoured(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    Listing(http_server, [])
    now = datetime.now(UTC)
    (tmp_path / "var").mkdir()
    with Store(tmp_path / "var" / "digestd.sqlite3") as store:  # subscribed three days ago
        store.subscribers.register(
            ["alice@example.org", "bob@example.org"], at=now - timedelta(days=3)
        )
    config = write_config(tmp_path, source=http_server.url, smtp_port=smtp_server.port)
    skipping = config.read_text() + "max_late: 1s\n"
    config.write_text(skipping)
    log = tmp_path / "skip.log"
    with daemon(config, log) as proc:
        wait_for(lambda: "poll ok" in log.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    text = log.read_text()
    assert "catch-up skipping digests older than max_late n_subscribers=2" in text, text
    assert "max_late=1s" in text and rows(tmp_path) == []

    config.write_text(skipping.replace("max_late: 1s", "max_late: 2d"))
    log = tmp_path / "send.log"
    with daemon(config, log) as proc:
        wait_for(lambda: "poll ok" in log.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    text = log.read_text()
    assert "catch-up sending late digests n_subscribers=2 schedule='0 7 * * *' timezone=UTC" in text
    assert "late_by=" in text and "max_late=2d" in text
    assert sorted(r[0] for r in rows(tmp_path) if r[1] == "digest") == [
        "alice@example.org",
        "bob@example.org",
    ]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_smtp_password_never_reaches_the_log(
    tmp_path: Path, http_server: LocalHTTPServer, fmt: str, tls_smtp: SMTPTestServer
) -> None:
    Listing(http_server, [item("2611.00001", "KV cache tricks")])
    config = write_config(tmp_path, source=http_server.url, smtp_port=tls_smtp.port)
    config.write_text(
        config.read_text().replace(
            "  security: none\n",
            "  security: starttls\n  validate_certs: false\n  username: digest\n",
        )
    )
    secret = "Hunter2-s3cret-pa55word"
    log = tmp_path / "daemon.log"
    env = {"DIGESTD_DELIVERY__PASSWORD": secret}
    with daemon(config, log, env=env, args=("--log-level", "debug", "--log-format", fmt)) as proc:
        wait_for(lambda: "535" in log.read_text(), what="for the auth failure")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    text = log.read_text()
    assert secret not in text
    assert "Traceback" not in text
    if fmt == "json":
        assert all(json.loads(line)["level"] for line in text.splitlines())


def test_the_unit_file_verifies(tmp_path: Path) -> None:
    analyze = "/usr/bin/systemd-analyze"
    if not Path(analyze).exists():
        pytest.skip("systemd-analyze is not installed")
    unit = (Path(__file__).parents[2] / "config" / "digestd.service").read_text()
    # verify insists that ExecStart exists: point it at this checkout's entry point.
    exe = Path(sys.executable).parent / "digestd"
    unit = unit.replace("/opt/digestd/bin/digestd", str(exe))
    path = tmp_path / "digestd.service"
    path.write_text(unit)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line for line in (result.stdout + result.stderr).splitlines() if "digestd.service" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
