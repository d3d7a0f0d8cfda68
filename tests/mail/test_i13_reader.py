"""Issue 13, the reader side, end to end: `digestd run --once` as a subprocess, papers from a file
listing, mail into a Maildir, web copies read back from the real store. One run serves every test:
what each reader finds in their own mail and web copy."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from html import unescape
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from digestd.core.model import Subscriber
from digestd.mail.empty_note import SourceActivity, empty_note
from digestd.service.routes import web_page
from digestd.store.sqlite import Store

FIXTURES = Path(__file__).parents[1] / "fixtures"

LATEX_TITLE = r"M$^3$ViT: Mixture-of-Experts Vision Transformer with $\alpha$-Blending"
LATEX_ABSTRACT = (
    r"We scale $\alpha$ by $2 \times$ and reach $\mathcal{O}(n^{2})$ cost on $4 \times 4$ grids; "
    "the mixture of experts keeps 50% of the tokens. " + "Filler words follow here. " * 40
)

# Kiritimati (UTC+14) and Pago Pago (UTC-11): at any moment one of them is not on the UTC date.
SUBSCRIBERS = """\
defaults:
  schedule: "0 7 * * *"
  timezone: UTC
  max_papers: 20
subscribers:
  - email: nora@example.org
    name: Nora
    timezone: Pacific/Kiritimati
    max_papers: 3
  - email: sam@example.org
    timezone: Pacific/Pago_Pago
    max_papers: 50
    abstract_chars: 0
    rules:
      - min_upvotes: 2
  - email: lena@example.org
    abstract_chars: 120
    rules:
      - any: ["mixture of experts", "transformer"]
"""


def latex_item() -> dict[str, Any]:
    items: list[dict[str, Any]] = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())
    item = json.loads(json.dumps(items[0]))
    item["paper"]["id"] = "2611.77777"
    item["paper"]["title"] = item["title"] = LATEX_TITLE
    item["paper"]["summary"] = item["summary"] = LATEX_ABSTRACT
    item["paper"]["upvotes"] = 5
    return item


@dataclass(frozen=True)
class Run:
    root: Path
    mails: dict[str, EmailMessage]
    papers: int  # how many papers the listing holds

    def part(self, who: str, kind: str) -> str:
        found = self.mails[who].get_body(preferencelist=(kind,))
        assert found is not None
        return str(found.get_content())

    def web_copy(self, who: str) -> str:
        url = re.search(r'href="(https://digest\.example\.org/view/[^"]+)"', self.part(who, "html"))
        assert url is not None, "no web-copy link"
        with Store(self.root / "var" / "digestd.sqlite3") as store:
            page = web_page(store, url.group(1).rsplit("/", 1)[1], now=datetime.now(UTC))
        assert isinstance(page, str)
        return page


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("reader")
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text()) + [latex_item()]
    (root / "listing.json").write_text(json.dumps(items))
    (root / "subscribers.yaml").write_text(SUBSCRIBERS)
    config = root / "digestd.yaml"
    config.write_text(
        """\
source:
  kind: file
  url: listing.json
state: var/digestd.sqlite3
delivery:
  kind: maildir
  path: mail
  from: "Paper Digest <digest@example.org>"
subscribers: subscribers.yaml
http:
  public_url: https://digest.example.org
