"""The "more / less like this" links of issue #16 end to end over real HTTP and SMTP: a digest mailed
through aiosmtpd carries them, a GET shows a page and records nothing (link scanners), the POST
with its CSRF token records (the other link replaces the first), the model is retrained, and the
next digest ranks by it. Forged and swapped tokens, cold start and a reader who dislikes
everything get a clear page or an unchanged digest, never a traceback."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from readerpages import FIXTURES, NOW, SECRET, Site, serve
from smtpserver import SMTPTestServer

from digestd import pipeline
from digestd.mail import linktokens
from digestd.pipeline.feedback import refresh_relevance

pytestmark = pytest.mark.timeout(120)

READER = "admin-reader@example.org"  # the YAML's subscriber of the `llm` rule set
LINK = re.compile(r"(More|Less) like this: https://digest\.example\.org(/feedback/[A-Za-z0-9_-]+)")
TITLE = re.compile(r"^(\d+)\. (.+)$", re.M)


ITEMS = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())


@pytest.fixture
async def site(tmp_path: Path, smtp_server: SMTPTestServer) -> AsyncIterator[Site]:
    async with serve(tmp_path, smtp_server) as running:
        # The first poll sees half the papers; `second_poll` brings the rest.
        (tmp_path / "papers.json").write_text(json.dumps(ITEMS[:27]))
        yield running


async def digest(site: Site, *, days: int = 0) -> EmailMessage:
    """Poll, compose (schedules ignored) and deliver; the reader's newest mail."""
    now = NOW + timedelta(days=days)
    site.clock.now = now
    await pipeline.ingest(site.deps, now=now)
    await refresh_relevance(site.deps, now=now)  # what the daemon's digest job does first
    pipeline.compose(site.deps, now=now, once=True)
    await pipeline.deliver_due(site.deps, now=now, clock=lambda: now)
    return site.mails_to(READER)[-1]


async def second_poll(site: Site, tmp_path: Path) -> EmailMessage:
    (tmp_path / "papers.json").write_text(json.dumps(ITEMS))
    return await digest(site, days=1)


def text_of(message: EmailMessage) -> str:
    return message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def titles(message: EmailMessage) -> list[str]:
    return [t for _, t in TITLE.findall(text_of(message))]


def links(message: EmailMessage) -> list[tuple[str, str]]:
    """(more path, less path) per paper, in the mail's order."""
    found = LINK.findall(text_of(message))
    mores = [p for kind, p in found if kind == "More"]
    lesses = [p for kind, p in found if kind == "Less"]
    assert len(mores) == len(lesses)
    return list(zip(mores, lesses, strict=True))


async def click(site: Site, path: str) -> tuple[int, str]:
    """What a browser does: GET the page, POST its form with the page's CSRF token."""
    page = await site.client.get(path)
    assert page.status_code == 200, page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    reply = await site.client.post(path, data={"csrf": csrf.group(1)})
    return reply.status_code, reply.text


def ratings(site: Site) -> dict[str, int]:
    return {r.paper_id: r.value for r in site.deps.store.ratings.ratings(READER)}


def paper_of(path: str) -> str:
    parsed = linktokens.parse_feedback(path.rsplit("/", 1)[1])
    assert parsed is not None
    return parsed.paper_id


