"""The pipelined exchange (RFC 2920) against a real scripted socket server: writes, replies, faults.

aiosmtpd answers in step, one reply per read; this server answers as a relay under load may: all
replies of a pipelined group in one write, multi-line replies, replies that break the protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiosmtplib.email import quote_address
from hypothesis import given, settings
from hypothesis import strategies as st

from digestd.core.addresses import check_address
from digestd.deliver.transports.smtp import SmtpMailer, _path

BODY = b"Subject: hi\r\n\r\n.leading dot\r\nend\r\n"

Script = Callable[[list[bytes]], bytes | None]  # commands of one read -> reply bytes, None: close


@dataclass
class RawServer:
    """Answers EHLO with PIPELINING; `script` answers each read of commands (or the body)."""

    script: Script
    reads: list[list[bytes]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 raw ESMTP\r\n")
        try:
            while line := await reader.readline():
                if line.upper().startswith(b"EHLO"):
                    writer.write(b"250-raw\r\n250-SIZE 100000\r\n250 PIPELINING\r\n")
                    continue
                if line.upper().startswith((b"QUIT", b"RSET")):
                    writer.write(b"221 bye\r\n" if line.startswith(b"QUIT") else b"250 ok\r\n")
                    continue
                commands = [line, *await _rest(reader, line)]
                self.reads.append(commands)
                reply = self.script(commands)
                if reply is None:
                    writer.close()
                    return
                writer.write(reply)
                if reply.rstrip().endswith(b"354 go ahead"):
                    self.bodies.append(await _body(reader))
                    writer.write(b"250-queued\r\n250 as Q1\r\n")
                await writer.drain()
        finally:
            writer.close()


async def _body(reader: asyncio.StreamReader) -> bytes:
    lines = [await reader.readline()]
    while lines[-1] != b".\r\n":
        lines.append(await reader.readline())
    return b"".join(lines)


async def _rest(reader: asyncio.StreamReader, first: bytes) -> list[bytes]:
    """The other commands of a pipelined group, read without waiting for more than is there."""
    rest: list[bytes] = []
    if not first.upper().startswith(b"MAIL"):
        return rest
    while len(rest) < 2:
        rest.append(await asyncio.wait_for(reader.readline(), 1))
    return rest


async def _listen(state: RawServer) -> asyncio.Server:
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    return server


def _mailer(state: RawServer) -> SmtpMailer:
    return SmtpMailer("127.0.0.1", state.port, security="none", timeout=2, data_timeout=2)


def _accept_all(commands: list[bytes]) -> bytes:
    # All three replies in one write, the first a multi-line one.
    return b"250-sender\r\n250 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"


async def test_envelope_goes_in_one_write_and_replies_come_in_one() -> None:
    state = RawServer(_accept_all)
    server = await _listen(state)
    mailer = _mailer(state)
    try:
        first = await mailer.send("a@example.org", "b@example.org", BODY)
        second = await mailer.send("a@example.org", "c@example.org", BODY)
    finally:
        await mailer.aclose()
        server.close()
    assert (first.status, first.code, first.reply) == ("sent", 250, "queued as Q1")
    assert second.status == "sent"
    assert state.connections == 1
    assert state.reads[0] == [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.org>\r\n",
                              b"DATA\r\n"]  # fmt: skip
    assert state.bodies[0] == b"Subject: hi\r\n\r\n..leading dot\r\nend\r\n.\r\n"


async def test_a_server_that_opens_data_after_a_refused_recipient_is_put_back_in_step() -> None:
    def script(commands: list[bytes]) -> bytes:
        if b"bad@" in commands[1]:
            return b"250 ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n"
        return _accept_all(commands)

    state = RawServer(script)
    server = await _listen(state)
    mailer = _mailer(state)
    try:
        refused = await mailer.send("a@example.org", "bad@example.org", BODY)
        after = await mailer.send("a@example.org", "b@example.org", BODY)
    finally:
        await mailer.aclose()
        server.close()
    assert (refused.status, refused.code) == ("permanent", 550)
    assert after.status == "sent"
    assert state.bodies[0] == b".\r\n"  # the empty message that closed the opened DATA


async def test_421_then_hang_up_keeps_the_servers_reply() -> None:
    state = RawServer(lambda commands: b"421 4.3.2 closing\r\n")
    server = await _listen(state)
    mailer = _mailer(state)
    try:
        outcome = await mailer.send("a@example.org", "b@example.org", BODY)
    finally:
        await mailer.aclose()
        server.close()
    assert (outcome.status, outcome.code) == ("transient", 421)
    assert state.bodies == []


async def test_a_malformed_reply_is_transient_and_the_connection_is_not_reused() -> None:
    state = RawServer(_accept_all)
    state.script = lambda commands: b"garbage\r\n" if len(state.reads) == 1 else _accept_all([])
    server = await _listen(state)
    mailer = _mailer(state)
    try:
        broken = await mailer.send("a@example.org", "b@example.org", BODY)
        after = await mailer.send("a@example.org", "b@example.org", BODY)
    finally:
        await mailer.aclose()
        server.close()
    assert broken.status == "transient"
    assert after.status == "sent"
    assert state.connections == 2


async def test_a_dead_reused_connection_is_retried_on_a_fresh_one() -> None:
    state = RawServer(_accept_all)
    state.script = lambda commands: None if len(state.reads) == 2 else _accept_all([])
    server = await _listen(state)
    mailer = _mailer(state)
    try:
        first = await mailer.send("a@example.org", "b@example.org", BODY)
        second = await mailer.send("a@example.org", "b@example.org", BODY)
    finally:
        await mailer.aclose()
        server.close()
    assert (first.status, second.status) == ("sent", "sent")
    assert state.connections == 2
    assert len(state.bodies) == 2


async def test_no_reply_to_the_end_of_data_is_in_doubt() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw\r\n")
        await reader.readline()
        writer.write(b"250-raw\r\n250 PIPELINING\r\n")
        for _ in range(3):
            await reader.readline()
        writer.write(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
        await reader.readuntil(b"\r\n.\r\n")
        writer.close()  # queued, but the reply is lost

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mailer = SmtpMailer("127.0.0.1", port, security="none", timeout=2, data_timeout=2)
    try:
        outcome = await mailer.send("a@example.org", "b@example.org", BODY)
    finally:
        await mailer.aclose()
        server.close()
    assert outcome.status == "in_doubt"


_LOCAL = "abcXYZ019!#$%&'*+/=?^_`{|}~.-"


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet=_LOCAL, min_size=1, max_size=12),
    st.sampled_from(["example.org", "a.b-c.example", "x"]),
    st.sampled_from(["", " ", "\t"]),
)
def test_envelope_paths_are_what_aiosmtplib_would_write(local: str, domain: str, pad: str) -> None:
    address = f"{pad}{local}@{domain}{pad}"
    try:
        check_address(address)
    except ValueError:
        return  # `send` refuses it before any envelope is written
    assert _path(address) == quote_address(address).encode("ascii")
