"""Reader pages while a compose batch holds the state file's write lock (issue 15's load target).

The Manage link's page (GET /preferences/{token}) runs on the event loop; it once took the write
lock to look up the reader's id, so every page of the daemon waited for each compose batch's
commit (bench/web.py: p99 2 s at 20,000 subscribers). Showing a page must not need the lock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from readerpages import SECRET, Site, serve
from smtpserver import SMTPTestServer

from digestd.mail.linktokens import derive_key, manage_token
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
