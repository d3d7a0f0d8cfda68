"""An IMAP mailbox of bounces, read with IMAPClient (a maintained, typed wrapper over imaplib).

Messages digestd has read carry the keyword `$digestd` and are never fetched again; the search is
`NOT KEYWORD $digestd`. A handled message is then flagged `\\Seen`, moved to `move_to` or deleted
(`processed`); one left alone keeps only the keyword, so it stays unread for the admin. Fetching
uses BODY.PEEK, which sets no flag. The password is never logged (IMAPClient masks LOGIN in its
protocol log) and never part of an error.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from digestd.bounces.inbox import Incoming, Processed

__all__ = ["KEYWORD", "ImapError", "ImapInbox", "ImapSecurity"]

ImapSecurity = Literal["tls", "starttls", "none"]
KEYWORD = b"$digestd"
_ERRORS = (IMAPClientError, OSError, ssl.SSLError, socket.timeout, EOFError)


class ImapError(Exception):
    """The mailbox could not be read; the message says why (never with the password)."""


class ImapInbox:
    """One IMAP folder; connects on first use and stays logged in until `close`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str,
        password: str,
        security: ImapSecurity = "tls",
        folder: str = "INBOX",
        processed: Processed = "flag",
        move_to: str = "Processed",
        max_bytes: int = 2 * 1024 * 1024,
        timeout: float = 30.0,
        ca_file: Path | None = None,
        validate_certs: bool = True,
    ) -> None:
        if security == "none" and host not in ("localhost", "127.0.0.1", "::1"):
            raise ValueError("refusing to send the IMAP password without TLS to another host")
        self.host, self.port, self.username = host, port, username
        self._password = password
        self.security = security
        self.folder, self.processed, self.move_to = folder, processed, move_to
        self.max_bytes, self.timeout = max_bytes, timeout
        self._ca_file, self._validate = ca_file, validate_certs
        self._client: IMAPClient | None = None

    def __repr__(self) -> str:
        return f"ImapInbox(host={self.host!r}, port={self.port}, username={self.username!r})"

    def fetch(self, limit: int) -> list[Incoming]:
        with self._guard("read"):
            client = self._connect()
            uids = sorted(client.search(["NOT", "KEYWORD", KEYWORD.decode()]))[:limit]
            if not uids:
                return []
            sizes = client.fetch(uids, ["RFC822.SIZE"])
            found: list[Incoming] = []
            for uid in uids:
                size = int(sizes.get(uid, {}).get(b"RFC822.SIZE", 0))
                found.append(Incoming(str(uid), self._body(client, uid, size)))
            return found

    def _body(self, client: IMAPClient, uid: int, size: int) -> bytes:
        """The message's bytes; one larger than the cap is read only up to it (plus a byte)."""
        if size > self.max_bytes:
            part = f"BODY.PEEK[]<0.{self.max_bytes + 1}>"
            data = client.fetch([uid], [part]).get(uid, {})
            return bytes(data.get(b"BODY[]<0>", b""))
        data = client.fetch([uid], ["BODY.PEEK[]"]).get(uid, {})
        return bytes(data.get(b"BODY[]", b""))

    def finish(self, item: Incoming, *, handled: bool) -> None:
        uid = int(item.key)
        with self._guard("update"):
            client = self._connect()
            client.add_flags([uid], [KEYWORD, b"\\Seen"] if handled else [KEYWORD])
            if handled and self.processed == "delete":
                _delete(client, uid)
            elif handled and self.processed == "move":
                self._move(client, uid)

    def _move(self, client: IMAPClient, uid: int) -> None:
        if not client.folder_exists(self.move_to):
            client.create_folder(self.move_to)
        if client.has_capability("MOVE"):
            client.move([uid], self.move_to)
            return
        client.copy([uid], self.move_to)
        _delete(client, uid)

    @contextlib.contextmanager
    def _guard(self, step: str) -> Iterator[None]:
        """Any failure of the conversation → `ImapError` naming the step; the connection is
        dropped, so the next run starts afresh."""
        try:
            yield
        except _ERRORS as exc:
            self.close()
            raise ImapError(f"IMAP {step}: {type(exc).__name__}: {exc}"[:300]) from None

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except _ERRORS:
            with contextlib.suppress(*_ERRORS):
                client.shutdown()

    def _connect(self) -> IMAPClient:
        if self._client is not None:
            return self._client
        context = self._context()
        client = IMAPClient(
            self.host, self.port, ssl=self.security == "tls", ssl_context=context,
            timeout=self.timeout,
        )  # fmt: skip
        try:
            if self.security == "starttls":
                client.starttls(context)
            client.login(self.username, self._password)
            client.select_folder(self.folder)
        except BaseException:
            client.shutdown()
            raise
        self._client = client
        return client

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self._ca_file) if self._ca_file else None)
        if not self._validate:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _delete(client: IMAPClient, uid: int) -> None:
    """Expunge this one message: with UIDPLUS only it, not whatever else the admin marked."""
    client.delete_messages([uid])
    if client.has_capability("UIDPLUS"):
        client.expunge([uid])
    else:
        client.expunge()
