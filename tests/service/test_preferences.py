"""The preferences page over real HTTP: a reader edits, pauses, resumes and leaves; an address in the
admin's YAML sees its rules read-only (YAML wins); tokens are checked, forms need their CSRF."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from readerpages import SECRET, Site, link_in, serve
from smtpserver import SMTPTestServer

from digestd import pipeline
from digestd.mail.linktokens import derive_key, manage_token, unsubscribe_token
from digestd.pipeline.readers import refresh_readers
from digestd.rules.readers import reader_spec

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def site(tmp_path: Path, smtp_server: SMTPTestServer) -> AsyncIterator[Site]:
    async with serve(tmp_path, smtp_server) as running:
        yield running


async def signed_up(site: Site, email: str = "new@example.org", **fields: str) -> str:
    """Sign up and confirm through the pages; the path of the manage link the last page shows."""
    assert (await site.subscribe(email=email, **fields)).status_code == 303
    await site.deliver()
    path = link_in(site.mails_to(email)[-1], "confirm")
    done = await site.client.post(path, data={"csrf": await site.csrf(path)})
    found = re.search(r'href="https://digest\.example\.org(/preferences/[\w-]+)"', done.text)
    assert found, done.text
    return found.group(1)


def manage_path(site: Site, email: str) -> str:
    """The path of the Manage link every digest to `email` carries."""
    sub_id = site.deps.store.subscribers.id_of(email)
    return f"/preferences/{manage_token(derive_key(SECRET, 'manage'), sub_id, email)}"


async def post(site: Site, path: str, **fields: str | list[str]) -> tuple[int, str]:
    data: dict[str, str | list[str]] = {"csrf": await site.csrf(path), **fields}
    reply = await site.client.post(path, data=data)
    return reply.status_code, reply.headers.get("location", reply.text)


async def test_a_reader_sees_and_edits_their_choices(site: Site) -> None:
    path = await signed_up(site, keywords="diffusion")
    live = site.deps.audience.subscribers.by_email("new@example.org")
    assert live is not None and live.timezone == "Europe/Berlin"  # joined the live set at confirm
    page = await site.client.get(path)
    assert page.status_code == 200 and "n••@example.org" in page.text
    assert "Subscribed" in page.text and "daily at 07:00" in page.text
    assert ">diffusion</textarea>" in page.text and "Europe/Berlin" in page.text
    code, where = await post(
        site, path, action="edit", topics=["vision"], keywords="<b>gaussian splat</b>",
        authors="", query="", frequency="weekly", weekday="fri", hour="9",
        timezone="Asia/Tokyo", max_papers="5",
    )  # fmt: skip
    assert (code, where) == (303, f"{path}?done=saved")
    reader = site.deps.store.readers.get("new@example.org")
    assert reader is not None
    assert reader.spec["use"] == ["vision"] and reader.spec["schedule"] == "0 9 * * fri"
    assert reader.spec["rules"] == [{"any": ["<b>gaussian splat</b>"]}]
    live = site.deps.audience.subscribers.by_email("new@example.org")
    assert live is not None and live.timezone == "Asia/Tokyo" and live.max_papers == 5
    page = await site.client.get(f"{path}?done=saved")
    assert "Fridays at 09:00" in page.text and "Asia/Tokyo" in page.text
    assert "&lt;b&gt;gaussian splat&lt;/b&gt;" in page.text and "<b>gaussian" not in page.text


async def test_an_edit_is_validated_like_the_sign_up(site: Site) -> None:
    path = await signed_up(site)
    code, text = await post(site, path, action="edit", topics=["llm"], query="title:(",
                            timezone="UTC", hour="7", max_papers="5")  # fmt: skip
    assert code == 422 and "query error at column" in text
    assert 'aria-describedby="query-hint query-error"' in text
    reader = site.deps.store.readers.get("new@example.org")
    assert reader is not None and reader.version == 1  # unchanged


async def test_posts_without_csrf_change_nothing(site: Site) -> None:
    path = await signed_up(site)
    for action in ("edit", "pause", "unsubscribe"):
        reply = await site.client.post(path, data={"action": action, "weeks": "2"})
        assert reply.status_code == 403
    other = await signed_up(site, email="other@example.org")
    reply = await site.client.post(path, data={"action": "pause", "weeks": "2",
                                               "csrf": await site.csrf(other)})  # fmt: skip
    assert reply.status_code == 403
    assert site.deps.store.readers.pause_of("new@example.org") is None
    assert not site.deps.store.subscribers.is_suppressed("new@example.org")


async def test_pause_and_resume_with_what_was_missed(site: Site) -> None:
    path = await signed_up(site)
    for weeks in ("0", "9", "x"):
        assert (await post(site, path, action="pause", weeks=weeks))[0] == 422
    assert await post(site, path, action="pause", weeks="3") == (303, f"{path}?done=paused")
    pause = site.deps.store.readers.pause_of("new@example.org")
    assert pause is not None and pause.until == site.clock() + timedelta(weeks=3)
    page = await site.client.get(path)
    assert "Paused until" in page.text and "Resume now" in page.text
    site.clock.advance(timedelta(days=2))
    resumed = (303, f"{path}?done=caught-up")
    assert await post(site, path, action="resume", catch_up="on") == resumed
    pause = site.deps.store.readers.pause_of("new@example.org")
    assert pause is not None and pause.catch_up and pause.resumed_at == site.clock()
    assert "Pause for" in (await site.client.get(path)).text
    page = (await site.client.get(f"{path}?done=caught-up")).text
    assert "also brings what you missed" in page
    assert await post(site, path, action="pause", weeks="1") == (303, f"{path}?done=paused")
    assert await post(site, path, action="resume") == (303, f"{path}?done=resumed")
    assert "without the papers of the pause" in (await site.client.get(f"{path}?done=resumed")).text


async def test_an_admin_reader_sees_rules_read_only_and_may_pause(site: Site) -> None:
    path = manage_path(site, "admin-reader@example.org")
    page = await site.client.get(path)
    assert page.status_code == 200 and "Subscribed by the editor" in page.text
    assert "write to" in page.text and "digest@example.org" in page.text
    assert "any of: language model, llm, transformer" in page.text
    assert 'name="keywords"' not in page.text
    code, _ = await post(site, path, action="edit", keywords="anything", timezone="UTC", hour="7")
    assert code == 403
    assert (await post(site, path, action="pause", weeks="1"))[0] == 303
    assert site.deps.store.readers.pause_of("admin-reader@example.org") is not None
    code, text = await post(site, path, action="unsubscribe")
    assert code == 200 and site.deps.store.subscribers.is_suppressed("admin-reader@example.org")
    page = await site.client.get(path)  # the admin's reader keeps a page that says so
    assert "Unsubscribed" in page.text and "Resume now" not in page.text


async def test_yaml_wins_over_a_reader_row_of_the_same_address(site: Site) -> None:
    readers = site.deps.store.readers
    spec = reader_spec(keywords=["mine"])
    readers.add_pending("Admin-Reader@example.org", name="Self", spec=spec, at=site.clock())
    readers.confirm("admin-reader@example.org", at=site.clock())
    refresh_readers(site.deps, now=site.clock())
    path = manage_path(site, "admin-reader@example.org")
    page = await site.client.get(path)
    assert "Subscribed by the editor" in page.text and 'name="keywords"' not in page.text
    assert (await post(site, path, action="edit", keywords="x", timezone="UTC", hour="7"))[0] == 403
    assert readers.get("admin-reader@example.org").spec == spec  # type: ignore[union-attr]
    served = [s for s in site.deps.audience.subscribers.subscribers if s.email.startswith("admin-")]
    assert len(served) == 1 and served[0].name is None  # the YAML's entry, not "Self"


async def test_unsubscribe_from_the_page_kills_the_link(site: Site) -> None:
    path = await signed_up(site)
    code, text = await post(site, path, action="unsubscribe")
    assert code == 200 and "You are unsubscribed" in text
    assert "Sign up again" in text and 'href="https://digest.example.org/subscribe"' in text
    assert site.deps.store.subscribers.is_suppressed("new@example.org")
    assert site.deps.store.readers.get("new@example.org") is None
    assert site.deps.audience.subscribers.by_email("new@example.org") is None
    dead = await site.client.get(path)
    assert dead.status_code == 404 and "the subscription it managed has ended" in dead.text
    # Signing up again from the form is asked for by someone: like any address's, the
    # confirmation goes out (at most one per 10 minutes), and nothing else until it is used.
    site.clock.advance(timedelta(minutes=11))
    assert (await site.subscribe(email="new@example.org")).status_code == 303
    await site.deliver()
    again = site.mails_to("new@example.org")
    assert len(again) == 2 and again[1]["Subject"].startswith("Confirm your subscription")
    assert site.deps.store.subscribers.is_suppressed("new@example.org")


async def test_forged_and_swapped_manage_tokens(site: Site) -> None:
    path = await signed_up(site)
    token = path.rsplit("/", 1)[1]
    sub_id = site.deps.store.subscribers.id_of("new@example.org")
    unsub = unsubscribe_token(derive_key(SECRET, "unsubscribe"), sub_id, "new@example.org")
    other = manage_token(derive_key(SECRET, "manage"), sub_id, "eve@example.org")
    for bad in (token[:-3] + "AAA", "A" * 32, unsub, other, token[:31]):
        assert (await site.client.get(f"/preferences/{bad}")).status_code == 404, bad
    assert (await site.client.get(f"/confirm/{token}")).status_code == 404
    assert (await site.client.get(f"/unsubscribe/{token}")).status_code == 404
    assert await post(site, path, action="pause", weeks="1") == (303, f"{path}?done=paused")


async def test_the_digest_manage_link_opens_the_page(site: Site) -> None:
    """The link readers put in every digest is the one these pages read."""
    path = await signed_up(site)
    await pipeline.ingest(site.deps, now=site.clock())
    pipeline.compose(site.deps, now=site.clock(), once=True)
    await site.deliver()
    digest = next(m for m in site.mails_to("new@example.org") if "Confirm" not in m["Subject"])
    assert link_in(digest, "preferences") == path
    assert (await site.client.get(path)).status_code == 200
