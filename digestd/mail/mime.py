"""`Rendered` + addresses + Message-ID → RFC 5322 bytes, assembled here byte by byte.

The stdlib generator is not used for assembly: on Python 3.11.7 `BytesGenerator` turns the encoded
word `=?UTF-8?Q?=0A?=` in a Subject into a real line break (CVE-2024-6923, delivery.md §1.6), and a
paper title reaches the Subject. Every header value here is cleaned of controls, then written either
as plain folded ASCII or as `=?utf-8?b?…?=` words, so no input can start a header line of its own.
The output is deterministic (same inputs, same bytes), so a retry re-sends what was queued.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from email.utils import format_datetime

from digestd.core.addresses import check_address, parse_mailbox
from digestd.core.model import Rendered
from digestd.core.text import clean_header
from digestd.mail.parts import Part, Personal, Spliced, fill, splice

__all__ = [
    "build_message",
    "encode_words",
    "fold_header",
    "format_address",
]

CRLF = "\r\n"
MAX_LINE = 76  # RFC 2047 §2 encoded-word lines; RFC 5322 recommends 78, requires ≤ 998
HARD_LIMIT = 998

_MESSAGE_ID = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")  # printable ASCII without < > and spaces
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
# A display name that can go out as a quoted-string as is: printable ASCII, no `=?`.
_PLAIN_NAME = re.compile(r"[ !#-\[\]-~]*")
_OWN_HEADERS = frozenset(
    h.lower()
    for h in (
        "From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "MIME-Version",
        "Content-Type", "Content-Transfer-Encoding", "Sender", "Reply-To",
    )
)  # fmt: skip
_SAFE_HEADER = re.compile(r"[ -~]*")


def build_message(
    rendered: Rendered | Personal,
    *,
    sender: str,
    to: str,
    to_name: str | None,
    message_id: str,
    date: datetime,
    headers: Mapping[str, str] | None = None,
) -> Spliced:
    """The whole message: headers, then multipart/alternative with text/plain first, HTML last;
    `.whole()` gives its bytes. With a `Personal` template, the long runs that every message of
    its shape shares come as `Part`s, to be stored once.

    `sender` is "addr" or "Name <addr>". Extra `headers` (List-Id, List-Unsubscribe…) follow the
    standard ones; they may not replace them.

    :raises ValueError: an address or the Message-ID is malformed, a header name is invalid or
        reserved, or `date` is naive.
    """
    sender_name, sender_addr = parse_mailbox(sender)
    msgid = _check_message_id(message_id)
    if date.tzinfo is None:
        raise ValueError("date must be timezone-aware")
    boundary = "=_digestd_" + hashlib.sha256(msgid.encode("ascii")).hexdigest()[:32]
    lines = [
        fold_header("From", format_address(sender_name, sender_addr)),
        fold_header("To", format_address(to_name, check_address(to))),
        _header("Subject", rendered.subject, 250),
        f"Date: {format_datetime(date)}",
        f"Message-ID: {msgid}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative;{CRLF} boundary="{boundary}"',
    ]
    lines += [_extra_header(name, value) for name, value in (headers or {}).items()]
    head = CRLF.join(lines) + CRLF + CRLF
    fills = rendered.fills if isinstance(rendered, Personal) else ()
    text, text_ok = _part(boundary, "text/plain", rendered.text, fills)
    html, html_ok = _part(boundary, "text/html", rendered.html, fills)
    pieces = [head.encode("ascii"), *text, *html, f"--{boundary}--{CRLF}".encode("ascii")]
    # Every line is ours and ends in CRLF; only a quoted-printable line can start with ".".
    return splice(pieces, canonical=text_ok and html_ok)


def format_address(name: str | None, address: str) -> str:
    """'"Name" <addr>', the name as encoded words when it is not plain printable ASCII."""
    clean = clean_header(name or "", limit=100)
    if not clean:
        return address
    if _PLAIN_NAME.fullmatch(clean) and "=?" not in clean:
        return f'"{clean}" <{address}>'
    return f"{encode_words(clean)} <{address}>"


@functools.lru_cache(maxsize=256)  # every subscriber's Subject is the same for the same papers
def encode_words(text: str) -> str:
    """RFC 2047 `=?utf-8?b?…?=` words of at most 75 characters, whole characters each, space-joined.

    `fold_header` breaks the line between words; whitespace between encoded words is dropped when
    they are decoded, so the text comes back exactly.
    """
    words: list[str] = []
    chunk = b""
    for char in text:
        encoded = char.encode("utf-8", "replace")
        # 39 bytes → 52 base64 characters → a 64-character word: "Subject: " + word fits in 76.
        if len(chunk) + len(encoded) > 39:
            words.append(_b_word(chunk))
            chunk = b""
        chunk += encoded
    if chunk or not words:
        words.append(_b_word(chunk))
    return " ".join(words)


def _b_word(data: bytes) -> str:
    return "=?utf-8?b?" + base64.b64encode(data).decode("ascii") + "?="


def fold_header(name: str, value: str) -> str:
    """`Name: value`, folded at spaces (CRLF + space) to keep lines within 76 characters.

    :raises ValueError: when one unbreakable piece would make a line longer than 998 characters.
    """
    words = value.split(" ")
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > MAX_LINE and line.strip() and not line.endswith(":"):
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    if any(len(x) > HARD_LIMIT for x in lines):
        raise ValueError(f"header {name} has a piece longer than {HARD_LIMIT} characters")
    return CRLF.join(lines)


def _value(text: str, *, limit: int) -> str:
    """Controls and line breaks gone; encoded words unless the text is plain ASCII without `=?`."""
    clean = clean_header(text, limit=limit)
    if _SAFE_HEADER.fullmatch(clean) and "=?" not in clean:
        return clean
    return encode_words(clean)


def _extra_header(name: str, value: str) -> str:
    if not _HEADER_NAME.fullmatch(name) or name.lower() in _OWN_HEADERS:
        raise ValueError(f"header name {name!r} is invalid or reserved")
    return _header(name, value, 900)


@functools.lru_cache(maxsize=256)  # a run's Subject, List-Id…: the same line for every message
def _header(name: str, value: str, limit: int) -> str:
    return fold_header(name, _value(value, limit=limit))


def _check_message_id(message_id: str) -> str:
    msgid = message_id.strip()
    if not msgid.startswith("<"):
        msgid = f"<{msgid}>"
    if not _MESSAGE_ID.fullmatch(msgid) or len(msgid) > 250:
        raise ValueError(f"not a valid Message-ID: {message_id!r}")
    return msgid


def _part(
    boundary: str, content_type: str, content: str, fills: tuple[tuple[str, str], ...]
) -> tuple[list[bytes | Part], bool]:
    """The MIME part's pieces, and whether no line of it starts with "."; `content` is a template
    if `fills` are given."""
    head = (
        f"--{boundary}{CRLF}"
        f"Content-Type: {content_type}; charset=utf-8{CRLF}"
        f"Content-Transfer-Encoding: quoted-printable{CRLF}{CRLF}"
    )
    pieces: list[bytes | Part] = [head.encode("ascii")]
    if fills and not any("\n" in v or "\r" in v for _, v in fills):
        undotted = True
        for run in _template_runs(content, tuple(token for token, _ in fills)):
            encoded, ok = _qp_block(fill(run, fills)) if isinstance(run, str) else run
            pieces.append(encoded)
            undotted = undotted and ok
    else:
        body, undotted = _quoted_printable_checked(fill(content, fills))
        pieces.append(body)
    pieces.append(CRLF.encode("ascii"))
    return pieces, undotted


SHARE_MIN = 1024  # a shorter run is copied into each message: a shared one costs a row and a join


@functools.lru_cache(maxsize=64)
def _template_runs(template: str, tokens: tuple[str, ...]) -> list[tuple[bytes | Part, bool] | str]:
    """A template's quoted-printable blocks, encoded once, consecutive ones joined into one run (a
    shared `Part` when long); a block holding a placeholder stays text, to be filled and encoded
    per message. Values hold no line break, so the blocks of the filled text are these, filled:
    the bytes are those of `_quoted_printable_checked`.
    """
    runs: list[tuple[bytes | Part, bool] | str] = []
    fixed: list[tuple[bytes, bool]] = []
    for block in _blocks(template):
        if any(token in block for token in tokens):
            runs += _joined(fixed)
            runs.append(block)
            fixed = []
        else:
            fixed.append(_qp_block(block))
    return runs + _joined(fixed)


def _joined(blocks: list[tuple[bytes, bool]]) -> list[tuple[bytes | Part, bool]]:
    """Consecutive encoded blocks as one run (none if there are none), shared when long."""
    if not blocks:
        return []
    data = b"".join(encoded for encoded, _ in blocks)
    return [(_shared(data) if len(data) >= SHARE_MIN else data, all(ok for _, ok in blocks))]


@functools.lru_cache(maxsize=256)  # one object for equal runs of different shapes (a style sheet)
def _shared(data: bytes) -> Part:
    return Part(hashlib.blake2b(data, digest_size=16).hexdigest(), data)


def _blocks(content: str) -> list[str]:
    """`content` cut into blocks of whole lines at table rows and paragraphs (see `_cut`)."""
    text = content.replace("\r\n", "\n").replace("\r", "\n")
    return [block for rows in _cut(text, "\n<tr>") for block in _cut(rows, "\n\n")]


def _quoted_printable_checked(content: str) -> tuple[bytes, bool]:
    """UTF-8 quoted-printable with CRLF line ends; lines ≤ 76 (soft breaks), `=` always encoded;
    and whether no line of it starts with "." (then it needs no dot-stuffing).

    The boundary starts with `=_`, which quoted-printable can never produce, so it cannot collide.
    Personalised bodies differ from each other in a few lines only, and quoted-printable is
    line-local, so the body is encoded in blocks of whole lines, each block once (`_qp_block`).
    """
    blocks = [_qp_block(block) for block in _blocks(content)]
    return b"".join(encoded for encoded, _ in blocks), all(ok for _, ok in blocks)


def _cut(text: str, sep: str) -> list[str]:
    """`text` cut before each `sep[1:]` that starts a line; every piece but the last ends in a newline.

    Boundaries set by the content (table rows, paragraphs), so a longer name near the top does not
    shift every later block and miss the cache. `str.split` is ~10x faster than a regex here.
    """
    pieces = text.split(sep)
    last = len(pieces) - 1
    head = sep[1:]
    return [
        (head if i else "") + piece + ("\n" if i < last else "") for i, piece in enumerate(pieces)
    ]


@functools.lru_cache(maxsize=1024)
def _qp_block(block: str) -> tuple[bytes, bool]:
    """The block encoded, and whether none of its lines starts with "." (a block is whole lines,
    so this holds across blocks too; `undot` sees to it): cached with it, so ~free per message."""
    data = block.encode("utf-8", "replace")  # "replace": lone surrogates from bad JSON become "?"
    encoded = undot(binascii.b2a_qp(data, quotetabs=False, istext=True, header=False))
    return encoded.replace(b"\n", b"\r\n"), not encoded.startswith(b".") and b"\n." not in encoded


def undot(encoded: bytes) -> bytes:
    """Quoted-printable (LF line ends) with no line starting with ".": the same text, decoded.

    `b2a_qp` wraps long lines wherever 76 characters end, often just before the "." of "et al.",
    and leaves a "." that starts a line of the text; SMTP would have to dot-stuff such a line on
    every send (RFC 5321 §4.5.2). Such a logical line is wrapped again, the leading dot written
    `=2E` (quoted-printable may encode any character), no line longer than 76.
    """
    if not encoded.startswith(b".") and b"\n." not in encoded:
        return encoded
    return b"\n".join(_rewrap(line) for line in encoded.replace(b"=\n", b"\0").split(b"\n"))


def _rewrap(logical: bytes) -> bytes:
    """One encoded line, its soft breaks marked NUL, wrapped again if a piece starts with ".".

    Greedy, a line at a time (a per-character loop cost ~50 µs a message): each line takes 75
    bytes, fewer when that would split an `=XX` escape, plus the soft break `=`.
    """
    if not logical.startswith(b".") and b"\0." not in logical:
        return logical.replace(b"\0", b"=\n")
    text = logical.replace(b"\0", b"")
    lines: list[bytes] = []
    while True:
        if text.startswith(b"."):
            text = b"=2E" + text[1:]
        if len(text) <= MAX_LINE - 1:
            return b"\n".join([*lines, text])
        cut = MAX_LINE - 1
        escape = text.rfind(b"=", cut - 2, cut)  # a "=" this close starts an escape the cut splits
        if escape != -1:
            cut = escape
        lines.append(text[:cut] + b"=")
        text = text[cut:]
