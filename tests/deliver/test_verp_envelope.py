"""A VERP envelope sender goes out as MAIL FROM on both SMTP exchanges (lock-step and pipelined)
and is recorded as Return-Path by the Maildir transport."""

from __future__ import annotations

from pathlib import Path

from smtpserver import SMTPTestServer

from digestd.bounces.verp import BOUNCE_PURPOSE, verp_sender
from digestd.deliver.transports.maildir import MaildirMailer
from digestd.deliver.transports.smtp import SmtpMailer
from digestd.mail.linktokens import derive_key

KEY = derive_key(b"k" * 32, BOUNCE_PURPOSE)
SENDER = verp_sender("bounces@lab.example.org", KEY, 7, "ada@example.org")
MESSAGE = b"From: Paper Digest <digest@lab.example.org>\r\nTo: ada@example.org\r\n\r\nhi\r\n"


async def test_smtp_sends_the_verp_address_as_mail_from(smtp_server_modes: SMTPTestServer) -> None:
    mailer = SmtpMailer("127.0.0.1", smtp_server_modes.port, security="none", timeout=5)
    try:
        outcome = await mailer.send(SENDER, "ada@example.org", MESSAGE)
    finally:
        await mailer.aclose()
    assert outcome.status == "sent"
    (received,) = smtp_server_modes.received
    assert received.mail_from == SENDER
    assert received.message["From"] == "Paper Digest <digest@lab.example.org>"


async def test_maildir_records_it_as_return_path(tmp_path: Path) -> None:
    outcome = await MaildirMailer(tmp_path / "mail").send(SENDER, "ada@example.org", MESSAGE)
    assert outcome.status == "sent"
    (path,) = (tmp_path / "mail" / "new").iterdir()
    assert path.read_bytes().startswith(f"Return-Path: <{SENDER}>\n".encode())
