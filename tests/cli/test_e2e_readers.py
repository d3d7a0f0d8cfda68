"""Self-registered readers through `run --once` as a subprocess, a real HTTP source and aiosmtpd
(issue 15): served beside the YAML's subscribers, their manage link verified, a pause skipping
its papers or sending them in one catch-up digest."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from httpserver import LocalHTTPServer
from smtpserver import SMTPTestServer
from test_e2e import digestd, seed_items, serve_listing, write_config

from digestd.mail import linktokens as tokens
from digestd.rules.readers import reader_spec
from digestd.store.sqlite import Store

SECRET = "an-operator-secret-of-32-bytes!!"
SUBSCRIBERS = """\
rule_sets:
  kv:
    - any: ["kv cache"]
subscribers:
  - email: alice@example.org
    rules: [{any: [attention]}]
"""
NEW_ITEM_TITLE = "Attention after the holidays"


def new_item() -> dict[str, object]:
    item = seed_items()[0]
    item["paper"] = {**item["paper"], "id": "2612.00001", "title": NEW_ITEM_TITLE}  # type: ignore[dict-item]
    item["title"] = NEW_ITEM_TITLE
    return item


def by_rcpt(server: SMTPTestServer, start: int = 0) -> dict[str, list[str]]:
    """Each recipient's plain-text bodies among the messages received since `start`."""
    found: dict[str, list[str]] = {}
    for received in server.received[start:]:
        text = received.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        found.setdefault(received.rcpt_tos[0], []).append(text)
    return found


def test_readers_pause_skip_catch_up_and_manage_link_through_run_once(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    serve_listing(http_server, seed_items())
    extra = "http:\n  public_url: https://digest.example.org\nsignup:\n  defaults: {max_papers: 50}\n"
    config = write_config(tmp_path, source_url=http_server.url, smtp_port=smtp_server.port, extra=extra)
    (tmp_path / "subscribers.yaml").write_text(SUBSCRIBERS)
    env = {"DIGESTD_HTTP__SECRET": SECRET}
    now = datetime.now(UTC)
    with Store(tmp_path / "var" / "digestd.sqlite3") as store:
        for email, spec in [
            ("carol@example.org", reader_spec(topics=["kv"])),
            ("erin@example.org", reader_spec(keywords=["attention"])),
            ("frank@example.org", reader_spec(keywords=["attention"])),
        ]:
            store.readers.add_pending(email, name=email[0].upper(), spec=spec, at=now)
            store.readers.confirm(email, at=now)
        store.readers.pause("erin@example.org", until=now + timedelta(weeks=2), at=now)
        store.readers.pause("frank@example.org", until=now + timedelta(weeks=2), at=now)

    first = digestd(config, "run", "--once", env=env)
    assert first.returncode == 0, first.stderr
    got = by_rcpt(smtp_server)
    assert sorted(got) == ["alice@example.org", "carol@example.org"]  # the paused get nothing
    carol = got["carol@example.org"][0]
    assert "Task-KV" in carol and "SpAtten" not in carol  # the topic's rules
    token = re.search(r"Manage your subscription: https://digest\.example\.org/preferences/(\S+)", carol)
    assert token is not None
    parsed = tokens.parse_manage(token.group(1))
    key = tokens.derive_key(SECRET.encode(), "manage")
    assert parsed is not None and parsed.verify(key, "carol@example.org")

    with Store(tmp_path / "var" / "digestd.sqlite3") as store:
        assert store.subscribers.email_of(parsed.subscriber_id) == "carol@example.org"
        later = datetime.now(UTC)
        assert store.readers.resume("erin@example.org", at=later, catch_up=False)
        assert store.readers.resume("frank@example.org", at=later, catch_up=True)
    serve_listing(http_server, seed_items([new_item()]))
    start = len(smtp_server.received)
    second = digestd(config, "run", "--once", env=env)
    assert second.returncode == 0, second.stderr
    got = by_rcpt(smtp_server, start)
    assert sorted(got) == ["alice@example.org", "erin@example.org", "frank@example.org"]
    (erin,) = got["erin@example.org"]
    assert NEW_ITEM_TITLE in erin and "SpAtten" not in erin  # the pause's papers were skipped
    (frank,) = got["frank@example.org"]
    assert NEW_ITEM_TITLE in frank and "SpAtten" in frank  # one digest with what he missed
    third = digestd(config, "run", "--once", env=env)
    assert third.returncode == 0 and len(smtp_server.received) == start + 3  # nothing twice
