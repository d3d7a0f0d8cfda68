"""Reader pages while a compose batch holds the state file's write lock (issue 15's load target).

The Manage link's page (GET /preferences/{token}) runs on the event loop; it once took the write
lock to look up the reader's id, so every page of the daemon waited for each compose batch's
commit (bench/web.py: p99 2 s at 20,000 subscribers). Showing a page must not need the lock.
A form's write (a sign-up, a pause, ...) does need it: it waits in a worker thread on a connection
of its own (ReaderSite.write) while the loop goes on serving every other page.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import readerpages
from pgstate import pg_schema
from readerpages import SECRET, Site, link_in, serve
from smtpserver import SMTPTestServer

from digestd.mail.linktokens import derive_key, manage_token
from digestd.store.factory import open_store
from digestd.store.sqlite import Store

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def site(tmp_path: Path, smtp_server: SMTPTestServer) -> AsyncIterator[Site]:
    async with serve(tmp_path, smtp_server) as running:
        yield running


async def test_the_manage_page_shows_while_another_connection_holds_the_write_lock(
    site: Site,
) -> None:
    email = next(iter(site.deps.audience.yaml.subscribers)).email  # an admin-listed reader
    sub_id = site.deps.store.subscribers.id_of(email)
    path = f"/preferences/{manage_token(derive_key(SECRET, 'manage'), sub_id, email)}"
    site.deps.store.db.conn.execute("PRAGMA busy_timeout = 0")  # waiting would fail at once
    blocker = Store(site.deps.store.path)
    try:
        blocker.db.conn.execute("BEGIN IMMEDIATE")
        page = await site.client.get(path, timeout=10)
        assert page.status_code == 200, page.text
    finally:
        blocker.db.conn.execute("COMMIT")
        blocker.close()


async def _while_locked(
    site: Site, post: Callable[[], Awaitable[httpx.Response]]
) -> httpx.Response:
    """`post` sent while another connection holds the write lock: another page answers at once
    meanwhile (the loop is free), and the POST completes once the lock is released."""
    blocker = Store(site.deps.store.path)
    try:
        blocker.db.conn.execute("BEGIN IMMEDIATE")
        start = time.monotonic()
        posted = asyncio.create_task(post())
        await asyncio.sleep(0.3)  # a head start: the POST reaches its write and waits there
        page = await site.client.get("/subscribe", timeout=10)
        # On the loop, the write would hold every page for the busy timeout (5 s), then fail.
        assert page.status_code == 200 and time.monotonic() - start < 3
        assert not posted.done()
    finally:
        blocker.db.conn.execute("COMMIT")
        blocker.close()
    return await asyncio.wait_for(posted, 10)


async def test_a_sign_up_waits_for_the_write_lock_off_the_event_loop(site: Site) -> None:
    csrf = await site.csrf("/subscribe")
    reply = await _while_locked(site, lambda: site.subscribe(csrf=csrf))
    assert reply.status_code == 303, reply.text
    reader = site.deps.store.readers.get("new@example.org")
    assert reader is not None and reader.state == "pending"
    await site.deliver()
    assert [m["Subject"] for m in site.mails_to("new@example.org")] == [
        "Confirm your subscription to Paper Digest"
    ]


async def test_a_pause_waits_for_the_write_lock_off_the_event_loop(site: Site) -> None:
    email = next(iter(site.deps.audience.yaml.subscribers)).email  # an admin-listed reader
    sub_id = site.deps.store.subscribers.id_of(email)
    path = f"/preferences/{manage_token(derive_key(SECRET, 'manage'), sub_id, email)}"
    data = {"csrf": await site.csrf(path), "action": "pause", "weeks": "2"}
    reply = await _while_locked(site, lambda: site.client.post(path, data=data, timeout=10))
    assert reply.status_code == 303 and reply.headers["location"].endswith("?done=paused")
    assert site.deps.store.readers.pause_of(email) is not None


async def test_the_pages_write_through_a_postgresql_state(
    tmp_path: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same writes on a database state: each on a connection of the pool's (`side`)."""
    with pg_schema("pagewrites") as url:
        monkeypatch.setattr(readerpages, "Store", lambda _path: open_store(url))
        async with serve(tmp_path, smtp_server) as site:
            assert (await site.subscribe()).status_code == 303
            await site.deliver()
            confirm = link_in(site.mails_to("new@example.org")[-1], "confirm")
            done = await site.client.post(confirm, data={"csrf": await site.csrf(confirm)})
            assert done.status_code == 200 and "You are subscribed" in done.text
            assert site.deps.audience.subscribers.by_email("new@example.org") is not None
            sub_id = site.deps.store.subscribers.id_of("new@example.org")
            path = f"/preferences/{manage_token(derive_key(SECRET, 'manage'), sub_id, 'new@example.org')}"
            data = {"csrf": await site.csrf(path), "action": "pause", "weeks": "1"}
            paused = await site.client.post(path, data=data)
            assert paused.status_code == 303, paused.text
            assert site.deps.store.readers.pause_of("new@example.org") is not None
