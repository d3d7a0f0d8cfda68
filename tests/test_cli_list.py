"""The CLI around deliverability: check's notes and template errors, unsubscribe/resubscribe/status,
and preview --open, each through the real `python -m digestd` process."""

from __future__ import annotations

import sys
from pathlib import Path

from test_e2e import digestd, write_config


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
    assert "'secret': '<redacted>'" in ok.stdout


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
