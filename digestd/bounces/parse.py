"""A message from the bounce mailbox → what it reports: RFC 3464 delivery status, RFC 5965 abuse
feedback, or neither.

Only the standard machine-readable parts are trusted (`message/delivery-status`,
`message/feedback-report`): the human text around them differs per MTA and language. The VERP
tokens are looked for in the headers of the report and of the returned message (its Return-Path
carries our envelope sender); they are verified later, against the store. Nothing here raises
on hostile input: a message too large, malformed or of another kind is `ignored`, with a reason.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.message
import email.policy
import email.utils
import quopri
import re
from dataclasses import dataclass
from typing import Literal

from digestd.bounces.verp import verp_tokens

__all__ = ["MAX_BYTES", "Report", "ReportKind", "parse_report"]

ReportKind = Literal["permanent", "temporary", "complaint", "ignored"]
MAX_BYTES = 2 * 1024 * 1024  # a DSN carries our message back (~40 KB); more is not a bounce of ours
_MAX_PARTS = 200  # a MIME tree wider or deeper than this is hostile, not a report
_STATUS = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_ENCODED = ("base64", "quoted-printable")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class Report:
    """What one message reports. `tokens`: VERP tokens found, not yet verified."""

    kind: ReportKind
    tokens: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()  # Final-Recipient / Original-Rcpt-To addresses
    status: str | None = None  # the RFC 3463 code, e.g. "5.1.1"
    detail: str = ""  # Diagnostic-Code or Feedback-Type, or why the message was ignored


def parse_report(data: bytes, *, verp: str | None, max_bytes: int = MAX_BYTES) -> Report:
    """Classify one raw message; `verp` is the configured base address (tokens are sought for it)."""
    if len(data) > max_bytes:
        return Report("ignored", detail=f"too large ({len(data)} bytes)")
    try:
        message = email.message_from_bytes(data, policy=email.policy.compat32)
        parts = _walk(message)
    except (ValueError, TypeError, LookupError, RecursionError, AssertionError) as exc:
        return Report("ignored", detail=f"unreadable MIME: {type(exc).__name__}")
    if parts is None:
        return Report("ignored", detail="MIME tree too large")
    tokens = tuple(verp_tokens(verp, _header_text(parts))) if verp else ()
    report_type = email.utils.collapse_rfc2231_value(
        message.get_param("report-type", "", header="content-type")
    )
    kind = message.get_content_type()
    if kind == "multipart/report" and report_type.lower() == "delivery-status":
        return _delivery_status(parts, tokens)
    if kind == "multipart/report" and report_type.lower() == "feedback-report":
        return _feedback(parts, tokens)
    return Report("ignored", tokens, detail=f"not a report ({_clean(kind)})")


def _walk(message: email.message.Message) -> list[email.message.Message] | None:
    """Every part of the tree, depth first; None when it has more than `_MAX_PARTS`."""
    found: list[email.message.Message] = []
    stack = [message]
    while stack:
        part = stack.pop()
        found.append(part)
        if len(found) > _MAX_PARTS:
            return None
        payload = part.get_payload()
        if isinstance(payload, list) and not _is_fields(part):
            stack.extend(reversed([p for p in payload if isinstance(p, email.message.Message)]))
    return found


def _is_fields(part: email.message.Message) -> bool:
    return part.get_content_type() in ("message/delivery-status", "message/feedback-report")


def _header_text(parts: list[email.message.Message]) -> str:
    """The header lines of every part (the report's and the returned message's) as one text,
    plus any text/rfc822-headers body: where our VERP address shows up."""
    texts: list[str] = []
    for part in parts:
        texts.extend(f"{name}: {value}" for name, value in part.items())
        if part.get_content_type() == "text/rfc822-headers":
            encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
            text = _text(part)
            texts.append(_decode(text, encoding) if encoding in _ENCODED else text)
    return "\n".join(str(t) for t in texts)


def _field_blocks(part: email.message.Message) -> list[email.message.Message]:
    """The groups of fields in a delivery-status or feedback-report part, however it was sent.

    The email package splits a delivery-status into one `Message` per group, even when it is
    base64 or quoted-printable (as some webmails send it): then the text is decoded and split here.
    """
    payload = part.get_payload()
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if isinstance(payload, list) and encoding not in _ENCODED:
        return [p for p in payload if isinstance(p, email.message.Message)]
    text = _text(part)
    if encoding in _ENCODED:
        text = _decode(text, encoding)
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [email.message_from_string(block.strip() + "\n") for block in blocks if block.strip()]


def _decode(text: str, encoding: str) -> str:
    raw = text.encode("ascii", errors="ignore")
    try:
        data = base64.b64decode(raw) if encoding == "base64" else quopri.decodestring(raw)
    except (ValueError, binascii.Error):
        return ""
    return data.decode("utf-8", errors="replace")


def _text(part: email.message.Message) -> str:
    payload = part.get_payload()
    if isinstance(payload, list):
        return "\n\n".join(p.as_string() for p in payload if isinstance(p, email.message.Message))
    return str(payload)


def _delivery_status(parts: list[email.message.Message], tokens: tuple[str, ...]) -> Report:
    section = next((p for p in parts if p.get_content_type() == "message/delivery-status"), None)
    if section is None:
        return Report("ignored", tokens, detail="delivery-status report without its status part")
    worst: tuple[int, str, str, str] | None = None  # (rank, status, recipient, diagnostic)
    recipients: list[str] = []
    for block in _field_blocks(section)[1:] or _field_blocks(section):
        status = _STATUS.match(str(block.get("status", "")))
        if status is None:
            continue
        action = str(block.get("action", "failed")).strip().lower()
        recipient = _address(block.get("final-recipient") or block.get("original-recipient"))
        if recipient:
            recipients.append(recipient)
        code = ".".join(status.groups())
        rank = _rank(status.group(1), action)
        diagnostic = _clean(str(block.get("diagnostic-code", "")))
        if worst is None or rank > worst[0]:
            worst = (rank, code, recipient, diagnostic)
    if worst is None or worst[0] == 0:
        return Report("ignored", tokens, tuple(recipients), detail="no failed or delayed recipient")
    rank, code, _, diagnostic = worst
    kind: ReportKind = "permanent" if rank == 2 else "temporary"
    return Report(kind, tokens, tuple(recipients), code, diagnostic or f"status {code}")


def _rank(klass: str, action: str) -> int:
    """2: a permanent failure; 1: a delay or a temporary failure; 0: delivered, relayed, expanded."""
    if action in ("delivered", "relayed", "expanded") or klass == "2":
        return 0
    return 2 if klass == "5" and action == "failed" else 1


def _feedback(parts: list[email.message.Message], tokens: tuple[str, ...]) -> Report:
    section = next((p for p in parts if p.get_content_type() == "message/feedback-report"), None)
    if section is None:
        return Report("ignored", tokens, detail="feedback report without its report part")
    fields = _field_blocks(section)
    first = fields[0] if fields else None
    feedback = _clean(str(first.get("feedback-type", "") if first else "")).lower()
    if feedback != "abuse":
        # RFC 5965 also has fraud, virus, not-spam…: none of them is the reader's complaint.
        return Report("ignored", tokens, detail=f"feedback type {feedback or 'missing'}")
    rcpt = _address(first.get("original-rcpt-to") if first else None)
    return Report("complaint", tokens, (rcpt,) if rcpt else (), None, "feedback type abuse")


def _address(value: object) -> str:
    """`rfc822; someone@example.org` → `someone@example.org` (other address types → "")."""
    if value is None:
        return ""
    kind, sep, address = str(value).partition(";")
    if not sep:
        address, kind = kind, "rfc822"
    if kind.strip().lower() != "rfc822":
        return ""
    return _clean(address).strip("<> ")[:320]


def _clean(value: str) -> str:
    """One line, no control characters, bounded: it goes into the store and `digestd status`."""
    return " ".join(_CONTROL.sub(" ", value).split())[:300]
