"""Secrets kept out of what people read: URLs and error texts redacted, control bytes stripped.

A source URL may carry credentials (`https://user:pw@host/feed?token=…`) and an error text is
whatever a server chose to say. Everything that shows them to a person (`digestd check` and
`status`, log lines, poll error rows, admin alert mails) passes `redact` or `safe_text` first:
the userinfo of a URL and the value of every parameter whose name looks secret become `***`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

from digestd.core.text import collapse, strip_controls

__all__ = ["MASK", "redact", "redact_url", "safe_text", "secrets_of"]

MASK = "***"
# Words that make a parameter name secret (`access_token`, `X-Amz-Signature`, `apiKey`, `pw`).
_SECRET_WORDS = frozenset(
    {
        "token", "key", "apikey", "secret", "password", "passwd", "pass", "pwd", "pw", "sig",
        "signature", "auth", "authorization", "credential", "credentials", "session",
        "sessionid", "jwt", "bearer",
    }
)  # fmt: skip
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s'\"<>]*@")
# `name=value` in a query, a fragment or free text; the value runs to the next separator (a
# colon, comma, period or parenthesis just before one is the sentence's, not the value's; a `?`
# ends it so that `url=https://h/f?token=…` still shows its token as a pair of its own).
_PARAM = re.compile(r"([A-Za-z0-9_.\-\[\]]+)=([^?&;#\s'\"<>]*?)(?=[:,.)]?(?:[?&;#\s'\"<>]|$))")
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_MAX_ERROR = 1000


def redact_url(url: str) -> str:
    """`url` with its userinfo and secret-looking parameter values replaced by `***`."""
    return redact(url)


def redact(text: str, *, known: Iterable[str] = ()) -> str:
    """`text` with every URL's userinfo, every secret-looking `name=value`'s value and every
    string in `known` (secrets the caller holds, e.g. from `secrets_of`) replaced by `***`."""
    for secret in sorted({k for k in known if len(k) >= 3}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    return _PARAM.sub(_mask_param, text)


def secrets_of(url: str) -> set[str]:
    """The secret values a URL holds (its password and secret parameters), raw and decoded, so
    that an echo of them in a server's reply can be found as well."""
    try:
        parts = urlsplit(url)
        found = {parts.password or ""}
    except ValueError:
        return set()
    for query in (parts.query, parts.fragment):
        found.update(value for name, value in parse_qsl(query) if _is_secret(name))
    found.update({unquote(v) for v in found} | {v for v in _raw_values(url)})
    return {v for v in found if v}


def safe_text(text: str, *, known: Iterable[str] = (), limit: int = _MAX_ERROR) -> str:
    """An untrusted text (a source's error) fit for a log line, a status line or a mail: redacted,
    control characters stripped, on one line, at most `limit` characters."""
    cleaned = collapse(strip_controls(redact(text, known=known)))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _mask_param(found: re.Match[str]) -> str:
    name, value = found.group(1), found.group(2)
    return f"{name}={MASK}" if value and _is_secret(name) else found.group(0)


def _is_secret(name: str) -> bool:
    words = {w.lower() for w in _WORD.findall(name)}
    return bool(words & _SECRET_WORDS) or re.sub(r"[^a-z]", "", name.lower()) in _SECRET_WORDS


def _raw_values(url: str) -> set[str]:
    return {m.group(2) for m in _PARAM.finditer(url) if _is_secret(m.group(1))}
