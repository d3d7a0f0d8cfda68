"""Gmail clips HTML past ~102 KB, hiding the unsubscribe link: the mail stays under 90 KB, always."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from digestd.core.model import Digest, Match, Paper, Reason, Subscriber
from digestd.mail.render import (
    HTML_BUDGET,
    Environments,
    RenderContext,
    make_environments,
    render_digest,
)

CTX = RenderContext(
    site_name="Paper Digest",
    date_label="Monday 23 November 2026",
    unsubscribe_url="https://digest.example.org/unsubscribe/" + "T" * 32,
    manage_note="Reply to change your rules.",
    web_url="https://digest.example.org/view/" + "V" * 24,
    max_papers=500,
)
SUB = Subscriber(email="ann@example.org", name="Ann", max_papers=500)
ABSTRACT = ("We study sparse attention for long contexts and show it scales. " * 30).strip()


@pytest.fixture(scope="module")
def envs() -> Environments:
    return make_environments()


def papers(n: int, *, abstract: str = ABSTRACT) -> tuple[Match, ...]:
    return tuple(
        Match(
            Paper(
                id=f"2611.{i:05d}",
                title=f"Paper {i}: Sparse Attention <Long> & Context " + "Scaling " * 12,
                abstract=abstract,
                authors=tuple(f"Author {j}" for j in range(12)),
                upvotes=1000 - i,
                comments=2,
                ai_summary="A short summary of why this matters. " * 4,
            ),
            reasons=(Reason(0, "sparse attention", "abstract"),),
        )
        for i in range(n)
    )


def size(html: str) -> int:
    return len(html.encode("utf-8"))


def test_a_small_digest_keeps_everything(envs: Environments) -> None:
    r = render_digest(Digest(SUB, "digest", papers(3)), envs, CTX)
    assert "To keep this email small" not in r.html
    assert ABSTRACT[:200] in r.html.replace("<mark>", "").replace("</mark>", "")
    assert "More papers, by title" not in r.html


def test_500_matching_papers_fit_under_the_budget_and_say_what_is_missing(
    envs: Environments,
) -> None:
    started = time.perf_counter()
    r = render_digest(Digest(SUB, "digest", papers(500)), envs, CTX)
    elapsed = time.perf_counter() - started
    assert size(r.html) <= HTML_BUDGET
    assert elapsed < 10, elapsed
    # Shortened first, then titles only, then left out — each said in both parts.
    full = len(re.findall(r'class="paper"', r.html))
    listed = len(re.findall(r"<li", r.html))
    left = re.search(r"(\d+) more papers? did not fit in this email", r.html)
    assert full >= 1 and listed >= 1 and left is not None
    assert full + listed + int(left.group(1)) == 500
    assert "abstracts are shortened" in r.html and "listed by title only" in r.html
    assert f"{left.group(1)} more papers did not fit in this email: https://digest" in r.text
    assert "More papers, by title:" in r.text
    # What matters most survives the cut: the footer and its unsubscribe link.
    assert r.html.rstrip().endswith("</html>")
    assert 'href="https://digest.example.org/unsubscribe/' in r.html
    assert "Unsubscribe: https://digest.example.org/unsubscribe/" in r.text
    # Highest-ranked papers first: the first paper is whole, in order.
    assert r.html.index("Paper 0:") < r.html.index("Paper 1:")


@pytest.mark.parametrize("n", [25, 60, 120])
def test_abstracts_are_shortened_before_papers_are_dropped(envs: Environments, n: int) -> None:
    r = render_digest(Digest(SUB, "digest", papers(n)), envs, CTX)
    assert size(r.html) <= HTML_BUDGET
    shown = len(re.findall(r'class="paper"', r.html)) + len(re.findall(r"<li", r.html))
    if "did not fit" not in r.html:
        assert shown == n


def test_budget_none_renders_everything(envs: Environments) -> None:
    r = render_digest(Digest(SUB, "digest", papers(200)), envs, CTX, budget=None)
    assert size(r.html) > HTML_BUDGET
    assert len(re.findall(r'class="paper"', r.html)) == 200


def test_without_a_web_copy_the_mail_still_says_what_it_left_out(envs: Environments) -> None:
    ctx = RenderContext(site_name="Paper Digest", date_label="Monday", unsubscribe_url=None)
    r = render_digest(Digest(SUB, "digest", papers(500), more=7), envs, ctx)
    assert size(r.html) <= HTML_BUDGET
    assert "did not fit in this email." in r.html
    assert "7 more papers matched beyond your limit" in r.html
    assert "7 more papers matched beyond your limit" in r.text


def test_a_tiny_budget_leaves_out_everything_but_still_renders(envs: Environments) -> None:
    r = render_digest(Digest(SUB, "digest", papers(5)), envs, CTX, budget=1000)
    assert "5 more papers did not fit" in r.html


def test_overridden_template_is_used(tmp_path: Path) -> None:
    (tmp_path / "digest.txt.j2").write_text("custom {{ total }} {{ left_out }}\n")
    r = render_digest(Digest(SUB, "digest", papers(2)), make_environments(tmp_path), CTX)
    assert r.text == "custom 2 0\n"
