"""One-click unsubscribe end to end over HTTP: the real listener, real store, real SMTP server."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from smtpserver import SMTPTestServer

from digestd import pipeline
from digestd.deliver.transports.smtp import SmtpMailer
from digestd.mail.render import make_environments
from digestd.pipeline import Audience, Deps, Options
from digestd.rules.subscribers import load_subscribers
from digestd.service import wiring as app
from digestd.service.web import WebServer
from digestd.sources import FileSource
from digestd.store.sqlite import Store

FIXTURES = Path(__file__).parents[1] / "fixtures"
NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
SECRET = b"an-operator-secret-of-32-bytes!!"
SUBSCRIBERS = """\
subscribers:
  - email: alice@example.org
  - email: bob@example.org
"""


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def make_deps(tmp_path: Path, server: SMTPTestServer) -> Deps:
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())
    (tmp_path / "papers.json").write_text(json.dumps(items))
    deps = Deps(
        store=Store(tmp_path / "state.sqlite3"),
        source=FileSource(tmp_path / "papers.json"),
        mailer=SmtpMailer(server.host, server.port, security="none", timeout=5.0),
        audience=Audience.of(load_subscribers(SUBSCRIBERS, file="subscribers.yaml")),
        envs=make_environments(),
        options=Options(
            sender="Paper Digest <digest@example.org>",
            public_url="https://digest.example.org",
            secret=SECRET,
            view_days=30,
        ),
    )
    pipeline.register(deps, now=NOW)
    return deps


@pytest.fixture
async def site(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> AsyncIterator[tuple[Deps, httpx.AsyncClient, Clock]]:
    deps = make_deps(tmp_path, smtp_server)
    clock = Clock()
    server = WebServer("127.0.0.1:0", app.web_routes(deps, clock=clock))
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base, follow_redirects=False) as client:
            yield deps, client, clock
    finally:
        await server.stop()
        await deps.mailer.aclose()
        deps.store.close()


async def first_digest(
    deps: Deps, smtp: SMTPTestServer, email: str, now: datetime = NOW
) -> tuple[str, str]:
    """Send everyone their digest; return (unsubscribe path, view path) from `email`'s message."""
    await pipeline.ingest(deps, now=now)
    pipeline.compose(deps, now=now, once=True)
    await pipeline.deliver_due(deps, now=now, clock=lambda: now)
    msg = next(r.message for r in smtp.received if r.rcpt_tos == [email])
    unsub = re.search(
        r"<https://digest\.example\.org(/unsubscribe/[^>]+)>", msg["List-Unsubscribe"]
    )
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    view = re.search(r'href="https://digest\.example\.org(/view/[^"]+)"', html)
    assert unsub and view
    return unsub.group(1), view.group(1)


def assert_plain_200(reply: httpx.Response) -> None:
    assert reply.status_code == 200, reply.text
    assert "set-cookie" not in reply.headers and "location" not in reply.headers
    assert reply.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
async def test_one_click_post_unsubscribes_at_once(
    site: tuple[Deps, httpx.AsyncClient, Clock], smtp_server: SMTPTestServer, encoding: str
) -> None:
    deps, client, _ = site
    path, _ = await first_digest(deps, smtp_server, "alice@example.org")
    if encoding == "urlencoded":
        reply = await client.post(path, data={"List-Unsubscribe": "One-Click"})
        assert reply.request.headers["content-type"] == "application/x-www-form-urlencoded"
    else:
        reply = await client.post(path, files={"List-Unsubscribe": (None, "One-Click")})
        assert reply.request.headers["content-type"].startswith("multipart/form-data")
    assert_plain_200(reply)
    assert "a••••@example.org" in reply.text and "alice@" not in reply.text
    # Durable at once: another connection to the file sees it before anything else happens.
    with Store(deps.store.path) as other:
        assert [s.email for s in other.subscribers.suppressions()] == ["alice@example.org"]
        assert other.subscribers.suppressions()[0].via == "one-click"


