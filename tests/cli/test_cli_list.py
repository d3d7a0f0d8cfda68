"""The CLI around deliverability: check's notes and template errors, unsubscribe/resubscribe/status,
and preview --open, each through the real `python -m digestd` process."""

from __future__ import annotations

import re
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest
from httpserver import LocalHTTPServer
from smtpserver import SMTPTestServer
from test_e2e import digestd, seed_items, serve_listing, start_daemon, wait_for, write_config


def config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(tmp_path, source_url="http://127.0.0.1:9", smtp_port=25, extra=extra)


def test_check_says_one_click_needs_public_url(tmp_path: Path) -> None:
    result = digestd(config(tmp_path), "check")
    assert result.returncode == 0, result.stderr
    assert "one-click unsubscribe needs http.public_url" in result.stdout
    ok = digestd(
        config(tmp_path, "http:\n  listen: 127.0.0.1:0\n  public_url: https://d.example.org\n"),
        "check",
        env={"DIGESTD_HTTP__SECRET": "s" * 32},
    )
    assert ok.returncode == 0, ok.stderr
    assert "one-click" not in ok.stdout and "s" * 32 not in ok.stdout
    assert "secret=<redacted>" in ok.stdout


def test_check_reports_a_broken_template_override_with_file_and_line(tmp_path: Path) -> None:
    templates = tmp_path / "mytemplates"
    templates.mkdir()
    (templates / "digest.html.j2").write_text("<p>\n{{ ctx.site_name }}\n{% if %}\n</p>\n")
    result = digestd(config(tmp_path, "templates: mytemplates\n"), "check")
    assert result.returncode == 2
    assert f"{templates / 'digest.html.j2'}:3:" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_a_bad_dkim_key(tmp_path: Path) -> None:
    (tmp_path / "dkim.pem").write_text("not a key")
    path = config(tmp_path)
    dkim = "  dkim: {selector: s1, domain: example.org, key_file: dkim.pem}\n"
    path.write_text(path.read_text().replace("delivery:\n", "delivery:\n" + dkim, 1))
    result = digestd(path, "check")
    assert result.returncode == 2, result.stdout
    assert "dkim.pem:1:1: delivery.dkim.key_file: not a PEM RSA private key" in result.stderr


def test_unsubscribe_status_resubscribe(tmp_path: Path) -> None:
    path = config(tmp_path)
    first = digestd(path, "unsubscribe", "Alice@Example.org")
    assert first.returncode == 0 and "nothing more" in first.stdout
    assert "already" in digestd(path, "unsubscribe", "alice@example.org").stdout
    status = digestd(path, "status")
    assert "unsubscribed: 1" in status.stdout and "alice@example.org since" in status.stdout
    assert "via admin" in status.stdout
    lifted = digestd(path, "resubscribe", "alice@example.org")
    assert lifted.returncode == 0, lifted.stderr
    assert "unsubscribed: 0" in digestd(path, "status").stdout
    missing = digestd(path, "resubscribe", "alice@example.org")
    assert missing.returncode == 1 and "is not unsubscribed" in missing.stderr


def test_preview_open_uses_the_local_browser_or_prints_the_path(tmp_path: Path) -> None:
    path = config(tmp_path)
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.py"
    browser.write_text(
        f"import sys, pathlib\npathlib.Path({str(opened)!r}).write_text(sys.argv[1])\n"
    )
    result = digestd(
        path,
        "preview",
        "bob@example.org",
        "--open",
        "--poll",  # a fresh install: preview alone only says the store is empty (issue 13)
        env={"BROWSER": f"{sys.executable} {browser} %s"},
    )
    assert result.returncode == 0, result.stderr
    assert opened.read_text().startswith("file://") and opened.read_text().endswith(".html")
    html = Path(opened.read_text()[len("file://") :]).read_text()
    assert "<html" in html and "mailto:digest@example.org?subject=unsubscribe" in html

    none = digestd(
        path, "preview", "bob@example.org", "--open", "--out", str(tmp_path / "p.html"),
        env={"BROWSER": "", "DISPLAY": "", "WAYLAND_DISPLAY": "", "PATH": str(tmp_path)},
    )  # fmt: skip
    assert none.returncode == 0, none.stderr
    assert (tmp_path / "p.html").exists()
    assert "no local browser found; open" in none.stdout


@pytest.mark.timeout(60)
def test_daemon_serves_one_click_unsubscribe_on_its_listener(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    serve_listing(http_server, seed_items())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    extra = f"http:\n  listen: 127.0.0.1:{port}\n  public_url: https://digest.example.org\n"
    config = write_config(
        tmp_path, source_url=http_server.url, smtp_port=smtp_server.port, extra=extra
    )
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, log)
    try:
        wait_for(lambda: len(smtp_server.received) >= 1 and "http listening" in log.read_text())
        message = smtp_server.received[0].message
        url = re.search(
            r"<https://digest\.example\.org(/unsubscribe/[^>]+)>", message["List-Unsubscribe"]
        )
        assert url is not None and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + url.group(1)).status_code == 200
        reply = httpx.post(base + url.group(1), data={"List-Unsubscribe": "One-Click"})
        assert reply.status_code == 200, reply.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    status = digestd(config, "status")
    assert f"{smtp_server.received[0].rcpt_tos[0]} since" in status.stdout
    assert "via one-click" in status.stdout