"""
    )
    done = subprocess.run(
        [sys.executable, "-m", "digestd", "--config", str(config), "run", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr
    mails: dict[str, EmailMessage] = {}
    for path in (root / "mail" / "new").iterdir():
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        mails[str(msg["To"]).split("<")[-1].rstrip(">")] = msg
    return Run(root, mails, len(items))


def visible(html: str) -> str:
    """The words a reader sees: tags dropped, entities decoded, whitespace collapsed."""
    body = re.sub(r"<(style|head)\b.*?</\1>", " ", html, flags=re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", body)).split())


def test_i13_reasons_in_words(run: Run) -> None:
    for who in ("nora@example.org", "sam@example.org"):
        for part in (visible(run.part(who, "html")), " ".join(run.part(who, "plain").split())):
            assert not re.search(r"\brule \d+\b", part), (who, part[:400])
    nora = visible(run.part("nora@example.org", "html"))
    assert "Why it matched: new today, most upvoted first" in nora
    assert "matched your rules" not in nora
    assert "matched your rules" not in run.part("nora@example.org", "plain")
    assert "Why it matched: ≥ 2 upvotes" in visible(run.part("sam@example.org", "html"))
    assert "Why it matched: ≥ 2 upvotes" in run.part("sam@example.org", "plain")


@pytest.mark.parametrize("who", ["nora@example.org", "sam@example.org"])
def test_i13_dates_in_subscriber_timezone(run: Run, who: str) -> None:
    zone = {"nora@example.org": "Pacific/Kiritimati", "sam@example.org": "Pacific/Pago_Pago"}[who]
    sent = parsedate_to_datetime(str(run.mails[who]["Date"]))
    local = sent.astimezone(ZoneInfo(zone)).strftime("%A %d %B %Y")
    assert f"— {local}" in run.part(who, "plain").splitlines()[0]
    assert local in visible(run.part(who, "html")).split("Hello")[0]


def test_i13_every_matched_paper_is_reachable(run: Run) -> None:
    html = run.part("nora@example.org", "html")
    text = visible(html)
    more = run.papers - 3
    assert f"{more} more papers matched beyond your limit of 3 per email" in text
    assert "are not included" not in text
    links = set(re.findall(r'href="(https://(?:huggingface\.co|arxiv\.org)/[^"]+)"', html))
    page = run.web_copy("nora@example.org")
    page_links = set(re.findall(r'href="(https://(?:huggingface\.co|arxiv\.org)/[^"]+)"', page))
    # The mail lists the remainder by title while the budget allows; the web copy holds all.
    assert len({u for u in links if "/pdf/" not in u}) == run.papers
    assert len({u for u in page_links if "/pdf/" not in u}) == run.papers
    assert f"{more} more papers matched beyond your limit of 3 per email" in visible(page)


def abstracts(html: str) -> list[str]:
    """Each abstract's HTML, without the link to the whole one that follows a cut."""
    found = re.findall(r'<p class="abstract"[^>]*>(.*?)</p>', html, flags=re.S)
    return [re.sub(r"\s*<a [^>]*>Read the abstract</a>$", "", a) for a in found]


def test_i13_abstract_chars(run: Run) -> None:
    sam = run.part("sam@example.org", "html")
    assert 'class="abstract"' not in sam  # abstract_chars: 0 is titles only
    nora = run.part("nora@example.org", "html")
    assert abstracts(nora)
    for abstract in abstracts(nora):
        shown = unescape(re.sub(r"<[^>]+>", "", abstract)).strip()
        assert len(shown) <= 400, shown  # the default keeps a paper to a few lines
        if shown.endswith("…"):
            assert not shown[:-1].endswith(" ")
    lena = run.part("lena@example.org", "html")
    assert abstracts(lena)
    for abstract in abstracts(lena):
        shown = unescape(re.sub(r"<[^>]+>", "", abstract)).strip()
        assert len(shown) <= 130, shown
        # A highlight cut by the ellipsis still closes; none is left empty.
        assert abstract.count("<mark") == abstract.count("</mark>")
        assert "<mark></mark>" not in abstract


def test_i13_latex_reads_as_text(run: Run) -> None:
    for who in ("nora@example.org", "lena@example.org"):
        html, plain = run.part(who, "html"), run.part(who, "plain")
        assert "M³ViT" in visible(html) and "M³ViT" in plain
        assert "$" not in visible(html).split("M³ViT")[1][:200]
        assert "\\alpha" not in html and "\\times" not in html and "\\alpha" not in plain
    lena = re.sub(r' style="[^"]*"', "", run.part("lena@example.org", "html"))
    # Rules match the converted text, and highlights point at the words the reader sees there.
    assert "M³ViT: <mark>Mixture-of-Experts</mark> Vision <mark>Transformer</mark> with α-" in lena
    assert (
        "α by 2 × and reach 𝒪(n²) cost on 4 × 4 grids; the <mark>mixture of experts</mark> k"
        in lena
    )


def test_i13_empty_note_times_are_the_readers() -> None:
    """The "nothing matched" note said "since 2026-12-01 23:00 UTC" to a reader in Tokyo."""
    since = datetime(2026, 12, 1, 23, 0, tzinfo=UTC)
    last = datetime(2026, 11, 30, 22, 30, tzinfo=UTC)
    sub = Subscriber(email="mei@example.org", name="Mei", timezone="Asia/Tokyo")
    note = empty_note(
        sub, [SourceActivity("arxiv", 0, last_new_at=last)], since=since, site_name="Digest"
    )
    assert "since 2026-12-02 08:00 JST" in note.text
    assert "last new paper 2026-12-01 07:30 JST" in note.text
    assert "UTC" not in note.text
