"""Issue 13, the admin side: what a new admin trips on in the first week, each through the real
`python -m digestd` process where the behaviour is the command line's."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dkim
import httpx
import pytest
from httpserver import LocalHTTPServer
from smtpserver import SMTPTestServer
from starlette.applications import Starlette
from test_e2e import ROOT, digestd, seed_items, serve_listing, write_config

from digestd.cli.progress import RichProgress
from digestd.service.health import HealthProbe, routes
from digestd.service.logs import setup_logging
from digestd.service.metrics import Metrics
from digestd.store.sqlite import Store

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
EVERYONE = ("alice@example.org", "bob@example.org", "refused@example.org")


def demo(tmp_path: Path) -> Path:
    """The README's demo (file source, Maildir), its state and mail kept under tmp_path."""
    shutil.copytree(ROOT / "config" / "demo", tmp_path / "demo")
    path = tmp_path / "demo" / "digestd.yaml"
    text = path.read_text().replace("../../var/demo/", "var/")
    path.write_text(text)
    return path


def raw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m digestd ARGS` with nothing added (no --config in front)."""
    return subprocess.run(
        [sys.executable, "-m", "digestd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


# run --once exit codes -----------------------------------------------------------------------


def test_i13_run_once_exits_75_when_every_message_was_deferred(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    serve_listing(http_server, seed_items())
    for rcpt in EVERYONE:
        smtp_server.handler.rcpt_replies[rcpt] = "451 4.7.1 greylisted, try again later"
    config = write_config(tmp_path, source_url=http_server.url, smtp_port=smtp_server.port)
    result = digestd(config, "run", "--once")
    assert result.returncode == 75, (result.stdout, result.stderr)
    assert "sent 0, deferred" in result.stdout and smtp_server.received == []
    assert "remain queued" in result.stderr
    assert "75" in digestd(config, "run", "--help").stdout


def test_i13_run_once_exits_1_when_a_message_failed(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    serve_listing(http_server, seed_items())
    smtp_server.handler.rcpt_replies["refused@example.org"] = "550 5.1.1 no such user"
    config = write_config(tmp_path, source_url=http_server.url, smtp_port=smtp_server.port)
    result = digestd(config, "run", "--once")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "failed 1" in result.stdout
    # A failed digest's papers go into the next one; once the relay takes it, all is done.
    smtp_server.handler.rcpt_replies.clear()
    assert digestd(config, "run", "--once").returncode == 0


# JSON logs and logs through the progress console ---------------------------------------------


def test_i13_json_log_has_ts_event_and_typed_fields(tmp_path: Path) -> None:
    config = demo(tmp_path)
    result = digestd(config, "--log-format", "json", "run", "--once")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    poll = next(e for e in events if e["event"] == "poll ok")
    assert poll["source"] == "file" and poll["n_items"] == 54 and poll["n_new"] == 54
    assert poll["level"] == "info" and poll["logger"].startswith("digestd")
    assert "msg" not in poll
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", poll["ts"])


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Tests that call setup_logging leave the root logger as they found it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_i13_json_log_fields_keep_spaces_and_hide_secrets() -> None:
    stream = io.StringIO()
    setup_logging("info", fmt="json", stream=stream)
    log = logging.getLogger("digestd.test")
    log.warning("poll failed source=%s transient=%s error=%s", "hf", True, "connection refused")
    log.info("retrying source=%s url=%s error=%s in=%.1fs", "hf", "http://x", "boom", 1.5)
    log.info("login password=%s token=%s", "hunter2", "hf_abc")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "poll failed" and first["error"] == "connection refused"
    assert first["transient"] is True and first["level"] == "warning"
    assert second["in"] == "1.5s" and second["url"] == "http://x"
    assert "hunter2" not in stream.getvalue() and "hf_abc" not in stream.getvalue()
    assert third["password"] == "<redacted>"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.usefixtures("root_logging")
def test_i13_log_lines_print_above_the_bars_not_through_them() -> None:
    err = io.StringIO()
    setup_logging("info", stream=err)
    out = FakeTerminal()
    bars = RichProgress(out)
    bars.begin("send", 3)
    logging.getLogger("digestd.test").warning("send kind=%s outcome=%s", "digest", "deferred")
    bars.advance("send", 3)
    bars.close()
    assert err.getvalue() == ""  # not written past the live display
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    lines = [part for line in plain.splitlines() for part in line.split("\r")]
    assert "level=warning logger=digestd.test send kind=digest outcome=deferred" in [
        line.strip() for line in lines
    ]


# check shows what is in force ----------------------------------------------------------------


def test_i13_check_shows_only_settings_in_force(tmp_path: Path) -> None:
    result = digestd(demo(tmp_path), "check")
    assert result.returncode == 0, result.stderr
    delivery = next(line for line in result.stdout.splitlines() if "delivery:" in line)
    assert "kind=maildir" in delivery and "path=" in delivery
    assert "host=" not in delivery and "port=" not in delivery and "security=" not in delivery
    source = next(line for line in result.stdout.splitlines() if "kind=file" in line)
    for unused in ("categories", "max_results", "page_size", "min_interval", "listing", "days="):
        assert unused not in source, source
    smtp = write_config(tmp_path, source_url="http://127.0.0.1:9", smtp_port=2525)
    shown = digestd(smtp, "check").stdout
    assert "port=2525" in shown and "path=" not in shown.split("delivery:")[1].splitlines()[0]


# preview on a fresh install ------------------------------------------------------------------


def test_i13_preview_on_a_fresh_install_says_how_to_fill_the_store(tmp_path: Path) -> None:
    config = demo(tmp_path)
    result = digestd(config, "preview", "alice@example.org")
    assert result.returncode == 0, result.stderr
    assert "empty" in result.stderr and "preview --poll" in result.stderr
    assert not (tmp_path / "demo" / "var").exists()  # nothing created on disk

    polled = digestd(config, "preview", "--poll", "alice@example.org")
    assert polled.returncode == 0, polled.stderr
    assert "empty" not in polled.stderr and "Subject:" in polled.stdout
    assert not (tmp_path / "demo" / "var" / "mail").exists()  # nothing sent


def test_i13_preview_says_when_the_address_gets_nothing(tmp_path: Path) -> None:
    config = demo(tmp_path)
    assert digestd(config, "preview", "--poll", "alice@example.org").returncode == 0
    assert digestd(config, "unsubscribe", "alice@example.org").returncode == 0
    result = digestd(config, "preview", "alice@example.org")
    assert result.returncode == 0, result.stderr
    assert "alice@example.org is unsubscribed" in result.stderr
    assert "resubscribe" in result.stderr


# unsubscribe of an unknown address -----------------------------------------------------------


def test_i13_unsubscribe_of_an_unknown_address_warns_and_exits_1(tmp_path: Path) -> None:
    config = demo(tmp_path)
    result = digestd(config, "unsubscribe", "alcie@example.org")
    assert result.returncode == 1
    assert "alcie@example.org is in no subscribers file" in result.stderr
    assert "--force" in result.stderr and "nothing more" not in result.stdout
    assert "unsubscribed: 0" in digestd(config, "status").stdout
    forced = digestd(config, "unsubscribe", "--force", "alcie@example.org")
    assert forced.returncode == 0 and "will receive nothing more" in forced.stdout
    assert "unsubscribed: 1" in digestd(config, "status").stdout


# status and /healthz agree -------------------------------------------------------------------


def test_i13_status_counts_a_failing_source_as_a_problem(
    tmp_path: Path, http_server: LocalHTTPServer
) -> None:
    http_server.respond("/api/daily_papers", status=503, body=b"down", times=None)
    config = write_config(tmp_path, source_url=http_server.url, smtp_port=9)
    config.write_text(config.read_text().replace("timeout: 5s", "timeout: 5s\n  retries: 0", 1))
    assert digestd(config, "run", "--once").returncode == 1
    status = digestd(config, "status").stdout
    assert "problems:    1" in status, status
    assert "source huggingface" in status.split("problems:")[1]


async def test_i13_healthz_names_the_last_successful_poll_its_reason_names(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.polls.record("hf", at=T0, ok=True)
    now = T0 + timedelta(hours=3)
    probe = HealthProbe(store, lambda: now, T0, lambda: timedelta(minutes=30), lambda: True)
    app = Starlette(routes=routes(probe, Metrics(store)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        body = (await client.get("/healthz")).json()
    assert body["status"] == "unhealthy" and "last successful poll 3 h ago" in body["reasons"][0]
    assert body["last_successful_poll"] == T0.isoformat()
    store.close()


# environment overrides -----------------------------------------------------------------------


def test_i13_an_env_override_error_names_the_variable(tmp_path: Path) -> None:
    config = write_config(tmp_path, source_url="http://127.0.0.1:9", smtp_port=25)
    result = digestd(config, "check", env={"DIGESTD_DELIVERY__PORT": "abc"})
    assert result.returncode == 2
    assert "DIGESTD_DELIVERY__PORT" in result.stderr and "delivery.port" in result.stderr
    assert f"{config}:" not in result.stderr


def test_i13_check_warns_of_a_misspelled_variable(tmp_path: Path) -> None:
    config = write_config(tmp_path, source_url="http://127.0.0.1:9", smtp_port=25)
    result = digestd(config, "check", env={"DIGESTD_STAET": "x", "DIGESTD_HTTP__VIEW_DAYS": "3"})
    assert result.returncode == 0, result.stderr
    assert "DIGESTD_STAET" in result.stdout and "not a setting" in result.stdout
    assert "did you mean DIGESTD_STATE" in result.stdout
    assert "DIGESTD_HTTP__VIEW_DAYS" not in result.stdout
    # A section's own check failing on a value from the environment names the variable too.
    bad = digestd(config, "check", env={"DIGESTD_HTTP__PUBLIC_URL": "ftp://x"})
    assert bad.returncode == 2 and "set by DIGESTD_HTTP__PUBLIC_URL" in bad.stderr


# dkim keygen ---------------------------------------------------------------------------------


def test_i13_dkim_keygen_writes_a_private_key_and_prints_the_record(tmp_path: Path) -> None:
    key = tmp_path / "dkim" / "s1.pem"
    result = raw("dkim", "keygen", "--selector", "s1", "--domain", "example.org", "--out", str(key))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in result.stdout
    record = re.search(r"s1\._domainkey\.example\.org\. TXT (.+)", result.stdout)
    assert record is not None, result.stdout
    txt = "".join(re.findall(r'"([^"]*)"', record.group(1)))
    assert txt.startswith("v=DKIM1; k=rsa; p=")
    message = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
    signed = dkim.sign(message, b"s1", b"example.org", key.read_bytes())
    assert dkim.verify(signed + message, dnsfunc=lambda name, timeout=5: txt.encode())
    # check prints the very same record for that key.
    config = write_config(tmp_path, source_url="http://127.0.0.1:9", smtp_port=25)
    dkim_yaml = f"  dkim: {{selector: s1, domain: example.org, key_file: {key}}}\n"
    config.write_text(config.read_text().replace("delivery:\n", "delivery:\n" + dkim_yaml, 1))
    checked = digestd(config, "check")
    assert checked.returncode == 0, checked.stderr
    assert record.group(0) in checked.stdout
    again = raw("dkim", "keygen", "--selector", "s1", "--domain", "example.org", "--out", str(key))
    assert again.returncode == 1 and "exists" in again.stderr


# global options anywhere, help everywhere ----------------------------------------------------


def test_i13_global_options_after_the_subcommand(tmp_path: Path) -> None:
    config = demo(tmp_path)
    result = raw("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    both = raw("--log-level", "debug", "status", "--config", str(config), "--log-level", "warning")
    assert both.returncode == 0, both.stderr


@pytest.mark.parametrize(
    "command",
    [
        "run",
        "check",
        "preview",
        "status",
        "unsubscribe",
        "resubscribe",
        "unsuspend",
        "dkim keygen",
    ],
)
def test_i13_every_subcommand_help_has_a_description_and_an_example(command: str) -> None:
    result = raw(*command.split(), "--help")
    assert result.returncode == 0, result.stderr
    assert "example:" in result.stdout.lower() and f"digestd {command}" in result.stdout
    usage, _, rest = result.stdout.partition("\n\n")
    assert rest.strip() and not rest.lstrip().startswith(("positional", "options"))
