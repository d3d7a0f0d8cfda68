"""Transports against a real aiosmtpd server on 127.0.0.1 and a real Maildir."""

from __future__ import annotations

import email
import email.policy
import mailbox
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
from smtpserver import SMTPTestServer

from digestd.core.model import Rendered
from digestd.deliver.transports.base import classify_reply
from digestd.deliver.transports.maildir import MaildirMailer
from digestd.deliver.transports.smtp import SmtpMailer
from digestd.mail.mime import build_message

SENDER = "digest@example.org"
RCPT = "ann@example.org"


@pytest.fixture
def smtp_server(smtp_server_modes: SMTPTestServer) -> SMTPTestServer:
    """Every test here runs against a server with and without PIPELINING (conftest.py)."""
    return smtp_server_modes


def message(n: int = 1, subject: str = "Paper digest: 1 new paper — Attention") -> bytes:
    rendered = Rendered(
        subject=subject,
        text=f"Hello\n.leading dot line\nmessage {n}\n",
        html=f"<p>message {n} — ünïcode</p>",
    )
    return build_message(
        rendered,
        sender=f"Paper Digest <{SENDER}>",
        to=RCPT,
        to_name="Ann",
        message_id=f"<m{n}@example.org>",
        date=datetime(2026, 11, 27, 7, 0, tzinfo=UTC),
        headers={"List-Id": "Paper Digest <digest.example.org>"},
    ).whole()


def mailer(server: SMTPTestServer, **kwargs: object) -> SmtpMailer:
    options: dict[str, object] = {"security": "none", "timeout": 2.0, "local_hostname": "test"}
    options.update(kwargs)
    return SmtpMailer(server.host, server.port, **options)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_delivers_with_parts_and_headers_intact(smtp_server: SMTPTestServer) -> None:
    m = mailer(smtp_server)
    data = message()
    outcome = await m.send(SENDER, RCPT, data)
    await m.aclose()

    assert outcome.status == "sent"
    assert outcome.code == 250
    assert outcome.reply.startswith("2.0.0 Ok: queued as")
    [got] = smtp_server.received
    assert got.mail_from == SENDER
    assert got.rcpt_tos == [RCPT]
    assert got.content.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")
    msg = got.message
    assert msg["Message-ID"] == "<m1@example.org>"
    assert msg["Subject"] == "Paper digest: 1 new paper — Attention"
    assert msg["List-Id"] == "Paper Digest <digest.example.org>"
    plain, html = msg.iter_parts()
    text = plain.get_content().replace("\r\n", "\n")
    assert text == "Hello\n.leading dot line\nmessage 1\n"  # dot-stuffing undone
    assert html.get_content().rstrip() == "<p>message 1 — ünïcode</p>"


async def test_reuses_one_connection_across_messages(smtp_server: SMTPTestServer) -> None:
    m = mailer(smtp_server)
    outcomes = [await m.send(SENDER, RCPT, message(n)) for n in range(3)]
    await m.aclose()

    assert [o.status for o in outcomes] == ["sent"] * 3
    assert len(smtp_server.received) == 3
    assert smtp_server.handler.connections == 1
    assert m.connections == 1


async def test_reconnects_after_max_per_connection(smtp_server: SMTPTestServer) -> None:
    m = mailer(smtp_server, max_per_connection=2)
    outcomes = [await m.send(SENDER, RCPT, message(n)) for n in range(3)]
    await m.aclose()

    assert [o.status for o in outcomes] == ["sent"] * 3
    assert smtp_server.handler.connections == 2


async def test_recipient_550_is_permanent_with_the_servers_words(
    smtp_server: SMTPTestServer,
) -> None:
    smtp_server.handler.rcpt_replies["bad@example.org"] = "550 5.1.1 no such user"
    m = mailer(smtp_server)
    outcome = await m.send(SENDER, "bad@example.org", message())
    after = await m.send(SENDER, RCPT, message(2))  # RSET kept the connection usable
    await m.aclose()

    assert (outcome.status, outcome.code) == ("permanent", 550)
    assert "no such user" in outcome.reply
    assert after.status == "sent"
    assert smtp_server.handler.connections == 1
    assert [r.rcpt_tos for r in smtp_server.received] == [[RCPT]]


