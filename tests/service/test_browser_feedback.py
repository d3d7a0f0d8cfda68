"""The "more / less like this" links in a real browser (Playwright driving Debian's chromium) against
the real daemon: `run --once` mails a digest through aiosmtpd; with JavaScript the page records at
once by its POST (the CSP allows that script by hash); with JavaScript disabled nothing is recorded
until the button is pressed; the other link of a paper replaces the first; the daemon retrains the
model and saves it beside the state file. PNGs in test-artifacts/feedback/ (gitignored)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from daemonproc import daemon, http_port, item, wait_for
from smtpserver import SMTPTestServer
from test_browser_signup import ARGS, CHROMIUM, ROOT, free_port, run_once, scene

from digestd.store.sqlite import Store

ARTIFACTS = ROOT / "test-artifacts" / "feedback"
ADMIN_READER = "admin-reader@lab.example.org"  # the YAML's `llm` subscriber in the scene
PAPERS = [
    ("2611.00011", "Sparse attention for large language models at scale"),
    ("2611.00012", "Speculative decoding makes language model inference fast"),
    ("2611.00013", "Instruction tuning of small language models"),
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium is not installed (apt-get install chromium); .ci/run installs it",
)


def feedback_links(smtp: SMTPTestServer) -> list[tuple[str, str]]:
    """(more, less) URLs per paper of the reader's digest, in the mail's order."""
    mine = [r.message for r in smtp.received if r.rcpt_tos == [ADMIN_READER]]
    assert mine, [r.rcpt_tos for r in smtp.received]
    message = mine[0]
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    mores = re.findall(r"More like this: (http://\S+/feedback/[\w-]+)", text)
    lesses = re.findall(r"Less like this: (http://\S+/feedback/[\w-]+)", text)
    assert mores and len(mores) == len(lesses), text
    return list(zip(mores, lesses, strict=True))


def ratings(tmp_path: Path) -> dict[str, int]:
    with Store(tmp_path / "state.sqlite3") as store:
        return {r.paper_id: r.value for r in store.ratings.ratings(ADMIN_READER)}


def shot(page: Any, name: str) -> None:
    for width in (375, 800):
        page.set_viewport_size({"width": width, "height": 700})
        assert page.evaluate("document.documentElement.scrollWidth") <= width, (name, width)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)


@pytest.mark.timeout(240)
def test_feedback_with_and_without_javascript(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    config = scene(tmp_path, smtp_server.port, free_port())
    log = tmp_path / "daemon.log"
    with daemon(config, log) as proc:  # registers the subscribers: their first digest starts now
        http_port(log)
        proc.terminate()
        proc.wait(timeout=30)
    (tmp_path / "papers.json").write_text(json.dumps([item(p, t) for p, t in PAPERS]))
    run_once(config)
    (first_more, first_less), *_ = feedback_links(smtp_server)
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            with daemon(config, log) as proc:
                http_port(log)
                # Script on: opening the link records at once, by POST.
                scripted = browser.new_context().new_page()
                scripted.on("console", lambda m: errors.append(m.text) if m.type == "error" else 0)
                scripted.goto(first_more)
                scripted.wait_for_selector("text=You'll see more papers like")
                shot(scripted, "recorded")
                assert set(ratings(tmp_path).values()) == {1}
                # Script off: the page waits for the button; a GET records nothing.
                plain = browser.new_context(java_script_enabled=False).new_page()
                plain.goto(first_less)
                button = plain.get_by_role("button", name="Less like this")
                assert button.is_visible() and "Nothing is recorded" in plain.content()
                shot(plain, "confirm")
                assert set(ratings(tmp_path).values()) == {1}
                button.click()
                plain.wait_for_selector("text=You'll see fewer papers like")
                # The other link of the same paper replaced the first verdict.
                assert list(ratings(tmp_path).values()) == [-1]
                plain.goto(first_more)
                plain.get_by_role("button", name="More like this").click()
                plain.wait_for_selector("text=You'll see more papers like")
                assert list(ratings(tmp_path).values()) == [1]
                # The daemon retrained the model off its loop and saved it.
                model = Path(f"{tmp_path / 'state.sqlite3'}.relevance.npz")
                wait_for(model.exists, what="the saved relevance model")
                proc.terminate()
                proc.wait(timeout=30)
        finally:
            browser.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors
    assert "Traceback" not in log.read_text()
    print(f"\nscreenshots: {ARTIFACTS}")
