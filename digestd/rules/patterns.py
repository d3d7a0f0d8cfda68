"""The `regex:` rule key: RE2 patterns (linear time, so no rule can stall the daemon) over folded text.

Owned here: compiling patterns once (errors as plain messages for the loader to position) and the
folded view of a field that patterns run on, with a map back to the original characters so that a
regex hit can be highlighted like a term.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import re2

from digestd.core.text import fold

__all__ = ["FoldedText", "compile_pattern", "pattern_spans"]

Span = tuple[int, int]

_SPACES = re.compile(r"\s+")
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the loader reports bad patterns itself, with their position
_OPTIONS.max_mem = 8 << 20  # a pattern whose program needs more is a mistake, not a topic


@lru_cache(maxsize=1 << 14)
def compile_pattern(pattern: str) -> Any:
    """The compiled pattern. :raises ValueError: with RE2's reason when it does not compile."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"invalid regular expression '{pattern}': {reason}") from None


@dataclass(frozen=True, slots=True)
class FoldedText:
    """A field folded character by character, whitespace runs as one space; `origin[i]` is where
    folded character i came from in the original text."""

    text: str
    origin: tuple[int, ...]

    @classmethod
    def of(cls, original: str) -> FoldedText:
        if original.isascii():
            return cls._ascii(original)
        out: list[str] = []
        origin: list[int] = []
        space = False
        for i, c in enumerate(original):
            if c.isspace():
                if not space:
                    out.append(" ")
                    origin.append(i)
                space = True
                continue
            space = False
            piece = fold(c)
            out.append(piece)
            origin.extend([i] * len(piece))
        origin.append(len(original))
        return cls("".join(out), tuple(origin))

    @classmethod
    def _ascii(cls, original: str) -> FoldedText:
        """The same for ASCII text (nearly every paper), without a step per character: folding is
        lower-casing, and a character is dropped only when it is whitespace after whitespace."""
        text = _SPACES.sub(" ", original.lower())
        if len(text) == len(original):
            return cls(text, tuple(range(len(original) + 1)))
        space = [c.isspace() for c in original]
        kept = [i for i in range(len(original)) if not (space[i] and i and space[i - 1])]
        kept.append(len(original))
        return cls(text, tuple(kept))

    def original(self, start: int, end: int) -> Span:
        return (self.origin[start], self.origin[end - 1] + 1)


def pattern_spans(pattern: str, text: FoldedText) -> list[Span]:
    """Where `pattern` matches `text`, as spans of the original; empty matches do not count."""
    return [
        text.original(*m.span())
        for m in compile_pattern(pattern).finditer(text.text)
        if m.end() > m.start()
    ]
