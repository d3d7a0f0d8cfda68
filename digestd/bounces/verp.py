"""VERP: each message's envelope sender names it (`bounces+TOKEN@domain`), so a bounce that comes
back to that address says which message, to which subscriber, failed.

The token is `linktokens.bounce_token`: the outbox id and a MAC binding it to the recipient's
address, under a key of its own purpose ("bounce"), so no other token of ours stands in for it.
"""

from __future__ import annotations

import re

from digestd.mail import linktokens

__all__ = ["BOUNCE_PURPOSE", "verp_sender", "verp_tokens"]

BOUNCE_PURPOSE = "bounce"
_TOKEN_CHARS = r"[A-Za-z2-7]{32}"


def verp_sender(base: str, key: bytes, outbox_id: int, email: str) -> str:
    """`base` (`bounces@lab.example.org`) with the message's token: `bounces+TOKEN@lab…`."""
    local, _, domain = base.rpartition("@")
    return f"{local}+{linktokens.bounce_token(key, outbox_id, email)}@{domain}"


def verp_tokens(base: str, text: str) -> list[str]:
    """Every `base`-shaped VERP token in `text`, in order of appearance, each once."""
    local, _, domain = base.rpartition("@")
    pattern = re.compile(
        rf"(?<![\w.+-]){re.escape(local)}\+({_TOKEN_CHARS})@{re.escape(domain)}(?![\w-]|\.\w)",
        re.IGNORECASE,
    )
    return list(dict.fromkeys(m.group(1).lower() for m in pattern.finditer(text)))
