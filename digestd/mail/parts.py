"""The message-bytes format: a message as its own bytes with shared `Part`s spliced in.

What the outbox stores (`Spliced`, its parts once however many messages share them) and what a
transport sends (`Spliced.whole()` plus the `canonical` flag) are defined here, and so is every
change to them: splicing, and the DKIM header a signer puts before them (`signed`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from digestd.core.model import Rendered

__all__ = ["Part", "Personal", "Spliced", "fill", "signed", "splice"]


@dataclass(frozen=True, slots=True)
class Personal:
    """A message as its shape's templates plus one subscriber's values (`mail/shapes.py`).

    `text`/`html` are the templates; `fills` pairs each placeholder with its value. A value
    never holds a line break, so every line of the template is a line of the message.
    """

    subject: str
    text: str
    html: str
    fills: tuple[tuple[str, str], ...]

    def rendered(self) -> Rendered:
        return Rendered(self.subject, fill(self.text, self.fills), fill(self.html, self.fills))


def fill(template: str, fills: tuple[tuple[str, str], ...]) -> str:
    """`template` with each placeholder replaced by its value."""
    if len(fills) <= _FEW:
        for token, value in fills:
            template = template.replace(token, value)
        return template
    # Many slots (a feedback pair per paper): a template is cut at its placeholders once, and
    # each message is a join of the pieces and its values. The templates and the runs of lines
    # mail/mime.py fills are the same objects message after message: their hashes are kept.
    tokens = tuple(token for token, _ in fills)
    cut = _cut_run if len(template) < _SHORT else _cut_template
    pieces, slots = cut(template, tokens)
    if not slots:
        return template
    values = [value for _, value in fills]
    out = [pieces[0]]
    for slot, piece in zip(slots, pieces[1:], strict=True):
        out += (values[slot], piece)
    return "".join(out)


_FEW = 6
_SHORT = 4096


def _cut(template: str, tokens: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The text between placeholders, and which placeholder (index in `tokens`) each gap holds."""
    index = {t: i for i, t in enumerate(tokens)}
    pattern = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
    parts = re.split(f"({pattern})", template)
    return tuple(parts[0::2]), tuple(index[t] for t in parts[1::2])


_cut_run = functools.lru_cache(maxsize=4096)(_cut)  # runs of a few lines: small
_cut_template = functools.lru_cache(maxsize=32)(_cut)  # whole templates: ~40 KB each


@dataclass(frozen=True, slots=True)
class Part:
    """Message bytes that many messages share (a run of a shape's encoded template), stored once.

    `key` is a hash of `data`: equal keys, equal bytes.
    """

    key: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Spliced:
    """A message as its own bytes with shared `Part`s spliced in: `whole()` is the message.

    `parts` are (offset in `own`, part) pairs, in order. A run of 20,000 messages of one shape
    then queues ~2 KB of each and its ~40 KB of shared blocks once. `canonical`: the whole
    message is known to be in SMTP's canonical form (CRLF line ends only, no line starting with
    "."), checked once where it was built, in a compose worker, so the sender does not scan
    ~40 KB again on the one busy core; the outbox keeps the flag beside the bytes.
    """

    own: bytes
    parts: tuple[tuple[int, Part], ...] = ()
    canonical: bool = False

    def whole(self) -> bytes:
        pieces: list[bytes] = []
        start = 0
        for at, part in self.parts:
            pieces += (self.own[start:at], part.data)
            start = at
        pieces.append(self.own[start:])
        return b"".join(pieces)

    def prefixed(self, head: bytes) -> Spliced:
        """`head` + this message, still spliced; no longer known to be canonical."""
        shift = len(head)
        return Spliced(head + self.own, tuple((at + shift, part) for at, part in self.parts))


def splice(pieces: Sequence[bytes | Part], *, canonical: bool) -> Spliced:
    """The message whose bytes are `pieces` in order, each `Part` kept aside to be stored once."""
    own: list[bytes] = []
    parts: list[tuple[int, Part]] = []
    size = 0
    for piece in pieces:
        if isinstance(piece, Part):
            parts.append((size, piece))
        else:
            own.append(piece)
            size += len(piece)
    return Spliced(b"".join(own), tuple(parts), canonical)


def signed(sign: Callable[[bytes], bytes], message: Spliced) -> Spliced:
    """The message signed when queued, so every retry sends the same signature; still spliced
    when the signer only put a header before it (as DKIM does), else its bytes as they are."""
    whole = message.whole()
    data = sign(whole)
    if not data.endswith(whole):
        return Spliced(data)
    return message.prefixed(data[: len(data) - len(whole)])
