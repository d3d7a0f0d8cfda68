"""The IMAP bounce inbox against a real server: Debian's dovecot, started by the test on a free
port with TLS (a fresh self-signed certificate, trusted through `ca_file`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapserver import PASSWORD, USER, DovecotServer
from scenes import file_smtp_scene
from smtpserver import SMTPTestServer

from digestd.bounces.imap import KEYWORD, ImapError, ImapInbox
from digestd.bounces.inbox import Processed
from digestd.bounces.verp import verp_sender, verp_tokens
from digestd.pipeline.bounces import BounceTally, bounce_key, read_bounces
from digestd.store.sqlite import Store

pytestmark = pytest.mark.skipif(
    DovecotServer.available() is not None, reason=str(DovecotServer.available())
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "bounces"
T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
BASE = "bounces@lab.example.org"
PLACEHOLDER = f"bounces+{'a' * 32}@lab.example.org".encode()


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotServer]:
    with DovecotServer() as server:
        yield server


@pytest.fixture
def admin(dovecot: DovecotServer) -> Iterator[IMAPClient]:
    """The admin's own view of the mailbox: emptied before each test."""
    import ssl

    context = ssl.create_default_context(cafile=str(dovecot.ca_file))
    client = IMAPClient("127.0.0.1", dovecot.port, ssl=True, ssl_context=context, timeout=10)
    client.login(USER, PASSWORD)
    for folder in ("Processed", "INBOX"):
        if client.folder_exists(folder):
            client.select_folder(folder)
            client.delete_messages(client.search(["ALL"]))
            client.expunge()
    client.select_folder("INBOX")
    yield client
    client.logout()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state.sqlite3") as s:
        yield s


def inbox(dovecot: DovecotServer, processed: Processed = "flag", **kw: object) -> ImapInbox:
    options: dict[str, object] = {
        "username": USER, "password": PASSWORD, "processed": processed,
        "ca_file": dovecot.ca_file, "timeout": 10.0, **kw,
    }  # fmt: skip
    return ImapInbox("127.0.0.1", dovecot.port, **options)  # type: ignore[arg-type]


def sent(store: Store, who: str, period: str = "d0") -> int:
    outbox_id = store.outbox.enqueue(
        subscriber=who, kind="digest", period=period, message_id=f"<{who}.{period}@t>",
        sender="d@example.org", data=b"bytes", paper_ids=(), at=T0,
    )  # fmt: skip
    assert outbox_id is not None
    (row,) = store.outbox.claim_due(now=T0)
    store.outbox.mark_sent(row.id, at=T0, code=250, reply="ok")
    return outbox_id


def bounce(store: Store, fixture: str, outbox_id: int, who: str) -> bytes:
    address = verp_sender(BASE, bounce_key(store.secret()), outbox_id, who).encode()
    return (FIXTURES / fixture).read_bytes().replace(PLACEHOLDER, address)


def read(store: Store, box: ImapInbox, max_bytes: int = 2**21) -> BounceTally:
    try:
        return asyncio.run(
            read_bounces(store, box, verp=BASE, key=bounce_key(store.secret()), now=T0,
                         suspend=1, max_bytes=max_bytes)
        )  # fmt: skip
    finally:
        box.close()


def flags(admin: IMAPClient, folder: str = "INBOX") -> list[set[bytes]]:
    admin.select_folder(folder)
    found = admin.fetch(admin.search(["ALL"]), ["FLAGS"])
    return [set(found[uid][b"FLAGS"]) for uid in sorted(found)]


