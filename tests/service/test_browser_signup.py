"""A reader signs up in a real browser (Playwright driving Debian's chromium) against the real
daemon: the form, the confirmation mail read from aiosmtpd, the confirm button, the first digest
from the next `run --once` following the chosen topic, then the preferences page: edit, pause,
resume. PNGs at 375 and 800 px are kept in test-artifacts/signup/ (gitignored; the path is printed).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from daemonproc import daemon, http_port, item, wait_for
from smtpserver import SMTPTestServer

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "signup"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]  # fmt: skip
READER = "reader@lab.example.org"
PAPERS = [
    ("2611.00001", "Sparse attention for large language models at scale"),
    ("2611.00002", "Gaussian splatting for dynamic video scenes"),
    ("2611.00003", "Protein structure prediction with equivariant networks"),
]
SUBSCRIBERS = """\
rule_sets:
  llm: [{any: [language model]}]
  vision: [{any: [splatting, video]}]
subscribers:
  - email: admin-reader@lab.example.org
    use: [llm]
"""

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium is not installed (apt-get install chromium); .ci/run installs it",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scene(tmp_path: Path, smtp_port: int, http: int) -> Path:
    items = [item(pid, title) for pid, title in PAPERS]
    (tmp_path / "papers.json").write_text(json.dumps(items))
    (tmp_path / "subscribers.yaml").write_text(SUBSCRIBERS)
    config = tmp_path / "digestd.yaml"
    config.write_text(f"""\
source: {{kind: file, url: papers.json}}
state: state.sqlite3
delivery: {{kind: smtp, host: 127.0.0.1, port: {smtp_port}, security: none, timeout: 5s,
           from: "Paper Digest <digest@example.org>"}}
subscribers: subscribers.yaml
lookback: 3650d
http:
  listen: 127.0.0.1:{http}
  public_url: http://127.0.0.1:{http}
  secret: a-browser-test-secret-of-32-bytes
signup:
  enabled: true
  allowed_domains: [lab.example.org]
  topics: {{llm: Language models, vision: Computer vision}}
""")
    return config


def mail_link(smtp: SMTPTestServer, subject: str, path: str) -> str:
    wait_for(lambda: any(r.message["Subject"] == subject for r in smtp.received), what=subject)
    message = next(r.message for r in smtp.received if r.message["Subject"] == subject)
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    found = re.search(rf"http://127\.0\.0\.1:\d+/{path}/[\w-]+", text)
    assert found, text
    return found.group(0)


# Every visible control has a label; the honeypot is out of the tab order and hidden from AT.
UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(e => e.type !== 'hidden' && !e.closest('[aria-hidden=true]') && e.labels.length === 0)
  .map(e => e.id || e.name)"""
CONTRAST = """() => { const m = getComputedStyle(document.querySelector('main'));
  return [m.color, m.backgroundColor]; }"""


def shots(page: Any, name: str) -> None:
    """Light at 375 and 800 px, dark at 375: nothing overflows, text differs from its background."""
    for width, scheme in ((375, "light"), (800, "light"), (375, "dark")):
        page.emulate_media(color_scheme=scheme)
        page.set_viewport_size({"width": width, "height": 900})
        assert page.evaluate("document.documentElement.scrollWidth") <= width, (name, width)
        colour, background = page.evaluate(CONTRAST)
        assert colour != background
        if scheme == "dark":
            assert background != "rgb(255, 255, 255)"
        suffix = "-dark" if scheme == "dark" else ""
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}{suffix}.png"), full_page=True)
    page.emulate_media(color_scheme="light")


def check_form_a11y(page: Any) -> None:
    assert page.evaluate(UNLABELLED) == []
    page.locator("#email").focus()
    order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order == ["name", "topic-1", "topic-2", "keywords"], order


def run_once(config: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "digestd", "--config", str(config), "run", "--once"],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]


@pytest.mark.timeout(240)
def test_sign_up_confirm_digest_then_preferences(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    config = scene(tmp_path, smtp_server.port, free_port())
    log = tmp_path / "daemon.log"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(
            timezone_id="Asia/Tokyo", viewport={"width": 800, "height": 900}
        )
        page = context.new_page()
        try:
            with daemon(config, log) as proc:
                port = http_port(log)
                page.goto(f"http://127.0.0.1:{port}/subscribe")
                assert page.locator("#timezone").input_value() == "Asia/Tokyo"  # the script ran
                check_form_a11y(page)
                page.get_by_label("Email address").fill(READER)
                page.get_by_label("Name").fill("Rea Der")
                page.get_by_label("Computer vision").check()
                page.get_by_label("Weekly, on").check()
                page.locator("#weekday").select_option("wed")
                page.get_by_label("At", exact=True).select_option("8")
                page.get_by_label("At most this many papers per mail").fill("5")
                shots(page, "subscribe")
                page.get_by_role("button", name="Subscribe").click()
                page.wait_for_url("**/subscribe/sent")
                assert "Check your inbox" in page.content()
                link = mail_link(
                    smtp_server, "Confirm your subscription to Paper Digest", "confirm"
                )
                page.goto(link)
                shots(page, "confirm")
                page.get_by_role("button", name="Confirm my subscription").click()
                page.wait_for_selector("text=You are subscribed")
                manage = page.get_by_role(
                    "link", name=re.compile("Change your topics")
                ).get_attribute("href")
                assert manage
                proc.terminate()
                proc.wait(timeout=30)
            run_once(config)
            digests = [r.message for r in smtp_server.received
                       if r.rcpt_tos == [READER] and "Confirm" not in r.message["Subject"]]  # fmt: skip
            assert len(digests) == 1, [m["Subject"] for m in digests]
            body = digests[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
            assert PAPERS[1][1] in body and PAPERS[0][1] not in body and PAPERS[2][1] not in body

            with daemon(config, log) as proc:
                http_port(log)
                page.goto(manage)
                assert "Computer vision" in page.content()
                page.get_by_label("Keywords").fill("protein")
                page.get_by_role("button", name="Save").click()
                page.wait_for_selector("text=Saved.")
                assert page.get_by_label("Keywords").input_value() == "protein"
                page.locator("#weeks").select_option("2")
                page.get_by_role("button", name="Pause").click()
                page.wait_for_selector("text=Paused until")
                shots(page, "preferences-paused")
                page.get_by_label(re.compile("Send what I missed")).check()
                page.get_by_role("button", name="Resume now").click()
                page.wait_for_selector("text=also brings what you missed")
                shots(page, "preferences")
                proc.terminate()
                proc.wait(timeout=30)
        finally:
            browser.close()
    print(f"\nscreenshots: {ARTIFACTS}")
    assert (ARTIFACTS / "subscribe-375.png").stat().st_size > 1000