async def test_click_flow_records_by_post_and_the_next_digest_ranks_by_it(
    site: Site, tmp_path: Path
) -> None:
    first = await digest(site)
    pairs = links(first)
    assert len(pairs) == len(titles(first)) >= 3  # every paper shown carries both links
    more, less = pairs[-1]  # the last paper: liking it must lift papers like it
    # GET never records, however often (a link scanner opens every link).
    for _ in range(3):
        page = await site.client.get(less)
        assert page.status_code == 200 and "Nothing is recorded until you confirm" in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split("script-src")[1]
    assert ratings(site) == {}
    code, text = await click(site, less)
    assert code == 200 and "You&#39;ll see fewer papers like" in text
    assert ratings(site) == {paper_of(less): -1}
    # The other link of the same paper replaces the first verdict.
    code, text = await click(site, more)
    assert code == 200 and "You&#39;ll see more papers like" in text
    assert ratings(site) == {paper_of(more): 1}
    # The POST retrained the model after answering, off the loop.
    for _ in range(200):
        state = site.deps.relevance
        if state is not None and READER in state.models:
            break
        await asyncio.sleep(0.02)
    assert site.deps.relevance is not None and READER in site.deps.relevance.models

    second = await second_poll(site, tmp_path)
    shown = titles(second)
    assert shown and not set(shown) & set(titles(first))  # new papers only
    # Without the model, the same papers rank by popularity: the model changed the order.
    sub = site.deps.audience.subscribers.by_email(READER)
    assert sub is not None
    papers = site.deps.store.papers.get(paper_of(m) for m, _ in links(second))
    plain = site.deps.audience.match(papers, sub)
    ranked = site.deps.audience.match(
        papers, sub, relevance=site.deps.relevance.relevance_for(READER, papers)
    )
    assert [m.paper.id for m in ranked] != [m.paper.id for m in plain]
    assert [paper_of(m) for m, _ in links(second)] == [m.paper.id for m in ranked][: len(shown)]


async def test_why_it_matched_names_the_liked_paper(site: Site, tmp_path: Path) -> None:
    first = await digest(site)
    more, _ = links(first)[0]
    assert (await click(site, more))[0] == 200
    liked = site.deps.store.papers.get([paper_of(more)])[0].title
    second = await second_poll(site, tmp_path)
    assert "that you liked" in text_of(second)
    assert liked[:30] in " ".join(text_of(second).split())


async def test_forged_and_swapped_tokens_record_nothing(site: Site) -> None:
    first = await digest(site)
    more, _ = links(first)[0]
    token = more.rsplit("/", 1)[1]
    sub_id = site.deps.store.subscribers.id_of(READER)
    unsub = linktokens.unsubscribe_token(derive(b"unsubscribe"), sub_id, READER)
    manage = linktokens.manage_token(derive(b"manage"), sub_id, READER)
    other_paper = swap_paper(token, paper_of(links(first)[1][0]))
    other_reader = linktokens.feedback_token(
        derive(b"feedback"), site.deps.store.subscribers.id_of("x@example.org"), READER,
        paper_of(more), 1,
    )  # fmt: skip
    wrong_key = linktokens.feedback_token(derive(b"unsubscribe"), sub_id, READER, "2502.90000", 1)
    flipped = flip_verdict(token)
    for bad in (unsub, manage, other_paper, other_reader, wrong_key, flipped, "x" * 40, "%00"):
        page = await site.client.get(f"/feedback/{bad}")
        assert page.status_code == 404 and "Nothing was recorded" in page.text, bad
        reply = await site.client.post(f"/feedback/{bad}", data={"csrf": "x"})
        assert reply.status_code in (403, 404)
    # A feedback token is no unsubscribe or manage token either.
    assert (await site.client.get(f"/unsubscribe/{token}")).status_code == 404
    assert (await site.client.get(f"/preferences/{token}")).status_code == 404
    assert not site.deps.store.subscribers.is_suppressed(READER)
    # Without the page's CSRF token (or with another page's) the POST is refused.
    assert (await site.client.post(more, data={})).status_code == 403
    other_csrf = await site.csrf(links(first)[1][0])
    assert (await site.client.post(more, data={"csrf": other_csrf})).status_code == 403
    assert ratings(site) == {}


async def test_an_unsubscribed_reader_s_link_records_nothing(site: Site) -> None:
    first = await digest(site)
    more, _ = links(first)[0]
    site.deps.store.subscribers.suppress(READER, at=NOW, via="test")
    assert (await site.client.get(more)).status_code == 404
    assert ratings(site) == {}


