"""render_personal: byte-identical to render_digest, no value leaks between subscribers, safe fallbacks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from digestd.core.model import Digest, Match, Paper, Reason, Subscriber
from digestd.mail import shapes as personal
from digestd.mail.render import Environments, RenderContext, make_environments, render_digest
from digestd.mail.shapes import is_plain, render_personal
from digestd.sources.hf_json import parse_hf_daily

FIXTURES = Path(__file__).parents[1] / "fixtures"
CTX = RenderContext(
    site_name="Paper Digest",
    date_label="Friday 27 November 2026",
    unsubscribe_url="https://digest.example.org/unsubscribe/AAAAAAAAAAE",
    manage_note="Reply to digest@example.org to change your rules.",
    web_url="https://digest.example.org/view/BBBBBBBB",
    max_papers=10,
)


@pytest.fixture(scope="module")
def envs() -> Environments:
    return make_environments()


@pytest.fixture(scope="module")
def matches() -> tuple[Match, ...]:
    data = (FIXTURES / "hf_daily_papers_seed.json").read_text()
    papers = parse_hf_daily(data.encode()).papers[:10]
    return tuple(
        Match(p, (Reason(0, "attention", "abstract"),), highlights={"title": ((0, 3),)})
        for p in papers
    )


def digest_for(name: str | None, found: tuple[Match, ...], *, more: int = 0) -> Digest:
    sub = Subscriber(email="reader@example.org", name=name)
    return Digest(subscriber=sub, kind="digest", matches=found, more=more)


def ctx_for(n: int, **changes: object) -> RenderContext:
    ctx = replace(
        CTX,
        unsubscribe_url=f"https://digest.example.org/unsubscribe/tok{n:08d}",
        web_url=f"https://digest.example.org/view/view{n:08d}",
    )
    return replace(ctx, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [None, "Ann", "Zoë Ünicode", "a" * 150, "O'Brien", 'Eve <script>"x"</script> & co', "x\u00a0y"],
)
@pytest.mark.parametrize("web_copy", [False, True])
def test_same_bytes_as_a_full_render(
    envs: Environments, matches: tuple[Match, ...], name: str | None, web_copy: bool
) -> None:
    ctx = ctx_for(7, web_copy=web_copy)
    d = digest_for(name, matches, more=3)
    budget = None if web_copy else 90_000
    assert render_personal(d, envs, ctx, budget=budget) == render_digest(
        d, envs, ctx, budget=budget
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"unsubscribe_url": None},
        {"web_url": None},
        {"unsubscribe_url": "mailto:digest@example.org?subject=unsubscribe", "web_url": None},
        {"unsubscribe_url": "https://x.example/u?a=1&b=2"},  # not plain: the slow path
        {"web_url": "javascript:alert(1)"},  # dropped by safe_url: the slow path
        {"max_papers": None},
    ],
)
def test_same_bytes_for_every_kind_of_link(
    envs: Environments, matches: tuple[Match, ...], changes: dict[str, object]
) -> None:
    d = digest_for("Ann", matches, more=2)
    ctx = ctx_for(1, **changes)
    assert render_personal(d, envs, ctx) == render_digest(d, envs, ctx)


def test_same_bytes_when_the_budget_shortens_the_mail(
    envs: Environments, matches: tuple[Match, ...]
) -> None:
    many = tuple(
        replace(m, paper=replace(m.paper, id=f"{m.paper.id}{i}")) for i in range(6) for m in matches
    )
    for budget in (60_000, 30_000, 12_000, 3_000):
        for n, name in enumerate(("Ann", "Bartholomew Longname-Smith", None)):
            d, ctx = digest_for(name, many), ctx_for(n)
            assert render_personal(d, envs, ctx, budget=budget) == render_digest(
                d, envs, ctx, budget=budget
            ), (budget, name)


def test_values_never_leak_between_subscribers(
    envs: Environments, matches: tuple[Match, ...]
) -> None:
    seen = []
    for n in range(50):
        d = digest_for(f"Reader{n:03d}", matches)
        r = render_personal(d, envs, ctx_for(n))
        seen.append(r)
        for part in (r.html, r.text):
            assert f"Reader{n:03d}" in r.html
            assert f"tok{n:08d}" in part and f"view{n:08d}" in part
            others = [m for m in range(50) if m != n]
            assert not any(f"tok{m:08d}" in part or f"Reader{m:03d}" in part for m in others)
            assert personal._NONCE not in part  # no placeholder is left behind
    assert len({r.html for r in seen}) == 50


def test_alert_and_digest_are_different_shapes(
    envs: Environments, matches: tuple[Match, ...]
) -> None:
    d = digest_for("Ann", matches[:2])
    alert = replace(d, kind="alert")
    assert render_personal(alert, envs, CTX) == render_digest(alert, envs, CTX)
    assert render_personal(d, envs, CTX) == render_digest(d, envs, CTX)


def test_hostile_paper_text_stays_escaped(envs: Environments) -> None:
    evil = Paper(
        id="2611.66666",
        title='<script>alert(1)</script> "quoted" & <b>bold</b>',
        abstract=f"<img src=x onerror=alert(1)> {personal._A.name} https://u.invalid/a",
    )
    d = digest_for("Ann", (Match(evil),))
    r = render_personal(d, envs, CTX)
    assert r == render_digest(d, envs, CTX)
    assert "<script>" not in r.html and "<img" not in r.html


def test_a_template_that_filters_a_value_falls_back_to_full_renders(
    tmp_path: Path, matches: tuple[Match, ...]
) -> None:
    (tmp_path / "digest.html.j2").write_text(
        "<html><body><p>{{ subscriber_name | upper }} {{ unsubscribe_url | length }}</p>"
        "{% for p in papers %}<p>{{ p.title }}</p>{% endfor %}</body></html>\n"
    )
    (tmp_path / "digest.txt.j2").write_text(
        "{{ (web_url ~ ' ' ~ subscriber_name) | indent_wrap }}\n"
    )
    envs = make_environments(tmp_path)
    for n, name in enumerate(("Ann", "Bob")):
        d, ctx = digest_for(name, matches), ctx_for(n)
        r = render_personal(d, envs, ctx)
        assert r == render_digest(d, envs, ctx)
        assert name.upper() in r.html


def test_plain_values() -> None:
    assert is_plain("https://digest.example.org/unsubscribe/AbC_-9")
    assert is_plain("Zoë")
    for bad in ("a&b", "<", ">", '"', "'", "a\u00a0b", "a\nb", "\x85"):
        assert not is_plain(bad)


def test_a_value_holding_a_placeholder_is_rendered_the_slow_way(
    envs: Environments, matches: tuple[Match, ...]
) -> None:
    d = digest_for(f"x{personal._A.unsubscribe}", matches[:1])
    assert personal.slot_values(d, CTX) is None
    assert render_personal(d, envs, CTX) == render_digest(d, envs, CTX)


def test_digests_sharing_match_objects_share_one_hashed_content(
    envs: Environments, matches: tuple[Match, ...]
) -> None:
    first = personal._content(matches[:5])
    assert personal._content(tuple(matches[:5])) is first  # another tuple, the same matches
    # Equal matches that are other objects: a content of their own, equal to the first.
    copies = tuple(replace(m) for m in matches[:5])
    assert personal._content(copies) is not first and personal._content(copies) == first
    assert personal._content(matches[1:6]) != first
    for n in range(personal._CONTENTS_MAX * 2):  # the memo stays bounded and right
        found = matches[n % 10 :] + matches[: n % 10]
        assert personal._content(found).keys == tuple(personal._match_key(m) for m in found)
    assert len(personal._CONTENTS) <= personal._CONTENTS_MAX
    for n in range(3):  # and the bytes are still those of a full render
        d = digest_for("Ann", matches[n:])
        assert render_personal(d, envs, ctx_for(n)) == render_digest(d, envs, ctx_for(n))


@pytest.mark.parametrize("abstract_chars", [None, 0, 120, 300])
@pytest.mark.parametrize("budget", [None, 90_000, 20_000])
def test_i13_reader_values_stay_byte_identical(
    envs: Environments, matches: tuple[Match, ...], abstract_chars: int | None, budget: int | None
) -> None:
    """The subscriber's abstract_chars, their day and the papers beyond max_papers are part of the
    shape: the fast path still gives the full render's bytes, and no shape serves another's."""
    shown, rest = matches[:4], matches[4:]
    d = Digest(
        subscriber=Subscriber(email="reader@example.org", name="Ann"),
        kind="digest",
        matches=shown,
        more=len(rest),
        rest=rest,
    )
    for n, label in enumerate(["Wednesday 02 December 2026", "Tuesday 01 December 2026"]):
        ctx = ctx_for(n, abstract_chars=abstract_chars, date_label=label, max_papers=4)
        fast = render_personal(d, envs, ctx, budget=budget)
        assert fast == render_digest(d, envs, ctx, budget=budget)
        assert label in fast.text
