"""Pure text folding and word splitting: the rule semantics of 'a term matches a field' in one place."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from digestd.core.model import Term

__all__ = [
    "clean_header",
    "collapse",
    "find_term",
    "fold",
    "fold_words",
    "make_term",
    "strip_controls",
    "tokens",
]

# Letters and digits (`\w` minus the underscore), plus combining marks so that a decomposed "e\u0301"
# stays inside its word; folding strips the marks afterwards.
_WORD = re.compile(
    r"(?:[^\W_]|[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f])+"
)
_SPACE = re.compile(r"\s+")
# C0/C1 controls, DEL, and the Unicode line/paragraph separators that some clients render as breaks.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@lru_cache(maxsize=65536)
def fold(text: str) -> str:
    """Case- and accent-fold: 'Étude' → 'etude', 'KV-Cache' → 'kv-cache', 'Straße' → 'strasse'."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", stripped.casefold())


def tokens(text: str) -> list[tuple[str, int, int]]:
    """Folded words of `text` with their (start, end) character span in `text` itself.

    `text` is split first and each piece folded after, so spans always point into the original;
    a piece whose folding yields a separator (rare compatibility forms) splits further, same span.
    """
    out: list[tuple[str, int, int]] = []
    for m in _WORD.finditer(text):
        folded = fold(m.group())
        for word in _WORD.findall(folded):
            out.append((word, m.start(), m.end()))
    return out


def fold_words(text: str) -> tuple[str, ...]:
    """The folded words of `text`, without spans."""
    return tuple(word for word, _, _ in tokens(text))


def make_term(text: str) -> Term:
    """Parse a rule term: words folded like the fields, a trailing '*' making the last word a prefix."""
    raw = text.strip()
    prefix = raw.endswith("*")
    words = fold_words(raw.rstrip("*"))
    return Term(text=raw, words=words, prefix=prefix and bool(words))


def find_term(
    term: Term, words: list[tuple[str, int, int]] | tuple[str, ...]
) -> list[tuple[int, int]]:
    """Every place `term` occurs in `words` as (first, last) word indices; empty when it does not."""
    n = len(term.words)
    if n == 0:
        return []
    plain = [w if isinstance(w, str) else w[0] for w in words]
    hits = []
    for i in range(len(plain) - n + 1):
        if _matches_at(term, plain, i):
            hits.append((i, i + n - 1))
    return hits


def _matches_at(term: Term, words: list[str], i: int) -> bool:
    n = len(term.words)
    if words[i : i + n - 1] != list(term.words[:-1]):
        return False
    last = words[i + n - 1]
    return last.startswith(term.words[-1]) if term.prefix else last == term.words[-1]


def collapse(text: str) -> str:
    """Collapse every run of whitespace (HF titles carry hard line breaks) into one space."""
    return _SPACE.sub(" ", text).strip()


def strip_controls(text: str) -> str:
    """Every C0/C1 control character (ESC, CSI, NUL, CR, LF, TAB…) and DEL of untrusted text → a
    space: a terminal showing a log line or `digestd status` must never receive an escape."""
    return _CONTROL.sub(" ", text)


def clean_header(text: str, *, limit: int = 200) -> str:
    """Make untrusted text safe for a header value: no control characters or line breaks, bounded length."""
    cleaned = collapse(strip_controls(text))
    limit = max(limit, 1)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1].rstrip() + "…"
