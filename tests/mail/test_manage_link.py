"""Every digest and alert carries a signed "Manage your subscription" link (issue 15): text and
HTML, its token verified with the "manage" key only (not interchangeable with unsubscribe), and
never on the web copy, whose URL may be shared."""

from __future__ import annotations

import email
import email.policy
import mailbox
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

from test_pipeline import papers_json

from digestd import pipeline
from digestd.deliver.transports.maildir import MaildirMailer
from digestd.mail import linktokens as tokens
from digestd.mail.render import make_environments
from digestd.mail.webcopy import stored_page
from digestd.pipeline import Audience, Deps, Options
from digestd.rules.subscribers import load_subscribers
from digestd.sources import FileSource
from digestd.store.sqlite import Store

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
SECRET = b"an-operator-secret-of-32-bytes!!"
SUBSCRIBERS = """\
subscribers:
  - email: alice@example.org
    name: Alice
    rules: [{any: ["kv cache"], alert: true}, {any: [attention]}]
  - email: bob@example.org
"""
MANAGE = re.compile(r"https://digest\.example\.org/preferences/([A-Za-z0-9_-]+)")


def make_deps(tmp_path: Path, *, public_url: str | None = "https://digest.example.org") -> Deps:
    deps = Deps(
        store=Store(tmp_path / "state.sqlite3"),
        source=FileSource(papers_json(tmp_path)),
        mailer=MaildirMailer(tmp_path / "mail"),
        audience=Audience.of(load_subscribers(SUBSCRIBERS, file="subscribers.yaml")),
        envs=make_environments(),
        options=Options(
            sender="Paper Digest <digest@example.org>", public_url=public_url, secret=SECRET
        ),
    )
    pipeline.register(deps, now=NOW - timedelta(days=1))
    return deps


def inbox(tmp_path: Path) -> list[EmailMessage]:
    box = mailbox.Maildir(tmp_path / "mail", create=False)
    return [
        email.message_from_bytes(box.get_bytes(k), policy=email.policy.default)  # type: ignore[misc]
        for k in sorted(box.keys())
    ]


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    return text, html


async def test_digests_and_alerts_carry_a_verified_manage_link(tmp_path: Path) -> None:
    deps = make_deps(tmp_path)
    await pipeline.ingest(deps, now=NOW)  # Alice's alert rule: an alert
    pipeline.compose(deps, now=NOW, once=True)
    await pipeline.deliver_due(deps, now=NOW, clock=lambda: NOW)
    messages = inbox(tmp_path)
    kinds = sorted(m["Subject"].split(":")[0] for m in messages)
    assert kinds == ["Alert", "Paper digest", "Paper digest"]
    manage_key = tokens.derive_key(SECRET, "manage")
    unsub_key = tokens.derive_key(SECRET, "unsubscribe")
    for message in messages:
        to = str(message["To"]).rpartition("<")[2].rstrip(">")
        text, html = parts(message)
        assert "Manage your subscription: https://digest.example.org/preferences/" in text
        assert ">Manage your subscription</a>" in html
        (token,) = set(MANAGE.findall(text))
        assert MANAGE.findall(html) == [token]
        parsed = tokens.parse_manage(token)
        assert parsed is not None and parsed.verify(manage_key, to)
        assert deps.store.subscribers.email_of(parsed.subscriber_id) == to
        assert not parsed.verify(manage_key, "mallory@example.org")
        assert not parsed.verify(unsub_key, to)  # a manage token does not unsubscribe
        unsub = re.search(r"/unsubscribe/([A-Za-z0-9_-]+)", text)
        assert unsub is not None and unsub.group(1) != token
        found = tokens.parse_unsubscribe(unsub.group(1))
        assert found is not None and not found.verify(manage_key, to)  # nor the other way


async def test_the_web_copy_has_no_manage_link(tmp_path: Path) -> None:
    deps = make_deps(tmp_path)
    await pipeline.ingest(deps, now=NOW)
    pipeline.compose(deps, now=NOW, once=True)
    rows = deps.store.db.conn.execute("SELECT token FROM web_copies").fetchall()
    assert rows
    for (token,) in rows:
        copy = deps.store.webcopies.find(token, now=NOW)
        assert copy is not None
        page = stored_page(copy.whole, copy.template, copy.slots or "{}", copy.fills or "{}")
        assert "/preferences/" not in page and "Manage your subscription" not in page
        assert "/preferences/" not in (copy.fills or "")


async def test_without_a_public_url_the_mail_keeps_its_reply_note(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, public_url=None)
    await pipeline.ingest(deps, now=NOW)
    pipeline.compose(deps, now=NOW, once=True)
    await pipeline.deliver_due(deps, now=NOW, clock=lambda: NOW)
    text, html = parts(inbox(tmp_path)[-1])
    assert "Manage your subscription" not in text + html
    assert "Reply to digest@example.org to change your rules." in " ".join(text.split())


async def test_a_manage_token_leads_to_its_address_only(tmp_path: Path) -> None:
    from digestd.pipeline.readers import manage_address

    deps = make_deps(tmp_path)
    await pipeline.ingest(deps, now=NOW)
    pipeline.compose(deps, now=NOW, once=True)
    await pipeline.deliver_due(deps, now=NOW, clock=lambda: NOW)
    text, _ = parts(next(m for m in inbox(tmp_path) if "bob@" in str(m["To"])))
    unsub = re.search(r"/unsubscribe/([A-Za-z0-9_-]+)", text)
    (token,) = set(MANAGE.findall(text))
    assert manage_address(deps, token) == "bob@example.org"
    assert unsub is not None and manage_address(deps, unsub.group(1)) is None  # wrong purpose
    assert manage_address(deps, token[:-2] + ("AA" if token[-2:] != "AA" else "BB")) is None
    assert manage_address(deps, "x" * 5000) is None and manage_address(deps, "") is None
    sub_id = tokens.parse_manage(token).subscriber_id  # type: ignore[union-attr]
    deps.store.readers.add_pending("bob@example.org", name=None, spec={}, at=NOW)
    deps.store.readers.remove("bob@example.org", at=NOW)  # his id retires with his row
    assert deps.store.subscribers.email_of(sub_id) is None
    assert manage_address(deps, token) is None
