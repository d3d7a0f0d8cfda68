"""A Maildir as the mail transport: every message lands in `new/`; for trials and `run --once`."""

from __future__ import annotations

import asyncio
import mailbox
import re
from pathlib import Path

from digestd.core.model import Outcome

__all__ = ["MaildirMailer"]

# What a local delivery agent would add; the address checks keep a header line from being forged.
_ADDRESS = re.compile(r"[^\x00-\x20\x7f<>,;]*")


class MaildirMailer:
    """Writes each message, with Return-Path and Delivered-To prepended, into a real Maildir."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"MaildirMailer(path={str(self.path)!r})"

    async def send(
        self, sender: str, recipient: str, data: bytes, *, canonical: bool = False
    ) -> Outcome:
        if not (_ADDRESS.fullmatch(sender) and _ADDRESS.fullmatch(recipient) and recipient):
            return Outcome("permanent", None, "maildir: invalid envelope address")
        try:
            key = await asyncio.to_thread(self._deliver, sender, recipient, data)
        except OSError as exc:
            return Outcome("transient", None, f"maildir: {type(exc).__name__}: {exc}")
        return Outcome("sent", 250, f"maildir {key}")

    async def aclose(self) -> None:
        return None

    def _deliver(self, sender: str, recipient: str, data: bytes) -> str:
        # Maildir(create=True) only creates a missing directory, not the subdirectories of an
        # existing empty one (say, a systemd StateDirectory).
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        box = mailbox.Maildir(self.path, create=True)
        trace = f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n".encode("ascii")
        # Maildir files use local line ends; the bytes are otherwise the message as queued.
        content = (trace + data).replace(b"\r\n", b"\n")
        return box.add(mailbox.MaildirMessage(content))
