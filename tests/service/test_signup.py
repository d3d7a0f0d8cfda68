"""Sign-up with double opt-in over real HTTP (uvicorn), a real store and a real SMTP relay:
the form, CSRF, limits, the honeypot, hostile input, identical answers, and the tokens."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from readerpages import Site, link_in, serve
from smtpserver import SMTPTestServer

from digestd.mail.linktokens import derive_key, unsubscribe_token
from digestd.service import wiring as app

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def site(tmp_path: Path, smtp_server: SMTPTestServer) -> AsyncIterator[Site]:
    async with serve(tmp_path, smtp_server) as running:
        yield running


async def confirm_link(site: Site, email: str = "new@example.org") -> str:
    await site.deliver()
    mails = site.mails_to(email)
    assert len(mails) == 1, [m["Subject"] for m in mails]
    return link_in(mails[0], "confirm")


async def test_the_form_is_labelled_and_works_without_cookies(site: Site) -> None:
    page = await site.client.get("/subscribe")
    assert page.status_code == 200
    assert "set-cookie" not in page.headers
    for field in (
        "email",
        "name",
        "keywords",
        "authors",
        "query",
        "timezone",
        "max_papers",
        "hour",
    ):
        assert f'for="{field}"' in page.text and f'id="{field}"' in page.text, field
    assert 'value="llm"' in page.text and "Language models" in page.text
    assert 'value="hidden"' not in page.text  # a rule set not offered as a topic
    assert "<option selected>Europe/Berlin</option>" not in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    assert "'unsafe-inline'" not in csp.split("script-src")[1]
    assert 'name="website"' in page.text and 'tabindex="-1"' in page.text  # the honeypot


async def test_signup_closed_by_default(site: Site) -> None:
    site.settings["enabled"] = False
    assert (await site.client.get("/subscribe")).status_code == 404
    reply = await site.subscribe(csrf="x")
    assert reply.status_code == 404


async def test_double_opt_in_from_form_to_confirmed_reader(site: Site) -> None:
    reply = await site.subscribe(email="New@Example.org", keywords="diffusion, kv cache")
    assert reply.status_code == 303 and reply.headers["location"] == "/subscribe/sent"
    assert reply.headers["cache-control"] == "no-store" and "set-cookie" not in reply.headers
    reader = site.deps.store.readers.get("new@example.org")
    assert reader is not None and reader.state == "pending"
    path = await confirm_link(site)
    mail = site.mails_to("new@example.org")[0]
    assert mail["Subject"].startswith("Confirm your subscription")
    assert mail["Message-ID"].startswith("<signup.") and mail["Auto-Submitted"] == "auto-generated"
    for _ in range(2):  # a link scanner GETs; nothing happens
        page = await site.client.get(path)
        assert page.status_code == 200 and "<button" in page.text
    assert site.deps.store.readers.get("new@example.org").state == "pending"  # type: ignore[union-attr]
    refused = await site.client.post(path, data={})
    assert refused.status_code == 403
    done = await site.client.post(path, data={"csrf": await site.csrf(path)})
    assert done.status_code == 200 and "You are subscribed" in done.text
    assert site.deps.store.readers.get("new@example.org").state == "active"  # type: ignore[union-attr]
    assert re.search(r'href="https://digest\.example\.org/preferences/[\w-]+"', done.text)


async def test_missing_or_forged_csrf_changes_nothing(site: Site) -> None:
    for csrf in ("", "A" * 22, "x" * 65):
        reply = await site.subscribe(csrf=csrf)
        assert reply.status_code == 403 and "expired" in reply.text
    other_form = await site.csrf("/subscribe")  # valid, but for another purpose below
    site.clock.advance(timedelta(hours=5))  # past two buckets: a stale page's token
    assert (await site.subscribe(csrf=other_form)).status_code == 403
    assert site.deps.store.readers.get("new@example.org") is None
    await site.deliver()
    assert site.smtp.received == []


async def test_identical_answer_for_new_pending_subscribed_and_admin_addresses(site: Site) -> None:
    await site.subscribe(email="active@example.org")
    path = await confirm_link(site, "active@example.org")
    await site.client.post(path, data={"csrf": await site.csrf(path)})
    await site.subscribe(email="pending@example.org")
    site.clock.advance(timedelta(minutes=11))
    answers = []
    for email in ("fresh@example.org", "pending@example.org", "active@example.org",
                  "admin-reader@example.org"):  # fmt: skip
        reply = await site.subscribe(email=email)
        answers.append((reply.status_code, reply.headers.get("location"), reply.text))
        assert "set-cookie" not in reply.headers
    assert len(set(answers)) == 1, answers
    await site.deliver()
    known = site.mails_to("admin-reader@example.org")
    assert [m["Subject"] for m in known] == ["You are subscribed to Paper Digest"]
    assert "/preferences/" in link_in(known[0], "preferences")
    again = site.mails_to("active@example.org")[-1]
    assert again["Subject"] == "You are subscribed to Paper Digest"
    assert site.deps.store.readers.get("admin-reader@example.org") is None


async def test_one_confirmation_mail_per_address_per_ten_minutes(site: Site) -> None:
    for _ in range(5):
        assert (await site.subscribe(email="bomb@example.org")).status_code == 303
    await site.deliver()
    assert len(site.mails_to("bomb@example.org")) == 1
    site.clock.advance(timedelta(minutes=10, seconds=1))
    await site.subscribe(email="bomb@example.org")
    await site.deliver()
    assert len(site.mails_to("bomb@example.org")) == 2


async def test_per_ip_limit(site: Site) -> None:
    site.settings["per_ip"] = 3
    codes = [(await site.subscribe(email=f"r{i}@example.org")).status_code for i in range(5)]
    assert codes == [303, 303, 303, 429, 429]
    site.clock.advance(timedelta(hours=1, seconds=1))
    assert (await site.subscribe(email="later@example.org")).status_code == 303


async def test_behind_a_local_proxy_the_forwarded_address_is_counted(site: Site) -> None:
    site.settings["per_ip"] = 1
    one = {"x-forwarded-for": "203.0.113.1"}
    spoofed = {"x-forwarded-for": "198.51.100.9, 203.0.113.1"}  # the client wrote the first one
    assert (await site.subscribe(headers=one, email="a@example.org")).status_code == 303
    assert (await site.subscribe(headers=spoofed, email="b@example.org")).status_code == 429
    other = {"x-forwarded-for": "203.0.113.2"}
    assert (await site.subscribe(headers=other, email="c@example.org")).status_code == 303


async def test_honeypot_answers_the_same_and_stores_nothing(site: Site) -> None:
    reply = await site.subscribe(email="bot@example.org", website="http://spam.example")
    assert reply.status_code == 303 and reply.headers["location"] == "/subscribe/sent"
    assert site.deps.store.readers.get("bot@example.org") is None
    await site.deliver()
    assert site.mails_to("bot@example.org") == []


async def test_a_megabyte_of_keywords_is_refused_whole(site: Site) -> None:
    reply = await site.subscribe(keywords="word, " * 180_000)
    assert reply.status_code == 413 and "at most 32 kB" in reply.text
    assert site.deps.store.readers.get("new@example.org") is None
    many = await site.subscribe(keywords=", ".join(f"k{i}" for i in range(60)))
    assert many.status_code == 422 and "at most 50 entries" in many.text


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("name", "<script>alert(1)</script>", "may not contain &lt; or &gt;"),
        ("name", "Eve\r\nBcc: victim@example.org", "line"),
        ("email", "not-an-address", "email"),
        ("email", "eve@example.org\r\nBcc: x@example.org", "email"),
        ("keywords", "ok\x00bad", "one line"),
        ("authors", "Ann\rBcc: x@example.org", "one line"),
        ("query", "<img src=x onerror=alert(1)>", "query error"),
        ("timezone", "Mars/Olympus", "pick a time zone"),
        ("max_papers", "1e9", "whole number"),
        ("hour", "25", "pick an hour"),
        ("topics", "hidden", "pick from the topics"),
        ("weekday", "<script>", "pick a day"),
    ],
)
async def test_hostile_input_gets_a_clear_error_beside_its_field(
    site: Site, field: str, value: str, expected: str
) -> None:
    extra = {"frequency": "weekly"} if field == "weekday" else {}
    reply = await site.subscribe(**{field: value}, **extra)
    assert reply.status_code == 422, reply.text
    assert expected in reply.text
    assert "<script>alert" not in reply.text and "<img src=x" not in reply.text
    if field in ("name", "email", "keywords", "timezone", "max_papers"):
        assert re.search(rf'id="{field}"[^>]*aria-describedby="[^"]*{field}-error', reply.text)
        assert f'id="{field}-error"' in reply.text
    assert site.deps.store.readers.get("new@example.org") is None


async def test_a_query_that_does_not_parse_shows_column_and_caret(site: Site) -> None:
    reply = await site.subscribe(query='title:"diffusion AND (', topics=[])
    assert reply.status_code == 422
    error = re.search(r'<pre class="error" id="query-error">(.*?)</pre>', reply.text, re.S)
    assert error, reply.text
    assert "query error at column" in error.group(1) and "^" in error.group(1)
    assert 'value="title:&#34;diffusion AND ("' in reply.text  # kept as typed, escaped


async def test_allowed_domains(site: Site) -> None:
    site.settings["allowed_domains"] = ["lab.example.org"]
    refused = await site.subscribe(email="eve@example.org")
    assert refused.status_code == 422 and "may not sign up" in refused.text
    ok = await site.subscribe(email="ann@cs.lab.example.org")
    assert ok.status_code == 303


async def test_forged_expired_and_swapped_confirm_tokens(site: Site) -> None:
    await site.subscribe()
    path = await confirm_link(site)
    token = path.rsplit("/", 1)[1]
    forged = token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB")
    unsub = unsubscribe_token(
        derive_key(b"an-operator-secret-of-32-bytes!!", "unsubscribe"),
        site.deps.store.subscribers.id_of("new@example.org"), "new@example.org",
    )  # fmt: skip
    for bad in (forged, "x" * 39, unsub, token + "A"):
        assert (await site.client.get(f"/confirm/{bad}")).status_code == 404
    assert (await site.client.get(f"/preferences/{token}")).status_code == 404  # not a manage token
    assert (await site.client.get(f"/unsubscribe/{token}")).status_code == 404
    site.clock.advance(timedelta(hours=48, seconds=1))
    expired = await site.client.get(path)
    assert expired.status_code == 410 and "This link has expired" in expired.text
    assert "Sign up again" in expired.text and "48 hours" in expired.text
    assert site.deps.store.readers.get("new@example.org").state == "pending"  # type: ignore[union-attr]


async def test_a_sign_up_forgotten_after_confirm_within_says_expired(site: Site) -> None:
    """Composing forgets pending sign-ups older than `confirm_within`; their link then says so,
    on the GET and on a POST of a form loaded in time."""
    await site.subscribe()
    path = await confirm_link(site)
    csrf = await site.csrf(path)
    site.clock.advance(timedelta(hours=48, seconds=1))
    assert site.deps.store.readers.expire_pending(before=site.clock() - timedelta(hours=48)) == 1
    assert site.deps.store.readers.get("new@example.org") is None
    page = await site.client.get(path)
    assert page.status_code == 410 and "This link has expired" in page.text
    posted = await site.client.post(path, data={"csrf": csrf})
    assert posted.status_code in (403, 410) and "expired" in posted.text
    assert site.deps.store.readers.get("new@example.org") is None


async def come_back(site: Site, email: str) -> str:
    """Sign up again from the form and confirm from the mail."""
    site.clock.advance(timedelta(minutes=11))
    before = len(site.mails_to(email))
    assert (await site.subscribe(email=email)).status_code == 303
    await site.deliver()
    mails = site.mails_to(email)
    assert len(mails) == before + 1, "the confirmation did not reach the address"
    assert mails[-1]["Subject"].startswith("Confirm your subscription")
    path = link_in(mails[-1], "confirm")
    done = await site.client.post(path, data={"csrf": await site.csrf(path)})
    assert done.status_code == 200 and "You are subscribed" in done.text
    again = await site.client.get(path)  # opened again later: still true, not "not valid"
    assert again.status_code == 200 and "You are subscribed" in again.text
    return done.text


@pytest.mark.parametrize("via", ["one-click", "preferences"])
async def test_a_reader_who_left_by_their_own_hand_comes_back(site: Site, via: str) -> None:
    await site.subscribe()
    path = await confirm_link(site)
    await site.client.post(path, data={"csrf": await site.csrf(path)})
    site.deps.store.subscribers.suppress("new@example.org", at=site.clock(), via=via)
    assert site.deps.store.readers.get("new@example.org").state == "unsubscribed"  # type: ignore[union-attr]
    await come_back(site, "new@example.org")
    assert not site.deps.store.subscribers.is_suppressed("new@example.org")
    assert site.deps.store.readers.get("new@example.org").state == "active"  # type: ignore[union-attr]


async def test_the_admins_reader_who_left_comes_back_under_the_admins_entry(site: Site) -> None:
    email = "admin-reader@example.org"
    site.deps.store.subscribers.suppress(email, at=site.clock(), via="one-click")
    page = await come_back(site, email)
    assert "The editor keeps the topics and schedule" in page
    assert not site.deps.store.subscribers.is_suppressed(email)
    assert email in app.served_keys(site.deps)  # by the admin's entry: YAML wins


async def test_complaint_bounces_and_admin_keep_an_address_blocked(site: Site) -> None:
    store = site.deps.store
    store.subscribers.suppress("complained@example.org", at=site.clock(), via="complaint")
    store.subscribers.suppress("removed@example.org", at=site.clock(), via="admin")
    with store.db.write() as db:
        db.execute(
            "INSERT INTO suspensions (email, failures, updated_at, suspended_at)"
            " VALUES ('bounced@example.org', 3, '2025-01-01', '2025-01-01')"
        )
    blocked = ("complained@example.org", "removed@example.org", "bounced@example.org")
    answers = set()
    for email in ("fresh@example.org", *blocked):
        reply = await site.subscribe(email=email)
        answers.add((reply.status_code, reply.headers.get("location"), reply.text))
    assert len(answers) == 1
    await site.deliver()
    for email in blocked:
        assert site.mails_to(email) == [], email
        assert store.readers.get(email) is None
    assert store.subscribers.is_suppressed("complained@example.org")
    assert len(site.mails_to("fresh@example.org")) == 1


async def test_page_mails_are_notices_not_alerts(site: Site) -> None:
    await site.subscribe()
    await site.deliver()
    kinds = site.deps.store.db.conn.execute("SELECT kind, period, state FROM outbox").fetchall()
    assert [(k, p.startswith("signup-confirm-"), st) for k, p, st in kinds] == [
        ("notice", True, "sent")
    ]


async def test_a_confirm_form_of_one_token_does_not_serve_another(site: Site) -> None:
    await site.subscribe(email="a@example.org")
    await site.subscribe(email="b@example.org")
    await site.deliver()
    a = link_in(site.mails_to("a@example.org")[0], "confirm")
    b = link_in(site.mails_to("b@example.org")[0], "confirm")
    reply = await site.client.post(b, data={"csrf": await site.csrf(a)})
    assert reply.status_code == 403
    assert site.deps.store.readers.get("b@example.org").state == "pending"  # type: ignore[union-attr]


async def test_a_reload_or_restart_keeps_a_pending_readers_confirmation_mail(site: Site) -> None:
    """Unsent mail of addresses no longer served is expired at a reload or restart; a reader still
    to confirm is not one of those."""
    site.smtp.handler.data_reply = "451 4.3.2 try later"
    await site.subscribe()
    await site.deliver()
    assert site.mails_to("new@example.org") == []
    assert "new@example.org" in app.served_keys(site.deps)
    expired = site.deps.store.outbox.expire_except(
        app.served_keys(site.deps), at=site.clock(), reason="subscriber removed"
    )
    assert expired == 0
    site.smtp.handler.data_reply = None
    site.clock.advance(timedelta(hours=1))
    await site.deliver()
    assert len(site.mails_to("new@example.org")) == 1


async def test_bodies_that_are_not_our_form(site: Site) -> None:
    csrf = await site.csrf("/subscribe")
    headers = {"content-type": "application/x-www-form-urlencoded"}
    not_utf8 = f"csrf={csrf}&email=a%FF@example.org".encode()
    reply = await site.client.post("/subscribe", content=not_utf8, headers=headers)
    assert reply.status_code == 400
    many = "&".join(f"f{i}=x" for i in range(500)) + f"&csrf={csrf}"
    reply = await site.client.post("/subscribe", content=many, headers=headers)
    assert reply.status_code == 400
    # A declared gigabyte is refused before a byte of it is read.
    host, port = str(site.client.base_url.host), int(site.client.base_url.port or 80)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /subscribe HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
                 b"x-www-form-urlencoded\r\nContent-Length: 1000000000\r\n\r\ncsrf=")  # fmt: skip
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), timeout=5)
    writer.close()
    assert status.startswith(b"HTTP/1.1 413")
    assert site.deps.store.readers.counts(at=site.clock()).pending == 0


async def test_the_one_click_page_shows_the_way_back_while_sign_up_is_open(site: Site) -> None:
    await site.subscribe()
    path = await confirm_link(site)
    await site.client.post(path, data={"csrf": await site.csrf(path)})

    async def one_click() -> str:
        sub_id = site.deps.store.subscribers.id_of("new@example.org")
        key = derive_key(b"an-operator-secret-of-32-bytes!!", "unsubscribe")
        token = unsubscribe_token(key, sub_id, "new@example.org")
        page = await site.client.post(
            f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}
        )
        assert page.status_code == 200 and "You are unsubscribed" in page.text
        return page.text

    assert 'href="https://digest.example.org/subscribe"' in await one_click()
    await come_back(site, "new@example.org")  # and the way back works
    site.settings["enabled"] = False
    assert "Write to" in await one_click() and "/subscribe" not in await one_click()


async def test_monday_to_friday_is_a_choice_and_the_default_schedule_kept(site: Site) -> None:
    """The default schedule "0 7 * * mon-fri" is offered as it is, not turned into "daily"."""
    form = (await site.client.get("/subscribe")).text
    assert re.search(r'id="freq-workdays" name="frequency" value="workdays" checked', form)
    await site.subscribe(frequency="workdays", hour="8")
    path = await confirm_link(site)
    done = await site.client.post(path, data={"csrf": await site.csrf(path)})
    reader = site.deps.store.readers.get("new@example.org")
    assert reader is not None and reader.spec["schedule"] == "0 8 * * mon-fri"
    manage = re.search(r'href="https://digest\.example\.org(/preferences/[\w-]+)"', done.text)
    assert manage is not None
    page = (await site.client.get(manage.group(1))).text
    assert "Monday to Friday at 08:00" in page
    assert re.search(r'value="workdays" checked', page)
    await site.subscribe(email="odd@example.org", frequency="hourly")  # not a choice: daily
    odd = site.deps.store.readers.get("odd@example.org")
    assert odd is not None and odd.spec["schedule"] == "0 7 * * *"