async def test_cold_start_and_a_reader_who_dislikes_everything(site: Site, tmp_path: Path) -> None:
    first = await digest(site)
    # Cold start: no ratings, no model; the page of a link still works.
    assert site.deps.relevance is None
    for _, less in links(first):
        assert (await click(site, less))[0] == 200
    assert set(ratings(site).values()) == {-1}
    await refresh_relevance(site.deps, now=NOW)
    # Dislikes alone teach no model: the next digest ranks as without one, and still comes.
    assert site.deps.relevance is not None and READER not in site.deps.relevance.models
    second = await second_poll(site, tmp_path)
    sub = site.deps.audience.subscribers.by_email(READER)
    assert sub is not None
    papers = site.deps.store.papers.get(paper_of(m) for m, _ in links(second))
    plain = [m.paper.id for m in site.deps.audience.match(papers, sub)]
    assert [paper_of(m) for m, _ in links(second)] == plain[: len(links(second))]


def derive(purpose: bytes) -> bytes:
    return linktokens.derive_key(SECRET, purpose.decode())


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def swap_paper(token: str, paper_id: str) -> str:
    """The same id, verdict and MAC with another paper's id: the MAC no longer holds."""
    return _b64(_raw(token)[:25] + paper_id.encode())


def flip_verdict(token: str) -> str:
    raw = bytearray(_raw(token))
    raw[8] = ord("-") if raw[8] == ord("+") else ord("+")
    return _b64(bytes(raw))


async def wait_for_model(site: Site, *, present: bool = True) -> None:
    """The POST's retraining runs after the answer, in a thread: wait for it (bounded)."""
    for _ in range(250):
        state = site.deps.relevance
        if (state is not None and READER in state.models) == present:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the model was not retrained")


async def test_preferences_show_what_was_learned_and_reset_forgets(site: Site) -> None:
    first = await digest(site)
    manage = re.search(r"https://digest\.example\.org(/preferences/[\w-]+)", text_of(first))
    assert manage is not None
    page = await site.client.get(manage.group(1))
    assert "What your digest learned" in page.text and "Nothing yet" in page.text
    assert (await click(site, links(first)[0][0]))[0] == 200
    assert (await click(site, links(first)[1][1]))[0] == 200
    await wait_for_model(site)
    page = await site.client.get(manage.group(1))
    assert "more papers like 1 paper and fewer like 1" in page.text
    assert 'class="term-more"' in page.text  # the model's strongest terms
    state = site.deps.relevance
    assert state is not None
    positive, _ = state.models[READER].top_terms(state.terms, 8)
    assert f'<code class="term-more">{positive[0]}</code>' in page.text
    csrf = re.search(
        r'name="csrf" value="([^"]+)">\s*<input type="hidden" name="action" value="reset"',
        page.text,
    )
    assert csrf is not None
    # Without the form's CSRF token nothing is forgotten.
    refused = await site.client.post(manage.group(1), data={"action": "reset"})
    assert refused.status_code == 403 and ratings(site)
    reply = await site.client.post(manage.group(1), data={"action": "reset", "csrf": csrf.group(1)})
    assert reply.status_code == 303 and reply.headers["location"].endswith("?done=reset")
    assert ratings(site) == {}
    # The last rater gone: no model in memory or on disk, once the refreshes queued behind the
    # clicks' retraining have run (the reset's own comes last and reads no ratings).
    for _ in range(250):
        if site.deps.relevance is None:
            break
        await asyncio.sleep(0.02)
    assert site.deps.relevance is None
    assert not Path(f"{site.deps.store.path}.relevance.npz").exists()
    page = await site.client.get(reply.headers["location"])
    assert "Forgotten" in page.text and "Nothing yet" in page.text


async def test_a_reader_who_leaves_on_their_page_takes_their_ratings(site: Site) -> None:
    from test_preferences import signed_up

    path = await signed_up(site, "new@example.org")
    site.deps.store.ratings.rate("new@example.org", "2502.90000", 1, at=NOW)
    page = await site.client.get(path)
    csrf = re.search(
        r'name="csrf" value="([^"]+)">\s*<input type="hidden" name="action" value="unsubscribe"',
        page.text,
    )
    assert csrf is not None
    reply = await site.client.post(path, data={"action": "unsubscribe", "csrf": csrf.group(1)})
    assert reply.status_code == 200 and "You are unsubscribed" in reply.text
    assert site.deps.store.ratings.ratings("new@example.org") == []