async def test_get_shows_a_button_and_never_unsubscribes(
    site: tuple[Deps, httpx.AsyncClient, Clock], smtp_server: SMTPTestServer
) -> None:
    deps, client, _ = site
    path, _ = await first_digest(deps, smtp_server, "alice@example.org")
    for _ in range(3):  # a link scanner, a prefetcher, the person
        page = await client.get(path)
        assert page.status_code == 200
        assert '<form method="post">' in page.text and "<button" in page.text
        head = await client.head(path)
        assert head.status_code == 200
    assert not deps.store.subscribers.is_suppressed("alice@example.org")
    assert "form-action 'self'" in page.headers["content-security-policy"]


async def test_forged_and_altered_tokens_are_refused(
    site: tuple[Deps, httpx.AsyncClient, Clock], smtp_server: SMTPTestServer
) -> None:
    deps, client, _ = site
    path, _ = await first_digest(deps, smtp_server, "alice@example.org")
    token = path.rsplit("/", 1)[1]
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    foreign_id = "AAAAAAAAAAI" + token[11:]  # another subscriber id with alice's MAC
    for bad in (altered, foreign_id, "x" * 32, "short", "%00" * 11, "a" * 500):
        for method in ("GET", "POST"):
            reply = await client.request(method, f"/unsubscribe/{bad}", data={"a": "b"})
            assert reply.status_code == 404, (bad, method)
            assert "not valid" in reply.text
    assert deps.store.subscribers.suppressions() == []


async def test_replayed_post_is_idempotent(
    site: tuple[Deps, httpx.AsyncClient, Clock], smtp_server: SMTPTestServer
) -> None:
    deps, client, clock = site
    path, _ = await first_digest(deps, smtp_server, "bob@example.org")
    first = await client.post(path, data={"List-Unsubscribe": "One-Click"})
    clock.now = NOW + timedelta(days=3)
    again = await client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert_plain_200(first)
    assert_plain_200(again)
    suppressed = deps.store.subscribers.suppressions()
    assert [(s.email, s.at) for s in suppressed] == [("bob@example.org", NOW)]  # the first stays
    assert "will receive nothing more" in (await client.get(path)).text


async def test_oversized_body_is_refused(
    site: tuple[Deps, httpx.AsyncClient, Clock], smtp_server: SMTPTestServer
) -> None:
    deps, client, _ = site
    path, _ = await first_digest(deps, smtp_server, "alice@example.org")
    reply = await client.post(path, content=b"x" * (70 * 1024))
    assert reply.status_code == 413
    assert not deps.store.subscribers.is_suppressed("alice@example.org")


async def test_suppressed_address_gets_nothing_more_even_queued_mail(
    site: tuple[Deps, httpx.AsyncClient, Clock], smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    deps, client, _ = site
    path, _ = await first_digest(deps, smtp_server, "alice@example.org")
    count = len(smtp_server.received)
    # New papers arrive and a digest for alice is queued; then she clicks before it is sent.
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())
    for i, item in enumerate(items):
        item["paper"]["id"] = f"2612.{i:05d}"
    (tmp_path / "papers.json").write_text(json.dumps(items))
    later = NOW + timedelta(hours=1)
    await pipeline.ingest(deps, now=later)
    pipeline.compose(deps, now=later, once=True)
    assert (await client.post(path, data={"List-Unsubscribe": "One-Click"})).status_code == 200
    report = await pipeline.deliver_due(deps, now=later, clock=lambda: later)
    assert report.suppressed == 1 and report.sent == 1
    assert [r.rcpt_tos for r in smtp_server.received[count:]] == [["bob@example.org"]]

    # A restart and a config reload: new Store and Deps from the same files, YAML unchanged.
    deps.store.close()
    reloaded = make_deps(tmp_path, smtp_server)
    try:
        assert reloaded.store.subscribers.is_suppressed("alice@example.org")
        (tmp_path / "papers.json").write_text(
            json.dumps([{**it, "paper": {**it["paper"], "id": "2613." + it["paper"]["id"][5:]}}
                        for it in items])
        )  # fmt: skip
        again = NOW + timedelta(days=1)
        await pipeline.ingest(reloaded, now=again)
        pipeline.compose(reloaded, now=again, once=True)
        await pipeline.deliver_due(reloaded, now=again, clock=lambda: again)
        rcpts = [r.rcpt_tos for r in smtp_server.received[count:]]
        assert ["alice@example.org"] not in rcpts and rcpts.count(["bob@example.org"]) == 2

        # Lifted by the admin: the next digest reaches her again.
        assert reloaded.store.subscribers.unsuppress("alice@example.org", at=again)
        back = again + timedelta(minutes=1)
        pipeline.compose(reloaded, now=back, once=True)
        await pipeline.deliver_due(reloaded, now=back, clock=lambda: back)
        assert smtp_server.received[-1].rcpt_tos == ["alice@example.org"]
    finally:
        await reloaded.mailer.aclose()
        reloaded.store.close()
        deps.store = Store(tmp_path / "state.sqlite3")  # the fixture closes it


