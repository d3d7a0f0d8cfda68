"""A socket-level SMTP relay for tests that replies from a script, byte for byte.

aiosmtpd is a correct server: it will not answer DATA with 250, send garbage after the final ".",
or a 10 MB reply line. This one speaks just enough SMTP for digestd (EHLO, MAIL, RCPT, DATA, RSET,
NOOP, QUIT), on 127.0.0.1 and a free port, in a thread of its own, with or without PIPELINING,
and lets a test replace the reply at any step for chosen recipients and attempts:

    relay = ScriptedRelay(pipelining=True).start()
    relay.fail("r0@example.org", Fault("data", b"250 2.0.0 ok, no body needed\\r\\n"))
    relay.fail("r1@example.org", Fault("end", b"\\x00garbage\\r\\n"))  # after the final "."
    ... digestd sends ...
    relay.message_ids()["r1@example.org"]; relay.stop()

A recipient's faults are used one per attempt (transaction), in order; then the relay behaves. A
message counts as received once its final "." arrived, unless the scripted reply to it is a 4xx or
5xx refusal: after a garbage reply the relay may well have queued it, which is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["TEN_MB_LINE", "Fault", "ScriptedRelay"]

Step = Literal["mail", "rcpt", "data", "end"]

# A reply line of 10 MB without an end: what a broken or hostile relay may stream at any step.
TEN_MB_LINE = b"250 " + b"x" * (10 * 1024 * 1024)


@dataclass(frozen=True)
class Fault:
    """At `step`, write `reply` (raw bytes) instead of the normal reply; then hang up if `close`.

    `kept` (for "end"): whether the relay queued the message whatever it answered; by default
    unless the reply starts with a 4 or 5.
    """

    step: Step
    reply: bytes
    close: bool = False
    kept: bool | None = None

    def keeps(self) -> bool:
        return self.reply[:1] not in (b"4", b"5") if self.kept is None else self.kept


@dataclass
class Delivery:
    recipient: str
    content: bytes

    @property
    def message_id(self) -> str:
        parsed = email.message_from_bytes(self.content, policy=email.policy.default)
        return str(parsed["Message-ID"])


@dataclass
class _Transaction:
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    fault: Fault | None = None


class ScriptedRelay:
    """The relay; `faults`, `mail_faults` and `delivered` may be used from the test's thread."""

    def __init__(self, *, pipelining: bool = False) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.pipelining = pipelining
        self.faults: dict[str, deque[Fault]] = {}
        self.mail_faults: deque[Fault] = deque()  # for MAIL, whose recipient is not known yet
        self.delivered: list[Delivery] = []
        self.attempts: dict[str, int] = {}  # RCPT commands per recipient
        self.connections = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> ScriptedRelay:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = started.result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def fail(self, recipient: str, *faults: Fault) -> None:
        """Script `recipient`'s next attempts, one fault each."""
        with self._lock:
            self.faults.setdefault(recipient, deque()).extend(faults)

    def message_ids(self) -> dict[str, list[str]]:
        """Message-IDs received per recipient, in order."""
        with self._lock:
            got = list(self.delivered)
        ids: dict[str, list[str]] = {}
        for delivery in got:
            ids.setdefault(delivery.recipient, []).append(delivery.message_id)
        return ids

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._session, self.host, 0, limit=1 << 20)
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            writer.write(b"220 scripted.test ESMTP\r\n")
            await _Session(self, reader, writer).run()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the client hung up, as it should after a reply it cannot read
        finally:
            writer.close()

    def _next_fault(self, recipient: str) -> Fault | None:
        with self._lock:
            self.attempts[recipient] = self.attempts.get(recipient, 0) + 1
            queue = self.faults.get(recipient)
            return queue.popleft() if queue else None

    def _next_mail_fault(self) -> Fault | None:
        with self._lock:
            return self.mail_faults.popleft() if self.mail_faults else None

    def _deliver(self, recipients: list[str], content: bytes) -> None:
        with self._lock:
            self.delivered.extend(Delivery(r, content) for r in recipients)


class _Session:
    """One connection: reads command lines, replies as scripted."""

    def __init__(
        self, relay: ScriptedRelay, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.relay = relay
        self.reader = reader
        self.writer = writer
        self.tx = _Transaction()

    async def run(self) -> None:
        while line := await self.reader.readline():
            verb = line[:4].upper()
            if verb == b"QUIT":
                await self.reply(b"221 2.0.0 bye\r\n")
                return
            if not await self.command(verb, line[4:].strip()):
                return

    async def command(self, verb: bytes, arg: bytes) -> bool:
        """Replies to one command; False once the connection is to be closed."""
        if verb in (b"EHLO", b"HELO"):
            self.tx = _Transaction()
            extra = b"250-PIPELINING\r\n" if self.relay.pipelining else b""
            return await self.reply(b"250-scripted.test\r\n" + extra + b"250 8BITMIME\r\n")
        if verb in (b"RSET", b"NOOP"):
            self.tx = _Transaction()
            return await self.reply(b"250 2.0.0 ok\r\n")
        if verb == b"MAIL":
            self.tx = _Transaction(sender=_address(arg))
            return await self.scripted(self.relay._next_mail_fault(), "mail", b"250 2.1.0 ok\r\n")
        if verb == b"RCPT":
            recipient = _address(arg)
            fault = self.tx.fault = self.tx.fault or self.relay._next_fault(recipient)
            if fault is None or fault.step != "rcpt" or fault.reply.startswith(b"25"):
                self.tx.recipients.append(recipient)
            return await self.scripted(fault, "rcpt", b"250 2.1.5 ok\r\n")
        if verb == b"DATA":
            return await self.data()
        return await self.reply(b"502 5.5.2 command not recognized\r\n")

    async def data(self) -> bool:
        fault = self.tx.fault
        if not self.tx.recipients:
            return await self.reply(b"554 5.5.1 no valid recipients\r\n")
        if fault is not None and fault.step == "data":
            if not await self.reply(fault.reply) or fault.close:
                return False
            if not fault.reply.startswith(b"354"):
                return True  # no body expected: whatever comes next is read as commands
        elif not await self.reply(b"354 end with <CRLF>.<CRLF>\r\n"):
            return False
        content = await self._body()
        self.tx, tx = _Transaction(), self.tx
        if fault is None or fault.step != "end":
            self.relay._deliver(tx.recipients, content)
            return await self.reply(b"250 2.0.0 Ok: queued\r\n")
        if fault.keeps():
            self.relay._deliver(tx.recipients, content)
        return await self.reply(fault.reply) and not fault.close

    async def _body(self) -> bytes:
        lines: list[bytes] = []
        while (line := await self.reader.readline()) != b".\r\n":
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            lines.append(line[1:] if line.startswith(b".") else line)
        return b"".join(lines)

    async def scripted(self, fault: Fault | None, step: Step, normal: bytes) -> bool:
        if fault is None or fault.step != step:
            return await self.reply(normal)
        return await self.reply(fault.reply) and not fault.close

    async def reply(self, data: bytes) -> bool:
        self.writer.write(data)
        await self.writer.drain()
        return True


def _address(arg: bytes) -> str:
    """The address in "FROM:<a@b> SIZE=1" or "TO:<a@b>"."""
    text = arg.decode("utf-8", "replace")
    start, end = text.find("<"), text.find(">")
    return text[start + 1 : end] if 0 <= start < end else text.partition(":")[2].strip()
