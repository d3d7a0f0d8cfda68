"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, a free port, recording and scripted faults.

    server = SMTPTestServer(); server.start()
    server.handler.rcpt_replies["bad@x.test"] = "550 5.1.1 no such user"
    ... send to ("127.0.0.1", server.port) ...
    server.received[0].message["Subject"]; server.stop()

Faults: per-recipient RCPT replies, a DATA reply override, dropping the connection after the
message was received (the client never sees a reply; all or the first N times), stalling before
the MAIL or the DATA reply, and "421 + hang up" on MAIL after N messages on a connection.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, cast

from aiosmtpd.controller import Controller

__all__ = ["Received", "RecordingHandler", "SMTPTestServer"]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    message: EmailMessage


@dataclass
class RecordingHandler:
    """aiosmtpd handler: records what it accepts; the public attributes script its faults."""

    rcpt_replies: dict[str, str] = field(default_factory=dict)
    pipelining: bool = False  # advertise PIPELINING (RFC 2920) as Postfix does
    data_reply: str | None = None  # e.g. "421 4.3.0 closing" or "554 5.7.1 rejected"
    drop_after_data: bool = False  # record the message, then close without replying
    stall_data: float = 0.0  # seconds to wait before replying to the end of DATA
    stall_mail: float = 0.0  # seconds to wait before replying to MAIL FROM
    # After this many messages on one connection, the next MAIL gets 421 and the server hangs up.
    hangup_after: int | None = None
    drops_left: int | None = None  # with drop_after_data: drop only this many times
    _per_session: dict[int, int] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    sessions: list[object] = field(default_factory=list)  # one per connection that said EHLO
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def connections(self) -> int:
        return len(self.sessions)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if not any(s is session for s in self.sessions):
            self.sessions.append(session)
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.stall_mail:
            await asyncio.sleep(self.stall_mail)
        done = self._per_session.get(id(session), 0)
        if self.hangup_after is not None and done >= self.hangup_after:
            asyncio.get_running_loop().call_soon(server.transport.close)  # after the reply
            return "421 4.3.2 Service shutting down, closing transmission channel"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply is not None and not self.data_reply.startswith("2"):
            return self.data_reply
        self._record(envelope)
        self._per_session[id(session)] = self._per_session.get(id(session), 0) + 1
        if self.drop_after_data and self.drops_left != 0:
            if self.drops_left is not None:
                self.drops_left -= 1
            server.transport.close()  # the message is queued, the reply is lost
            return "250 2.0.0 never seen"
        if self.stall_data:
            await asyncio.sleep(self.stall_data)
        return self.data_reply or f"250 2.0.0 Ok: queued as Q{next(self._ids)}"

    def _record(self, envelope: Any) -> None:
        content = cast(bytes, envelope.original_content or envelope.content)
        message = email.message_from_bytes(content, policy=email.policy.default)
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), content, message)
        )


class _FreePortController(Controller):
    """Binds port 0 and learns the real port before aiosmtpd's start-up probe connects to it."""

    def _trigger_server(self) -> None:
        server = cast(asyncio.Server, self.server)
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class SMTPTestServer:
    def __init__(self, *, pipelining: bool = False, **smtp_kwargs: Any) -> None:
        self.handler = RecordingHandler(pipelining=pipelining)
        self.host = "127.0.0.1"
        self._controller = _FreePortController(
            self.handler, hostname=self.host, port=0, **smtp_kwargs
        )

    @property
    def port(self) -> int:
        return int(self._controller.port)

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def start(self) -> SMTPTestServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()