async def test_view_in_browser_serves_the_whole_digest_until_it_expires(
    site: tuple[Deps, httpx.AsyncClient, Clock], smtp_server: SMTPTestServer
) -> None:
    deps, client, clock = site
    _, view = await first_digest(deps, smtp_server, "bob@example.org")
    page = await client.get(view)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "huggingface.co/papers/" in page.text
    assert "View in your browser" not in page.text  # the page does not link to itself
    assert "noindex" in page.headers["x-robots-tag"]
    for bad in ("/view/" + "A" * 24, "/view/short", view + "x"):
        assert (await client.get(bad)).status_code == 404
    clock.now = NOW + timedelta(days=30, seconds=1)
    assert (await client.get(view)).status_code == 404
    assert deps.store.webcopies.prune(now=clock.now) == 2


async def test_web_copy_is_stored_compressed(
    site: tuple[Deps, httpx.AsyncClient, Clock], smtp_server: SMTPTestServer
) -> None:
    deps, _, _ = site
    _, view = await first_digest(deps, smtp_server, "bob@example.org")
    copy = deps.store.webcopies.find(view.rsplit("/", 1)[1], now=NOW)
    assert copy is not None
    stored = copy.whole if copy.whole is not None else copy.template
    assert stored is not None
    html = zlib.decompress(stored)
    assert len(stored) * 3 < len(html)


async def test_item7_unsubscribe_on_a_moved_state_file_asks_to_retry(
    site: tuple[Deps, httpx.AsyncClient, Clock], smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    """A click while the state file is away would be written where nobody reads it again."""
    deps, client, _ = site
    path, _ = await first_digest(deps, smtp_server, "alice@example.org")
    aside = tmp_path / "aside.sqlite3"
    deps.store.path.rename(aside)
    reply = await client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert reply.status_code == 503 and reply.headers["retry-after"] == "300"
    aside.rename(deps.store.path)
    assert not deps.store.subscribers.is_suppressed("alice@example.org")
    assert (await client.post(path, data={"List-Unsubscribe": "One-Click"})).status_code == 200
    assert deps.store.subscribers.is_suppressed("alice@example.org")


async def test_item11_unsubscribe_link_older_than_a_resubscribe_does_nothing(
    site: tuple[Deps, httpx.AsyncClient, Clock], smtp_server: SMTPTestServer
) -> None:
    deps, client, clock = site
    old, _ = await first_digest(deps, smtp_server, "alice@example.org")
    assert (await client.post(old, data={"List-Unsubscribe": "One-Click"})).status_code == 200
    assert deps.store.subscribers.unsuppress("alice@example.org", at=NOW + timedelta(hours=1))
    # The link from before the resubscribe: a page that says so, and she stays subscribed.
    for reply in (await client.post(old), await client.get(old)):
        assert reply.status_code == 410, reply.text
        assert "out of date" in reply.text and "<form" not in reply.text
    assert not deps.store.subscribers.is_suppressed("alice@example.org")
    # Her next mail carries a new link, which works.
    later = NOW + timedelta(days=1)
    clock.now = later
    smtp_server.received.clear()
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())
    for i, entry in enumerate(items):
        entry["paper"]["id"] = f"2612.{i:05d}"
    (Path(deps.store.path).parent / "papers.json").write_text(json.dumps(items))
    new, _ = await first_digest(deps, smtp_server, "alice@example.org", later)
    assert new != old
    assert (await client.post(new, data={"List-Unsubscribe": "One-Click"})).status_code == 200
    assert deps.store.subscribers.is_suppressed("alice@example.org")
