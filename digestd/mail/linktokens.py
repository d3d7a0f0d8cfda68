"""Opaque, signed tokens for the links in a mail: who wants to leave, who manages their
subscription, and which message to show.

An unsubscribe token is base64url(subscriber id ‖ HMAC-SHA256(key, id ‖ email)[:16]): no address is
readable in it, and the MAC binds the id to the address, so a database rebuilt with other ids cannot
turn an old link against someone else. A web-copy token is a MAC of the Message-ID: unguessable,
yet the same on every render, so a retried enqueue stores the same copy under the same name.

Every purpose has its own key (`derive_key(secret, purpose)`: "unsubscribe", "manage", "view",
and "confirm" and "feedback" for the pages that use them), so a token made for one use verifies
for no other: a manage token is an unsubscribe token's format under the "manage" key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from digestd.core.addresses import address_key

__all__ = [
    "UnsubscribeToken",
    "derive_key",
    "is_view_token",
    "manage_token",
    "parse_manage",
    "parse_unsubscribe",
    "unsubscribe_token",
    "view_token",
]

_ID_BYTES = 8
_MAC_BYTES = 16  # 128 bits: forging one needs ~2**127 tries, each an HTTP request
_UNSUB_LEN = 32  # base64url characters of 24 bytes, no padding
_VIEW_BYTES = 18
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


class UnsubscribeToken:
    """A decoded, not yet verified unsubscribe token."""

    __slots__ = ("mac", "subscriber_id")

    def __init__(self, subscriber_id: int, mac: bytes) -> None:
        self.subscriber_id = subscriber_id
        self.mac = mac

    def verify(self, key: bytes, email: str) -> bool:
        """Constant-time: the MAC matches this id and address."""
        return hmac.compare_digest(self.mac, _mac(key, self.subscriber_id, email))


def derive_key(secret: bytes, purpose: str) -> bytes:
    """One key per purpose, so a token made for one use is worthless for another."""
    return hmac.new(secret, f"digestd/{purpose}/v1".encode(), hashlib.sha256).digest()


def unsubscribe_token(key: bytes, subscriber_id: int, email: str) -> str:
    ident = subscriber_id.to_bytes(_ID_BYTES, "big")
    return _b64(ident + _mac(key, subscriber_id, email))


def parse_unsubscribe(token: str) -> UnsubscribeToken | None:
    """The id and MAC in `token`, or None when it cannot be one of ours (length, alphabet)."""
    if len(token) != _UNSUB_LEN or not _TOKEN.fullmatch(token):
        return None
    raw = base64.urlsafe_b64decode(token)
    subscriber_id = int.from_bytes(raw[:_ID_BYTES], "big")
    if subscriber_id >= 2**63:  # SQLite integers are signed 64-bit; ours are small anyway
        return None
    return UnsubscribeToken(subscriber_id, raw[_ID_BYTES:])


def manage_token(key: bytes, subscriber_id: int, email: str) -> str:
    """The token of a reader's "Manage your subscription" link (`key`: the "manage" key)."""
    return unsubscribe_token(key, subscriber_id, email)


def parse_manage(token: str) -> UnsubscribeToken | None:
    """A manage token's id and MAC (verify with the "manage" key), or None."""
    return parse_unsubscribe(token)


def view_token(key: bytes, message_id: str) -> str:
    return _b64(hmac.new(key, message_id.encode(), hashlib.sha256).digest()[:_VIEW_BYTES])


def is_view_token(token: str) -> bool:
    return len(token) == 24 and _TOKEN.fullmatch(token) is not None


def _mac(key: bytes, subscriber_id: int, email: str) -> bytes:
    message = subscriber_id.to_bytes(_ID_BYTES, "big") + address_key(email).encode()
    return hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")
