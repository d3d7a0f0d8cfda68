"""Issue 13: LaTeX in titles and abstracts reads as Unicode text; prose with $, %, & or ~ stays."""

from __future__ import annotations

import time

import pytest

from digestd.core.latex import readable, readable_paper
from digestd.core.model import Digest, Match, Paper, Subscriber
from digestd.mail.render import RenderContext, make_environments, render_digest


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("M$^3$ViT", "M³ViT"),
        (r"with $\alpha$-blending and a $2 \times$ speed-up", "with α-blending and a 2 × speed-up"),
        (r"$\mathcal{O}(n^{2})$ on $4 \times 4$ grids", "𝒪(n²) on 4 × 4 grids"),
        (r"$10^{-3}$ and $x_i$ and $x^{\prime}$", "10⁻³ and xᵢ and x′"),
        (r"\textbf{Bold} claims \emph{here}", "Bold claims here"),
        (r"50\% of \$ and $\le 5$", "50% of $ and ≤ 5"),
        (r"\(\beta\)-VAE", "β-VAE"),
    ],
)
def test_i13_latex_reads_as_unicode(raw: str, shown: str) -> None:
    assert readable(raw) == shown


@pytest.mark.parametrize(
    "prose",
    [
        "costs $5 and $6 a month",  # dollars, not math
        "100% of C++ & Rust ~ fast",  # %, & and ~ are prose outside LaTeX
        "unbalanced { brace and a lone $ sign",
        "no LaTeX at all",
        r"an \unknowncommand stays",
    ],
)
def test_i13_prose_is_left_alone(prose: str) -> None:
    assert readable(prose) == prose


def test_i13_latex_never_becomes_html() -> None:
    """Converted text is text: markup inside math is escaped like any paper text."""
    p = Paper(
        id="2611.00001",
        title=r"$<script>alert(1)</script>$ and $\text{<b>x</b>}$",
        abstract=r"$\alpha$ <img src=x onerror=alert(1)>",
    )
    ctx = RenderContext(site_name="S", date_label="d")
    digest = Digest(Subscriber(email="a@example.org"), "digest", (Match(readable_paper(p)),))
    r = render_digest(digest, make_environments(), ctx)
    assert "<script>" not in r.html and "<b>" not in r.html and "<img" not in r.html
    assert "&lt;script&gt;" in r.html and "α" in r.html


def test_i13_hostile_latex_is_bounded() -> None:
    """Thousands of dollar signs and braces: converted (or left) quickly, never an exception."""
    nasty = ("$\\frac{" * 2000) + ("}$" * 2000) + "$" * 5000 + "\\" * 5000
    start = time.perf_counter()
    assert readable(nasty) == nasty  # more LaTeX than any abstract: shown as it is
    many = r"$\frac{a}{b}$ " * 100  # within the bounds: converted, quickly
    assert readable(many).startswith("a/b a/b")
    assert time.perf_counter() - start < 5


def test_i13_unchanged_paper_is_the_same_object() -> None:
    p = Paper(id="1", title="Plain", abstract="Plain text.")
    assert readable_paper(p) is p
