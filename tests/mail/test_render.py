"""render_digest: escaping of hostile paper text, highlights, links, the text part, templates."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from digestd.core.errors import ConfigError
from digestd.core.model import Digest, Match, Paper, Reason, Subscriber
from digestd.mail.render import (
    Environments,
    RenderContext,
    check_templates,
    make_environments,
    render_digest,
)
from digestd.sources.hf_json import parse_hf_daily

FIXTURES = Path(__file__).parents[1] / "fixtures"
CTX = RenderContext(
    site_name="Paper Digest",
    date_label="Friday 27 November 2026",
    unsubscribe_url="https://digest.example.org/u/tok123",
    manage_note="Reply to this email to change your rules.",
    web_url=None,
)
SUB = Subscriber(email="ann@example.org", name="Ann")


@pytest.fixture(scope="module")
def envs() -> Environments:
    return make_environments()


def paper(**kwargs: object) -> Paper:
    values: dict[str, object] = {
        "id": "2611.01234",
        "title": "Sparse Attention for Long Context",
        "abstract": "We study sparse attention. It scales to long context windows.",
        "authors": ("Ada Lovelace", "Alan Turing"),
        "upvotes": 42,
        "comments": 3,
        "organization": "Example Lab",
        "on_huggingface": True,  # listed by Hugging Face: its page is the link
    }
    values.update(kwargs)
    return Paper(**values)  # type: ignore[arg-type]


def spans(text: str, word: str) -> tuple[tuple[int, int], ...]:
    return tuple((m.start(), m.end()) for m in re.finditer(re.escape(word), text))


def digest(*matches: Match, kind: str = "digest", more: int = 0) -> Digest:
    return Digest(subscriber=SUB, kind=kind, matches=matches, more=more)  # type: ignore[arg-type]


def test_paper_fields_appear_in_both_parts(envs: Environments) -> None:
    p = paper(ai_summary="Sparse attention, cheaply.", github_repo="https://github.com/x/y")
    m = Match(p, reasons=(Reason(0, "sparse attention", "title"),))
    r = render_digest(digest(m), envs, CTX)

    assert r.subject == "Paper digest: 1 new paper — Sparse Attention for Long Context"
    for part in (r.html, r.text):
        assert "Sparse Attention for Long Context" in part
        assert "Ada Lovelace, Alan Turing" in part
        assert "https://huggingface.co/papers/2611.01234" in part
        assert "https://arxiv.org/pdf/2611.01234" in part
        assert "https://github.com/x/y" in part
        assert "Example Lab" in part
        assert "TL;DR: Sparse attention, cheaply." in part
        assert "“sparse attention” in title" in part
        assert "Reply to this email to change your rules." in part
        assert "https://digest.example.org/u/tok123" in part
    assert "<script" not in r.html


def test_html_is_an_accessible_inlined_email(envs: Environments) -> None:
    r = render_digest(digest(Match(paper())), envs, CTX)
    html = r.html
    assert '<meta name="color-scheme" content="light dark">' in html
    assert "max-width: 640px" in html  # inlined from base.css
    assert 'role="presentation"' in html
    assert "<h1" in html and "<h2" in html
    assert "@media (prefers-color-scheme: dark)" in html  # kept in a <style> for capable clients
    assert re.search(r'class="preheader"[^>]*style="display: none', html)
    assert "<link" not in html


def test_hostile_title_is_escaped_and_harmless(envs: Environments) -> None:
    title = "<script>alert(1)</script>\r\nBcc: x@y =?UTF-8?Q?=0A?= & <b>bold</b>"
    abstract = 'Text with <img src=x onerror="alert(1)"> and "quotes" & \\$math\\%.'
    p = paper(title=title, abstract=abstract, organization="<i>Org</i>", authors=("<a>Eve</a>",))
    r = render_digest(digest(Match(p)), envs, CTX)

    assert "<script" not in r.html
    assert "<img" not in r.html and "<b>bold" not in r.html and "<i>Org" not in r.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.html
    assert "&lt;img src=x onerror=" in r.html
    assert "&lt;a&gt;Eve&lt;/a&gt;" in r.html
    assert "\r" not in r.subject and "\n" not in r.subject
    assert "\r" not in r.text
    title_line = next(line for line in r.text.splitlines() if line.startswith("1. "))
    assert title_line == "1. <script>alert(1)</script> Bcc: x@y =?UTF-8?Q?=0A?= & <b>bold</b>"
    assert not any(line.startswith("Bcc:") for line in r.text.splitlines())


def test_javascript_links_are_dropped(envs: Environments) -> None:
    p = paper(github_repo="javascript:alert(1)", project_page="data:text/html,<script>x</script>")
    ctx = RenderContext("Paper Digest", "today", "javascript:alert(2)", "note", "vbscript:x")
    r = render_digest(digest(Match(p)), envs, ctx)

    assert "javascript:" not in r.html and "javascript:" not in r.text
    assert "data:text" not in r.html and "vbscript" not in r.html
    assert "Unsubscribe" not in r.html


def test_http_project_page_is_kept(envs: Environments) -> None:
    p = paper(project_page="https://example.org/p?a=1&b=2")
    r = render_digest(digest(Match(p)), envs, CTX)
    assert 'href="https://example.org/p?a=1&amp;b=2"' in r.html
    assert "Project page: https://example.org/p?a=1&b=2" in r.text


def test_highlights_wrap_the_matched_words(envs: Environments) -> None:
    p = paper(abstract="We study sparse attention. Attention <is> all & sparse.")
    hl = {
        "title": spans(p.title, "Attention"),
        "abstract": spans(p.abstract, "sparse") + spans(p.abstract, "attention"),
    }
    r = render_digest(digest(Match(p, highlights=hl)), envs, CTX)

    marked = re.findall(r"<mark[^>]*>(.*?)</mark>", r.html)
    assert marked == ["Attention", "sparse", "attention", "sparse"]
    assert "Attention &lt;is&gt; all &amp; " in r.html
    assert "<mark" not in r.text


def test_overlapping_and_out_of_range_highlights_are_safe(envs: Environments) -> None:
    p = paper(abstract="abc <x> def")
    hl = {"abstract": ((0, 6), (2, 9), (50, 60), (5, 3))}
    r = render_digest(digest(Match(p, highlights=hl)), envs, CTX)
    assert re.findall(r"<mark[^>]*>(.*?)</mark>", r.html) == ["abc &lt;x&gt; d"]


def test_many_authors_are_abbreviated(envs: Environments) -> None:
    p = paper(authors=tuple(f"Author {i}" for i in range(12)))
    r = render_digest(digest(Match(p)), envs, CTX)
    assert "Author 7 et al." in r.text
    assert "Author 8" not in r.text and "Author 8" not in r.html


def test_text_part_is_a_reading_version(envs: Environments) -> None:
    abstract = "Long abstract sentence about models. " * 40 + "\nSecond\tline."
    p1 = paper(abstract=abstract)
    p2 = paper(id="2611.05678", title="Second Paper")
    r = render_digest(digest(Match(p1), Match(p2), more=5), envs, CTX)
    lines = r.text.splitlines()

    assert lines[0] == "Paper Digest — Friday 27 November 2026"
    assert "Hello Ann, 7 new papers matched your rules." in lines
    assert "1. Sparse Attention for Long Context" in lines
    assert "2. Second Paper" in lines
    assert "5 more papers matched beyond your limit." in lines
    assert "They are not listed here; they will not be sent again." in lines
    assert all(len(line) <= 72 for line in lines if "http" not in line)
    first_abstract = r.text.split("1. ", 1)[1].split("PDF:", 1)[0]
    assert "…" in first_abstract
    assert len(first_abstract) < 1000
    assert "<" not in r.text


def test_alert_subject_and_heading(envs: Environments) -> None:
    one = render_digest(digest(Match(paper()), kind="alert"), envs, CTX)
    many = render_digest(
        digest(Match(paper()), Match(paper(id="2")), kind="alert", more=1), envs, CTX
    )
    assert one.subject == "Alert: Sparse Attention for Long Context"
    assert many.subject == "Alert: Sparse Attention for Long Context (+2 more)"
    assert "Alert from Paper Digest" in many.html
    assert "matched your alert rules" in many.text


def test_subject_is_bounded_and_single_line(envs: Environments) -> None:
    p = paper(title="Very long title\nwith a break " * 40)
    r = render_digest(digest(Match(p)), envs, CTX)
    assert len(r.subject) <= 200
    assert "\n" not in r.subject


def test_reasons_read_naturally(envs: Environments) -> None:
    reasons = (
        Reason(0, "kv cache", "abstract"),
        Reason(0, "kv cache", "abstract"),
        Reason(1, "Jane Doe", "authors"),
        Reason(2),
    )
    r = render_digest(digest(Match(paper(), reasons=reasons)), envs, CTX)
    words = " ".join(r.text.split())
    assert (
        "Why it matched: “kv cache” in abstract; author “Jane Doe”; nothing your rule 3 excludes"
        in words
    )


def test_i13_reasons_in_words(envs: Environments) -> None:
    every = Reason(-1, field="every")
    upvoted = (Reason(0, "≥ 20", "upvotes"), Reason(1, "< 3", "comments"))
    r = render_digest(digest(Match(paper(), reasons=(every,))), envs, CTX)
    assert "Why it matched: new today, most upvoted first" in r.text
    assert "1 new paper, most upvoted first." in r.text and "matched your rules" not in r.html
    r = render_digest(digest(Match(paper(), reasons=upvoted)), envs, CTX)
    assert "Why it matched: ≥ 20 upvotes; < 3 comments" in " ".join(r.text.split())
    assert "matched your rules" in r.text
    for part in (r.text, r.html):
        assert not re.search(r"\brule \d", part)


def test_reasons_of_the_richer_rules_read_naturally(envs: Environments) -> None:
    reasons = (
        Reason(0, "/gpt-?4/", "title"),
        Reason(0, "Microsoft", "orgs"),
        Reason(1, "cs.LG", "categories"),
        Reason(1, "arxiv-cs", "sources"),
    )
    r = render_digest(digest(Match(paper(), reasons=reasons)), envs, CTX)
    assert (
        "Why it matched: “/gpt-?4/” in title; organisation “Microsoft”; category “cs.LG”;"
        " listed by “arxiv-cs”" in " ".join(r.text.split())
    )


def test_real_papers_render_within_the_gmail_budget(envs: Environments) -> None:
    raw = (FIXTURES / "hf_daily_papers_seed.json").read_bytes()
    papers = parse_hf_daily(raw).papers
    assert papers
    matches = tuple(Match(p) for p in (papers * 20)[:20])
    r = render_digest(digest(*matches, more=3), envs, CTX)
    assert len(r.html.encode()) < 90_000
    assert r.text.count("https://huggingface.co/papers/") == 20


def test_empty_digest_renders(envs: Environments) -> None:
    r = render_digest(digest(), envs, CTX)
    assert r.subject == "Paper digest: no new papers"


def test_templates_can_be_overridden(tmp_path: Path) -> None:
    (tmp_path / "digest.txt.j2").write_text("custom {{ papers | length }} {{ ctx.site_name }}\n")
    envs = make_environments(tmp_path)
    check_templates(envs)
    r = render_digest(digest(Match(paper())), envs, CTX)
    assert r.text == "custom 1 Paper Digest\n"
    assert "Sparse Attention" in r.html  # the bundled HTML template still applies


def test_html_environment_escapes_override_templates(tmp_path: Path) -> None:
    (tmp_path / "digest.html.j2").write_text("<p>{{ papers[0].title }}</p>")
    r = render_digest(
        digest(Match(paper(title="<script>x</script>"))), make_environments(tmp_path), CTX
    )
    assert "<script>" not in r.html


def test_unknown_variables_fail_loudly(tmp_path: Path) -> None:
    (tmp_path / "digest.txt.j2").write_text("{{ nonsense }}")
    with pytest.raises(Exception, match="nonsense"):
        render_digest(digest(Match(paper())), make_environments(tmp_path), CTX)


def test_broken_template_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "digest.html.j2").write_text("line one\n{% if %}\n")
    with pytest.raises(ConfigError) as info:
        check_templates(make_environments(tmp_path))
    assert info.value.problems[0].line == 2


def test_i13_papers_beyond_max_papers_are_listed_then_linked(envs: Environments) -> None:
    shown = tuple(Match(paper(id=f"2611.{i:05d}")) for i in range(3))
    rest = tuple(Match(paper(id=f"2612.{i:05d}", title=f"Extra {i} " * 12)) for i in range(60))
    d = Digest(subscriber=SUB, kind="digest", matches=shown, more=len(rest), rest=rest)
    ctx = replace(CTX, web_url="https://digest.example.org/view/v1", max_papers=3)
    whole = render_digest(d, envs, ctx, budget=None)
    assert all(f'href="https://huggingface.co/papers/{m.paper.id}"' in whole.html for m in rest)
    assert "60 more papers matched beyond your limit of 3 per email" in whole.html
    assert "And " not in whole.html and "They are" not in whole.html
    # A budget too small for every title: the first ones stay, the rest are one link away.
    small = len(whole.html.encode()) - 3000
    cut = render_digest(d, envs, ctx, budget=small)
    assert len(cut.html.encode()) <= small
    listed = [m for m in rest if f"papers/{m.paper.id}" in cut.html]
    assert 0 < len(listed) < len(rest) and listed == list(rest[: len(listed)])
    left = len(rest) - len(listed)
    assert re.search(
        rf'And {left} more <a href="https://digest.example.org/view/v1"[^>]*>on the web copy',
        cut.html,
    )
    assert f"And {left} more on the web copy of this email: https://digest" in " ".join(
        cut.text.split()
    )
    assert "shortened" not in cut.html  # the abstracts of the papers shown stay as they were
