"""Every paper of a digest and an alert carries "more / less like this" links (issue #16): signed per
reader, paper and verdict under the "feedback" key, in text and HTML, never on the web copy; the
render-once-per-shape path gives the same bytes as a full render with them; their cost measured."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_budget import CTX, SUB, papers
from test_manage_link import NOW, SECRET, inbox, make_deps, parts

from digestd import pipeline
from digestd.core.model import Digest, Subscriber
from digestd.mail import linktokens as tokens
from digestd.mail.listheaders import FeedbackLinks
from digestd.mail.mime import build_message
from digestd.mail.parts import Personal
from digestd.mail.render import Environments, RenderContext, make_environments, render_digest
from digestd.mail.shapes import personal_template, render_personal
from digestd.mail.webcopy import stored_page

LINK = re.compile(r"https://digest\.example\.org/feedback/([A-Za-z0-9_-]+)")


@pytest.fixture(scope="module")
def envs() -> Environments:
    return make_environments()


def with_feedback(
    ctx: RenderContext, sub: Subscriber, digest: Digest, sub_id: int
) -> RenderContext:
    signer = FeedbackLinks(
        "https://digest.example.org", tokens.derive_key(SECRET, "feedback"), sub_id, sub.email
    )
    return replace(ctx, feedback=tuple(signer.pair(m.paper.id) for m in digest.matches))


async def test_digests_and_alerts_carry_verified_links_per_paper(tmp_path: Path) -> None:
    deps = make_deps(tmp_path)
    await pipeline.ingest(deps, now=NOW)  # Alice's alert rule: an alert
    pipeline.compose(deps, now=NOW, once=True)
    await pipeline.deliver_due(deps, now=NOW, clock=lambda: NOW)
    key = tokens.derive_key(SECRET, "feedback")
    kinds = set()
    for message in inbox(tmp_path):
        to = str(message["To"]).rpartition("<")[2].rstrip(">")
        text, html = parts(message)
        found = LINK.findall(text)
        assert found and LINK.findall(html) == found  # the same links in both parts
        assert text.count("More like this: ") == text.count("Less like this: ") == len(found) // 2
        seen = set()
        for token in found:
            parsed = tokens.parse_feedback(token)
            assert parsed is not None and parsed.verify(key, to)
            assert not parsed.verify(key, "mallory@example.org")
            assert not parsed.verify(tokens.derive_key(SECRET, "unsubscribe"), to)
            assert deps.store.subscribers.email_of(parsed.subscriber_id) == to
            seen.add((parsed.paper_id, parsed.value))
        ids = {p for p, _ in seen}
        assert seen == {(p, v) for p in ids for v in (1, -1)}  # both verdicts for each paper
        kinds.add(message["Subject"].split(":")[0])
    assert kinds == {"Alert", "Paper digest"}


async def test_the_web_copy_has_no_feedback_link(tmp_path: Path) -> None:
    deps = make_deps(tmp_path)
    await pipeline.ingest(deps, now=NOW)
    pipeline.compose(deps, now=NOW, once=True)
    rows = deps.store.db.conn.execute("SELECT token FROM web_copies").fetchall()
    assert rows
    for (token,) in rows:
        copy = deps.store.webcopies.find(token, now=NOW)
        assert copy is not None
        page = stored_page(copy.whole, copy.template, copy.slots or "{}", copy.fills or "{}")
        assert "/feedback/" not in page and "like this" not in page


def test_personal_render_equals_full_render_with_feedback(envs: Environments) -> None:
    matches = papers(12)
    for n, budget in ((3, None), (12, 90_000), (12, 30_000)):
        for i, email in enumerate(("ann@example.org", "bob@example.org", "cy@example.org")):
            sub = Subscriber(email=email, name=email[:3], max_papers=500)
            digest = Digest(sub, "digest", matches[:n])
            ctx = with_feedback(CTX, sub, digest, i + 1)
            assert render_personal(digest, envs, ctx, budget=budget) == render_digest(
                digest, envs, ctx, budget=budget
            )
    alert = Digest(SUB, "alert", matches[:2])
    ctx = with_feedback(CTX, SUB, alert, 9)
    assert render_personal(alert, envs, ctx) == render_digest(alert, envs, ctx)


def test_feedback_links_cost(envs: Environments, capsys: pytest.CaptureFixture[str]) -> None:
    """Bytes and time of a 10-paper digest with and without the links (printed for the docs)."""
    digest = Digest(SUB, "digest", papers(10, abstract="Short abstract. " * 20))
    plain = render_digest(digest, envs, CTX)
    ctx = with_feedback(CTX, SUB, digest, 7)
    linked = render_digest(digest, envs, ctx)
    extra = len(linked.html) + len(linked.text) - len(plain.html) - len(plain.text)
    assert 0 < extra < 10 * 2 * 2 * 200  # ≤ 200 bytes a link, text and HTML
    assert len(linked.html.encode()) < 90_000

    def per_message(ctx: RenderContext, *, mime: bool = False) -> float:
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            for i in range(200):
                sub = Subscriber(email=f"r{i}@example.org", max_papers=500)
                one = Digest(sub, "digest", digest.matches)
                mine = with_feedback(ctx, sub, one, i) if ctx.feedback else ctx
                if not mime:
                    render_personal(one, envs, mine)
                    continue
                found = personal_template(one, envs, mine)
                assert isinstance(found, Personal)
                build_message(
                    found, sender="d@example.org", to=sub.email, to_name=None,
                    message_id=f"<m{i}@example.org>", date=NOW,
                )  # fmt: skip
            runs.append((time.perf_counter() - start) / 200)
        return sorted(runs)[2]

    base, with_links = per_message(CTX), per_message(ctx)
    mime_base, mime_links = per_message(CTX, mime=True), per_message(ctx, mime=True)
    with capsys.disabled():
        print(
            f"\nfeedback links: +{extra} bytes per 10-paper message;"
            f" personal render {base * 1e6:.0f} µs → {with_links * 1e6:.0f} µs median;"
            f" template + MIME (the compose path) {mime_base * 1e6:.0f} µs →"
            f" {mime_links * 1e6:.0f} µs"
        )


async def test_alerts_of_a_reader_with_a_model_are_ranked_and_explained(tmp_path: Path) -> None:
    """Alice's alert rule ("kv cache"): once she liked a paper, her alert matches carry her
    relevance scores and name the nearest liked paper; Bob (no alert rule) is unchanged."""
    from digestd.pipeline.feedback import rate, refresh_relevance
    from digestd.pipeline.ingest import _alert_matches

    deps = make_deps(tmp_path)
    await pipeline.ingest(deps, now=NOW)
    papers = deps.store.papers.corpus(100)
    before = dict((s.email, m) for s, m in _alert_matches(deps, papers))
    alerts = before["alice@example.org"]
    assert alerts and all(m.relevance is None for m in alerts)
    liked = next(p for p in papers if p.id not in {m.paper.id for m in alerts})
    rate(deps.store, "alice@example.org", liked.id, 1, now=NOW)
    await refresh_relevance(deps, now=NOW)
    after = dict((s.email, m) for s, m in _alert_matches(deps, papers))
    assert {m.paper.id for m in after["alice@example.org"]} == {m.paper.id for m in alerts}
    assert all(m.relevance is not None for m in after["alice@example.org"])
    reasons = [r for m in after["alice@example.org"] for r in m.reasons if r.field == "liked"]
    assert reasons and all("that you liked" in (r.term or "") for r in reasons)


def test_feedback_tokens_parse_strictly() -> None:
    import hmac

    key = tokens.derive_key(SECRET, "feedback")
    for k, m in ((key, b""), (b"x" * 100, b"abc" * 50), (b"", b"m")):
        assert tokens._hmac_sha256(k, m) == hmac.digest(k, m, "sha256")  # standard HMAC
    token = tokens.feedback_token(key, 7, "Ann@Example.org", "2401.12345", -1)
    parsed = tokens.parse_feedback(token)
    assert parsed is not None and (parsed.subscriber_id, parsed.value) == (7, -1)
    assert parsed.paper_id == "2401.12345" and parsed.verify(key, "ann@example.org")
    for bad in ("", "x" * 33, "A" * 400, token + "!", token[:30], "%2F" * 20):
        assert tokens.parse_feedback(bad) is None
    with pytest.raises(ValueError):
        tokens.feedback_token(key, 7, "ann@example.org", "2401.12345", 0)
