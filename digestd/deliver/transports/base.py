"""The `Mailer` protocol and the one rule that turns an SMTP reply code into an `Outcome` status."""

from __future__ import annotations

from typing import Literal, Protocol

from digestd.core.model import Outcome, OutcomeStatus

__all__ = ["Mailer", "Phase", "classify_reply", "is_refusal"]

Phase = Literal["connect", "mail", "rcpt", "data", "end_of_data"]


class Mailer(Protocol):
    """Sends one message to one recipient; reports what happened instead of raising.

    `send` never raises for an SMTP reply or a network error: it returns `Outcome("sent" |
    "transient" | "permanent" | "in_doubt", code, reply)`. "in_doubt" means the relay may have
    queued the message (the connection failed after the final "." went out). `canonical`: the
    builder checked that `data` needs no dot-stuffing (`Spliced.canonical`), so it goes as it is.
    """

    async def send(
        self, sender: str, recipient: str, data: bytes, *, canonical: bool = False
    ) -> Outcome: ...

    async def aclose(self) -> None: ...


def classify_reply(code: int, phase: Phase) -> OutcomeStatus:
    """What a reply that ends a transaction means: only 250 after the body is "sent".

    4xx is transient, 5xx permanent; 552 on RCPT is transient (RFC 5321 §4.5.3.1.10). Failures
    while connecting (greeting, EHLO, STARTTLS, AUTH) are the relay's or the operator's problem,
    never the recipient's, so they are transient whatever the code. Any other code (a 2xx or 3xx
    where another go-ahead was due, a malformed one) is a protocol error: transient before the
    final "." (nothing was handed over), `in_doubt` after it (the relay may have the message).
    """
    if phase == "end_of_data" and code == 250:
        return "sent"
    if phase == "connect" or 400 <= code < 500 or (phase == "rcpt" and code == 552):
        return "transient"
    if 500 <= code < 600:
        return "permanent"
    return "in_doubt" if phase == "end_of_data" else "transient"


def is_refusal(code: int) -> bool:
    """A 4xx or 5xx: the relay understood and said no, so the connection is still in step."""
    return 400 <= code < 600