async def test_recipient_450_is_transient(smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.rcpt_replies[RCPT] = "450 4.2.1 try later"
    m = mailer(smtp_server)
    outcome = await m.send(SENDER, RCPT, message())
    await m.aclose()

    assert (outcome.status, outcome.code) == ("transient", 450)
    assert "try later" in outcome.reply
    assert smtp_server.received == []


async def test_recipient_552_is_transient(smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.rcpt_replies[RCPT] = "552 5.5.3 too many recipients"
    m = mailer(smtp_server)
    outcome = await m.send(SENDER, RCPT, message())
    await m.aclose()

    assert (outcome.status, outcome.code) == ("transient", 552)


async def test_421_on_data_is_transient_and_reconnects(smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.data_reply = "421 4.3.0 shutting down"
    m = mailer(smtp_server)
    outcome = await m.send(SENDER, RCPT, message())
    smtp_server.handler.data_reply = None
    after = await m.send(SENDER, RCPT, message(2))
    await m.aclose()

    assert (outcome.status, outcome.code) == ("transient", 421)
    assert after.status == "sent"
    assert smtp_server.handler.connections == 2


async def test_554_on_data_is_permanent(smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.data_reply = "554 5.7.1 message refused"
    m = mailer(smtp_server)
    outcome = await m.send(SENDER, RCPT, message())
    await m.aclose()

    assert (outcome.status, outcome.code) == ("permanent", 554)
    assert "message refused" in outcome.reply


async def test_drop_after_data_is_in_doubt(smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.drop_after_data = True
    m = mailer(smtp_server)
    outcome = await m.send(SENDER, RCPT, message())
    smtp_server.handler.drop_after_data = False
    after = await m.send(SENDER, RCPT, message(2))
    await m.aclose()

    assert outcome.status == "in_doubt"
    assert outcome.code is None
    assert len(smtp_server.received) == 2  # the server had the first one: at-least-once
    assert after.status == "sent"


async def test_stall_beyond_data_timeout_is_in_doubt(smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.stall_data = 5.0  # cancelled when the server stops
    m = mailer(smtp_server, data_timeout=0.05)
    outcome = await m.send(SENDER, RCPT, message())
    await m.aclose()

    assert outcome.status == "in_doubt"
    assert "end_of_data" in outcome.reply
    assert len(smtp_server.received) == 1


async def test_connection_refused_is_transient() -> None:
    m = SmtpMailer("127.0.0.1", closed_port(), security="none", timeout=1.0, local_hostname="t")
    outcome = await m.send(SENDER, RCPT, message())
    await m.aclose()

    assert outcome.status == "transient"
    assert outcome.reply.startswith("connect:")


async def test_server_gone_between_messages_reconnects(smtp_server: SMTPTestServer) -> None:
    m = mailer(smtp_server)
    first = await m.send(SENDER, RCPT, message(1))
    # The relay closes an idle connection without a word; the next send must not lose a message.
    for session in smtp_server.handler.sessions:
        session.loop.call_soon_threadsafe(lambda s=session: s.transport and s.transport.close())
    second = await m.send(SENDER, RCPT, message(2))
    await m.aclose()

    assert (first.status, second.status) == ("sent", "sent")
    assert len(smtp_server.received) == 2


async def test_control_characters_in_recipient_are_permanent(
    smtp_server: SMTPTestServer,
) -> None:
    m = mailer(smtp_server)
    outcome = await m.send(SENDER, "ann@example.org\r\nRCPT TO:<x@y>", message())
    await m.aclose()

    assert outcome.status == "permanent"
    assert smtp_server.received == []


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls_is_never_opportunistic(smtp_server: SMTPTestServer, security: str) -> None:
    # This server speaks plain SMTP only: STARTTLS is not offered and implicit TLS fails.
    m = mailer(smtp_server, security=security, username="u", password="hunter2")
    outcome = await m.send(SENDER, RCPT, message())
    await m.aclose()

    assert outcome.status == "transient"
    assert outcome.reply.startswith("connect:")
    assert "hunter2" not in outcome.reply
    assert smtp_server.received == []


def test_credentials_without_tls_are_refused() -> None:
    with pytest.raises(ValueError, match="without TLS"):
        SmtpMailer("mail.example.org", 25, security="none", username="u", password="hunter2")


def test_password_is_kept_out_of_the_repr() -> None:
    m = SmtpMailer("mail.example.org", 587, security="starttls", username="u", password="hunter2")
    assert "hunter2" not in repr(m)
    assert "hunter2" not in str(vars(m).get("username"))


@pytest.mark.parametrize(
    ("code", "phase", "status"),
    [
        (250, "end_of_data", "sent"),
        (451, "mail", "transient"),
        (550, "rcpt", "permanent"),
        (552, "rcpt", "transient"),
        (552, "end_of_data", "permanent"),
        (535, "connect", "transient"),
        (999, "data", "transient"),
        # Issue 12 item 4: a yes where another yes was due is a protocol error, never "sent".
        (250, "data", "transient"),
        (252, "rcpt", "transient"),
        (251, "mail", "transient"),
        (250, "connect", "transient"),
        # Item 5: after the final ".", only 250, 4xx and 5xx are clear; the rest is in doubt.
        (251, "end_of_data", "in_doubt"),
        (354, "end_of_data", "in_doubt"),
        (-1, "end_of_data", "in_doubt"),
        (451, "end_of_data", "transient"),
    ],
)
def test_classify_reply(code: int, phase: str, status: str) -> None:
    assert classify_reply(code, phase) == status  # type: ignore[arg-type]


async def test_maildir_writes_a_parseable_message(tmp_path: Path) -> None:
    box_dir = tmp_path / "mail"
    box_dir.mkdir()  # an existing empty directory, as systemd's StateDirectory would give
    m = MaildirMailer(box_dir)
    data = message()
    outcome = await m.send(SENDER, RCPT, data)
    await m.aclose()

    assert outcome.status == "sent"
    assert outcome.code == 250
    key = outcome.reply.removeprefix("maildir ")
    box = mailbox.Maildir(box_dir, create=False)
    assert list(box.keys()) == [key]
    raw = (box_dir / "new" / key).read_bytes()
    trace = f"Return-Path: <{SENDER}>\nDelivered-To: {RCPT}\n".encode()
    assert raw == trace + data.replace(b"\r\n", b"\n")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Delivered-To"] == RCPT
    assert msg["Message-ID"] == "<m1@example.org>"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


async def test_maildir_refuses_a_header_breaking_address(tmp_path: Path) -> None:
    outcome = await MaildirMailer(tmp_path / "m").send(SENDER, "a@b\r\nBcc: x@y", message())
    assert outcome.status == "permanent"
