"""What stands in front of every reader form: a body size cap, a strict form parser, the
anti-CSRF check, the honeypot, and per-IP / per-address rate limits.

Nothing here keeps a cookie or a session. Limits are counted in memory (a restart forgets them,
which only lets a few more requests through once); the per-address limit on confirmation mails
is also recorded in the store by the reader repository, which survives restarts.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import parse_qsl

from starlette.requests import Request

from digestd.mail.pagetokens import form_token, form_token_ok

__all__ = [
    "CSRF_FIELD",
    "HONEYPOT_FIELD",
    "MAX_FIELDS",
    "BodyTooLarge",
    "Form",
    "FormGuard",
    "RateLimiter",
    "client_ip",
    "rate_key",
    "read_form",
]

CSRF_FIELD = "csrf"
HONEYPOT_FIELD = "website"  # hidden from people; bots fill every field they see
MAX_FIELDS = 200  # a form has ~20 fields (plus one per topic); more is not a browser


class BodyTooLarge(Exception):
    """The request body passed the cap; it was not read further."""


class BadForm(Exception):
    """The body is not a UTF-8 url-encoded form."""


class Form:
    """A parsed form: the first value of a field, or all of its values (checkboxes)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def get(self, name: str, default: str = "") -> str:
        return next((v for k, v in self._pairs if k == name), default)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self._pairs if k == name]

    def has(self, name: str) -> bool:
        return any(k == name for k, _ in self._pairs)


async def read_form(request: Request, *, cap: int) -> Form:
    """The url-encoded body, read up to `cap` bytes.

    :raises BodyTooLarge: the body (or its declared length) is over `cap`.
    :raises BadForm: not UTF-8, or more than `MAX_FIELDS` fields.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise BodyTooLarge
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=False, errors="strict",
            max_num_fields=MAX_FIELDS,
        )  # fmt: skip
    except (UnicodeDecodeError, ValueError):
        raise BadForm from None
    return Form(pairs)


def client_ip(request: Request) -> str:
    """The client's address; behind a reverse proxy on this host (a loopback peer), the last
    address it appended to X-Forwarded-For, which the client cannot forge."""
    peer = request.client.host if request.client else "unknown"
    forwarded = request.headers.get("x-forwarded-for", "")
    if forwarded and _is_loopback(peer):
        last = forwarded.split(",")[-1].strip()
        if last:
            return last[:64]
    return peer


def rate_key(ip: str) -> str:
    """What the per-IP limit counts: an IPv6 client by its /64 (one host holds a whole /64, and
    could take a new address per request), anything else as it is."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RateLimiter:
    """At most `limit` events per `window` per key, over a sliding window; bounded memory."""

    def __init__(self, limit: int, window: timedelta, *, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._seen: dict[str, deque[datetime]] = {}

    def allow(self, key: str, now: datetime) -> bool:
        """Count one event for `key` if it is within the limit; False (not counted) otherwise."""
        if self.limit <= 0:
            return True
        times = self._seen.get(key)
        if times is None:
            if len(self._seen) >= self.max_keys:
                self._forget(now)
            times = self._seen[key] = deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True

    def _forget(self, now: datetime) -> None:
        """Drop keys with no event in the window; if all are busy, the oldest half."""
        stale = [k for k, t in self._seen.items() if not t or t[-1] <= now - self.window]
        for key in stale:
            del self._seen[key]
        if len(self._seen) >= self.max_keys:
            for key in list(self._seen)[: self.max_keys // 2]:
                del self._seen[key]


class FormGuard:
    """The anti-CSRF tokens of one daemon: issued into each form, checked on each POST."""

    def __init__(self, secret: bytes, clock: Callable[[], datetime]) -> None:
        self._secret = secret
        self._clock = clock

    def token(self, form: str, subject: str = "") -> str:
        return form_token(self._secret, form, subject, now=self._clock())

    def check(self, form_data: Form, form: str, subject: str = "") -> bool:
        sent = form_data.get(CSRF_FIELD)
        if not sent or len(sent) > 64:
            return False
        return form_token_ok(self._secret, form, subject, sent, now=self._clock())

    @staticmethod
    def is_bot(form_data: Form) -> bool:
        """The honeypot is filled: no person sees that field."""
        return bool(form_data.get(HONEYPOT_FIELD).strip())