def test_reports_act_and_the_rest_stays_unread(
    dovecot: DovecotServer, admin: IMAPClient, store: Store
) -> None:
    ada, barbara = sent(store, "ada@example.org"), sent(store, "barbara@example.org", "d1")
    admin.append("INBOX", bounce(store, "outlook_recipient_not_found.eml", ada, "ada@example.org"))
    admin.append("INBOX", bounce(store, "arf_abuse.eml", barbara, "barbara@example.org"))
    admin.append("INBOX", bounce(store, "gmail_no_such_user.eml", ada, "eve@example.org"))  # forged
    admin.append("INBOX", (FIXTURES / "exim_failed.eml").read_bytes() + b"x" * 300_000)  # huge
    tally = read(store, inbox(dovecot), max_bytes=200_000)
    assert (tally.read, tally.permanent, tally.complaint, tally.ignored) == (4, 1, 1, 2)
    assert store.subscribers.suspended() == {"ada@example.org"}
    assert [s.via for s in store.subscribers.suppressions()] == ["complaint"]
    seen, keyword = b"\\Seen", KEYWORD
    assert [(seen in f, keyword in f) for f in flags(admin)] == [
        (True, True), (True, True), (False, True), (False, True),
    ]  # fmt: skip
    assert read(store, inbox(dovecot)).read == 0  # nothing is fetched twice


@pytest.mark.parametrize("processed", ["move", "delete"])
def test_handled_mail_is_moved_or_deleted(
    dovecot: DovecotServer, admin: IMAPClient, store: Store, processed: Processed
) -> None:
    ada = sent(store, "ada@example.org")
    admin.append("INBOX", bounce(store, "postfix_user_unknown.eml", ada, "ada@example.org"))
    admin.append("INBOX", b"From: someone@example.org\r\nSubject: hello\r\n\r\nnot a bounce\r\n")
    assert read(store, inbox(dovecot, processed)).permanent == 1
    assert len(flags(admin)) == 1  # the one left alone
    if processed == "move":
        assert [f - {b"\\Recent"} for f in flags(admin, "Processed")] == [{b"\\Seen", KEYWORD}]
    else:
        assert not admin.folder_exists("Processed") or flags(admin, "Processed") == []


def test_a_wrong_password_or_an_untrusted_certificate_is_a_clear_error(
    dovecot: DovecotServer, store: Store
) -> None:
    with pytest.raises(ImapError) as wrong:
        read(store, inbox(dovecot, password="not-the-password"))
    assert "not-the-password" not in str(wrong.value) and "IMAP read" in str(wrong.value)
    with pytest.raises(ImapError) as untrusted:
        read(store, inbox(dovecot, ca_file=None))
    assert "SSL" in str(untrusted.value) or "certificate" in str(untrusted.value)


def test_run_once_reads_the_imap_folder_of_its_settings(
    dovecot: DovecotServer, admin: IMAPClient, tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    config = file_smtp_scene(
        tmp_path, smtp_server.port, "subscribers:\n  - email: ada@example.org\n",
        delivery=f"  timeout: 5s\n  verp: {BASE}\n  suspend_after: 1\n",
    )  # fmt: skip
    (tmp_path / "imap_password").write_text(PASSWORD + "\n")
    with config.open("a") as file:
        file.write(
            f"bounces:\n  imap:\n    host: 127.0.0.1\n    port: {dovecot.port}\n"
            f"    username: {USER}\n    password_file: imap_password\n"
            f"    ca_file: {dovecot.ca_file}\n"
        )

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "digestd", "--config", str(config), "run", "--once"],
            capture_output=True, text=True, timeout=60, env=dict(os.environ),
        )  # fmt: skip

    first = run()
    assert first.returncode == 0, first.stderr
    (received,) = smtp_server.received
    token = verp_tokens(BASE, received.mail_from)[0]
    dsn = (FIXTURES / "gmail_no_such_user.eml").read_bytes()
    admin.append("INBOX", dsn.replace(PLACEHOLDER, f"bounces+{token}@lab.example.org".encode()))
    second = run()
    assert second.returncode == 0, second.stderr
    assert "bounces: read 1 (1 permanent" in second.stdout
    assert PASSWORD not in second.stdout + second.stderr
    with Store(tmp_path / "state.sqlite3") as store:
        assert store.subscribers.suspended() == {"ada@example.org"}
