"""Signed, expiring tokens for the reader's pages (the confirmation link) and the anti-CSRF token
every POST form carries.

A page token is base64url(id ‖ expiry ‖ MAC[:16]), 39 characters: the subscriber id (as for
unsubscribe links, so no address is readable in it), the expiry in Unix seconds, and an HMAC over
both plus the address key and a `binding` (the pending row's creation stamp: a sign-up made
again voids the earlier links). Each purpose signs with its own derived key ("page-confirm"), so
a confirmation token is worthless as a manage, unsubscribe (32 characters) or web-copy token (24).

A form token is a MAC of (form purpose, the page's token, a time bucket): no cookie, no state;
it is accepted in its bucket and the next one, so a form stays usable for `FORM_BUCKET` to twice that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from digestd.core.addresses import address_key
from digestd.mail.linktokens import derive_key

__all__ = [
    "FORM_BUCKET",
    "PURPOSES",
    "PageToken",
    "form_token",
    "form_token_ok",
    "page_token",
    "parse_page_token",
]

PURPOSES = ("confirm",)  # the manage link is linktokens.manage_token: it never expires
FORM_BUCKET = timedelta(hours=2)
_ID_BYTES = 8
_EXP_BYTES = 5  # seconds since 1970 for 34,000 years
_MAC_BYTES = 16
_PAGE_LEN = 39  # base64url characters of 29 bytes, no padding
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class PageToken:
    """A decoded, not yet verified page token."""

    subscriber_id: int
    expires: datetime
    mac: bytes

    def verify(self, key: bytes, email: str, binding: str, *, now: datetime) -> bool:
        """Constant-time MAC check for this address and binding, and not yet expired."""
        wanted = _page_mac(key, self.subscriber_id, self.expires, email, binding)
        return hmac.compare_digest(self.mac, wanted) and now < self.expires


def page_token(
    secret: bytes, purpose: str, subscriber_id: int, email: str, binding: str, expires: datetime
) -> str:
    key = _key(secret, purpose)
    raw = subscriber_id.to_bytes(_ID_BYTES, "big") + _stamp(expires).to_bytes(_EXP_BYTES, "big")
    return _b64(raw + _page_mac(key, subscriber_id, expires, email, binding))


def parse_page_token(token: str) -> PageToken | None:
    """The id, expiry and MAC in `token`, or None when it cannot be one (length, alphabet)."""
    if len(token) != _PAGE_LEN or not _TOKEN.fullmatch(token):
        return None
    raw = base64.urlsafe_b64decode(token + "==")
    subscriber_id = int.from_bytes(raw[:_ID_BYTES], "big")
    if subscriber_id >= 2**63:
        return None
    seconds = int.from_bytes(raw[_ID_BYTES : _ID_BYTES + _EXP_BYTES], "big")
    if seconds > 253402300799:  # past year 9999: not ours
        return None
    expires = datetime.fromtimestamp(seconds, UTC)
    return PageToken(subscriber_id, expires, raw[_ID_BYTES + _EXP_BYTES :])


def page_key(secret: bytes, purpose: str) -> bytes:
    return _key(secret, purpose)


def form_token(secret: bytes, form: str, subject: str, *, now: datetime) -> str:
    """The anti-CSRF token of one form (`form`: its purpose; `subject`: the page's token or '')."""
    return _form_mac(secret, form, subject, _bucket(now))


def form_token_ok(secret: bytes, form: str, subject: str, token: str, *, now: datetime) -> bool:
    bucket = _bucket(now)
    return any(
        hmac.compare_digest(token.encode(), _form_mac(secret, form, subject, b).encode())
        for b in (bucket, bucket - 1)
    )


def _key(secret: bytes, purpose: str) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown page token purpose {purpose!r}")
    return derive_key(secret, f"page-{purpose}")


def _page_mac(key: bytes, subscriber_id: int, expires: datetime, email: str, binding: str) -> bytes:
    message = b"\0".join(
        (
            subscriber_id.to_bytes(_ID_BYTES, "big"),
            _stamp(expires).to_bytes(_EXP_BYTES, "big"),
            address_key(email).encode(),
            binding.encode(),
        )
    )
    return hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES]


def _form_mac(secret: bytes, form: str, subject: str, bucket: int) -> str:
    key = derive_key(secret, "form")
    message = f"{form}\0{subject}\0{bucket}".encode()
    return _b64(hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES])


def _bucket(now: datetime) -> int:
    return int(now.timestamp() // FORM_BUCKET.total_seconds())


def _stamp(moment: datetime) -> int:
    return max(0, int(moment.timestamp()))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")
