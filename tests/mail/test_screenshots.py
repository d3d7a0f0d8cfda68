"""The digest in a real browser (Debian's chromium via Playwright) at phone and desktop widths.

Nothing may overflow horizontally and the unsubscribe link must be visible, in light and dark mode.
The PNGs are kept in test-artifacts/ (gitignored) for a human to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from digestd.core.model import Digest, Match, Paper, Reason, Subscriber
from digestd.mail.render import RenderContext, make_environments, render_digest
from digestd.sources.hf_json import parse_hf_daily

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]  # fmt: skip
HOSTILE = [
    "<script>alert(1)</script> KV-Cache tricks\r\nBcc: evil@attacker.example =?UTF-8?Q?=0A?=",
    "Supercalifragilisticexpialidocious" * 8,  # one unbreakable word, far wider than a phone
    "https://example.org/" + "a/" * 80,
    "مرحبا بالعالم — mixed RTL עברית and LTR text in one title",
    "Ｗｉｄｅ　ｃｈａｒａｃｔｅｒｓ　" * 6,
    "Emoji 🧪🔬📈 " * 10,
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium is not installed (apt-get install chromium); .ci/run installs it",
)


def hostile_digest() -> str:
    matches = []
    for i in range(40):
        title = HOSTILE[i % len(HOSTILE)] + f" #{i}"
        paper = Paper(
            id=f"2611.{i:05d}",
            title=title,
            abstract=("Tokens " + "x" * 300 + " and a normal sentence about attention. ") * 3,
            authors=("A" * 120, "Ünïcödé Äuthor", *(f"Author {j}" for j in range(10))),
            upvotes=500 - i,
            comments=i,
            organization="Org" + "o" * 100,
            ai_summary="Summary " + "y" * 200,
            github_repo="https://github.com/" + "r" * 150,
        )
        matches.append(Match(paper, reasons=(Reason(0, "kv cache", "title"),)))
    ctx = RenderContext(
        site_name="Paper Digest",
        date_label="Monday 23 November 2026",
        unsubscribe_url="https://digest.example.org/unsubscribe/" + "T" * 32,
        manage_note="You receive this because an administrator subscribed you.",
        web_url="https://digest.example.org/view/" + "V" * 24,
        max_papers=40,
    )
    sub = Subscriber(email="ann@example.org", name="Ann " + "N" * 80, max_papers=40)
    rest = tuple(matches[:12])  # the papers beyond max_papers, listed by their hostile titles
    return render_digest(
        Digest(sub, "digest", tuple(matches), more=12, rest=rest), make_environments(), ctx
    ).html


def seed_digest(abstract_chars: int | None) -> str:
    """13 real papers of the seed listing, as a subscriber without rules gets them."""
    data = (ROOT / "tests" / "fixtures" / "hf_daily_papers_seed.json").read_bytes()
    papers = parse_hf_daily(data).papers[:13]
    matches = tuple(Match(p, reasons=(Reason(-1, field="every"),)) for p in papers)
    ctx = RenderContext(
        site_name="Paper Digest",
        date_label="Wednesday 02 December 2026",
        unsubscribe_url="https://digest.example.org/unsubscribe/" + "T" * 32,
        manage_note="You receive this because an administrator subscribed you.",
        abstract_chars=abstract_chars,
    )
    sub = Subscriber(email="ann@example.org")
    return render_digest(Digest(sub, "digest", matches), make_environments(), ctx).html


@pytest.mark.timeout(120)
def test_i13_a_13_paper_digest_is_short_enough_to_read(tmp_path: Path) -> None:
    """Nearly whole abstracts made 13 papers 9,214 px tall on a desktop, 10,963 px on a phone;
    the default abstract_chars keeps them to a few lines each."""
    sync_api = pytest.importorskip("playwright.sync_api")
    default = Subscriber(email="x@example.org").abstract_chars
    heights: dict[tuple[str, int], int] = {}
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            for label, chars in (("before", None), ("after", default)):
                page_file = tmp_path / f"seed-{label}.html"
                page_file.write_text(seed_digest(chars), encoding="utf-8")
                for width in (375, 800):
                    page = browser.new_page(viewport={"width": width, "height": 900})
                    page.goto(page_file.as_uri())
                    heights[label, width] = page.evaluate("document.documentElement.scrollHeight")
                    page.screenshot(
                        path=str(ARTIFACTS / f"seed13-{label}-{width}.png"), full_page=True
                    )
                    page.close()
        finally:
            browser.close()
    print(heights)
    for width in (375, 800):
        assert heights["after", width] < 0.6 * heights["before", width], heights
    assert heights["after", 800] < 6000 and heights["after", 375] < 8000, heights


@pytest.mark.timeout(120)
def test_digest_renders_without_overflow_at_375_and_800(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    page_file = tmp_path / "digest.html"
    page_file.write_text(hostile_digest(), encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            for scheme in ("light", "dark"):
                for width in (375, 800):
                    page = browser.new_page(
                        viewport={"width": width, "height": 900}, color_scheme=scheme
                    )
                    # Offline: the mail must not need the network to look right.
                    page.route("**/*", lambda route: route.abort()
                               if not route.request.url.startswith("file:") else route.continue_())  # fmt: skip
                    page.goto(page_file.as_uri())
                    scroll_width = page.evaluate("document.documentElement.scrollWidth")
                    inner = page.evaluate("window.innerWidth")
                    assert scroll_width <= inner, (scheme, width, scroll_width, inner)
                    link = page.locator("a.unsubscribe")
                    link.scroll_into_view_if_needed()
                    assert link.is_visible()
                    box = link.bounding_box()
                    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
                    assert page.locator(".preheader").is_hidden()
                    colour = page.evaluate(
                        "getComputedStyle(document.querySelector('.authors')).color"
                    )
                    background = page.evaluate(
                        "getComputedStyle(document.querySelector('.container')).backgroundColor"
                    )
                    assert colour != background
                    page.locator(".footer").screenshot(
                        path=str(ARTIFACTS / f"footer-{width}-{scheme}.png")
                    )
                    page.evaluate("window.scrollTo(0, 0)")
                    page.screenshot(path=str(ARTIFACTS / f"digest-{width}-{scheme}.png"))
                    page.close()
        finally:
            browser.close()
    assert (ARTIFACTS / "digest-375-light.png").stat().st_size > 1000
