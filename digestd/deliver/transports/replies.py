"""Reading several SMTP replies to one write (RFC 2920 PIPELINING) on an aiosmtplib connection.

aiosmtplib parses one reply per command it writes and drops bytes that arrive while no command of
its own is pending, so a pipelined "MAIL, RCPT, DATA" would lose the second and third replies.
For the length of one message exchange this reader takes the transport's protocol slot
(`transport.set_protocol`), queues every complete reply in order, and hands the slot back to
aiosmtplib's protocol afterwards; connection loss is passed on to it, so the client's own state
(`is_connected`) stays true. Connecting, TLS, AUTH, RSET and QUIT remain aiosmtplib's.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque

from aiosmtplib import SMTPResponseException, SMTPServerDisconnected
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.response import SMTPResponse

__all__ = ["ReplyReader"]

_MAX_LINE = 8192  # as aiosmtplib: a longer reply line is a broken or hostile server
_MAX_REPLY_LINES = 1000  # a multiline reply longer than this is no reply
_REPLY_LINE = re.compile(rb"([2-5][0-9]{2})(?:[ -]|\r?\n)")


class ReplyReader(asyncio.Protocol):
    """Takes over `owner`'s transport until `detach`; `read` returns the replies in order."""

    def __init__(self, owner: SMTPProtocol) -> None:
        transport = owner.transport
        if transport is None or transport.is_closing():
            raise SMTPServerDisconnected("Connection lost")
        self._owner = owner
        self._transport: asyncio.WriteTransport = transport  # type: ignore[assignment]
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._code: int | None = None  # of the multiline reply being read
        self._replies: deque[SMTPResponse] = deque()
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._transport.set_protocol(self)

    def write(self, data: bytes) -> None:
        if self._error is not None or self._transport.is_closing():
            raise SMTPServerDisconnected("Connection lost")
        self._transport.write(data)

    async def read(self, timeout: float) -> SMTPResponse:
        """The next reply; TimeoutError, or the connection's error, when none comes."""
        async with asyncio.timeout(timeout):
            while not self._replies:
                if self._error is not None:
                    raise self._error
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
        return self._replies.popleft()

    def pending(self) -> bool:
        """Whether bytes or replies arrived that no `read` has asked for yet."""
        return bool(self._replies or self._lines or self._buffer)

    def detach(self) -> None:
        """Give the transport back to aiosmtplib (a no-op once the connection is gone)."""
        if self._transport.get_protocol() is self and not self._transport.is_closing():
            self._transport.set_protocol(self._owner)

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        try:
            self._parse()
        except SMTPResponseException as exc:
            self._fail(exc)
            self._transport.close()  # out of step with the server: never reuse this connection
        self._wake()

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SMTPServerDisconnected("Connection lost"))
        self._owner.connection_lost(exc)  # aiosmtplib's client learns the connection is gone

    def _parse(self) -> None:
        start = 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            line = bytes(self._buffer[start : end + 1])
            start = end + 1
            if len(line) > _MAX_LINE:
                raise SMTPResponseException(-1, "Response too long")
            code = _code(line, self._code)
            self._lines.append(line[4:].strip(b" \t\r\n"))
            self._code = code
            if line[3:4] != b"-":
                message = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
                self._replies.append(SMTPResponse(code, message))
                self._lines, self._code = [], None
        del self._buffer[:start]
        if len(self._buffer) > _MAX_LINE or len(self._lines) > _MAX_REPLY_LINES:
            raise SMTPResponseException(-1, "Response too long")

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _code(line: bytes, previous: int | None) -> int:
    """The reply code of `line`: three digits, then a space, "-" or the line's end (RFC 5321
    §4.2), and the same on every line of a multiline reply; anything else is no reply at all.

    Taken leniently (as `int(line[:3])` would: "+25", "2_5", "2500 ok"), a garbled reply to the
    final "." could read as a 250.
    """
    found = _REPLY_LINE.match(line)
    if found is None or (previous is not None and int(found[1]) != previous):
        raise SMTPResponseException(-1, "Malformed SMTP response line")
    return int(found[1])
