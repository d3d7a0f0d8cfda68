"""The one HTTP client of every source: retries, the server's wait, conditional GETs, caps, throttle.

`HttpGetter.get` returns a whole body, a "not modified", or raises `SourceError`; it never returns
part of a body. Every source that speaks HTTP (Hugging Face, arXiv API and RSS, any feed) is a thin
client on it, so each gains the same behaviour: 429 and 5xx retried after the server's `RateLimit`
or `Retry-After` (seconds or an HTTP date, capped at `max_wait`), jittered backoff otherwise; a
whole-request deadline; a size cap; an optional throttle; and no secret (a bearer token, URL
credentials, secret query parameters) in any error or log line.

Validators (ETag, Last-Modified) are read from a `ValidatorStore` (the SQLite store) and handed
back with the body: the pipeline saves them only once the papers are stored, so a crash between
the two can never turn the next poll into a 304 that hides papers never stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn, Protocol

import httpx

from digestd import __version__
from digestd.core.errors import SourceError
from digestd.core.model import Validators
from digestd.core.redact import redact, secrets_of
from digestd.sources.retry import RetryLater, backoff_delay, deadline, server_wait

__all__ = [
    "DEFAULT_MAX_BODY",
    "FEED_ACCEPT",
    "USER_AGENT",
    "HttpGetter",
    "Reply",
    "Throttle",
    "ValidatorStore",
    "make_client",
]

log = logging.getLogger(__name__)

USER_AGENT = f"digestd/{__version__} (+https://github.com/digestd/digestd)"
FEED_ACCEPT = "application/atom+xml, application/rss+xml, application/xml;q=0.9, */*;q=0.5"
DEFAULT_MAX_BODY = 16 * 1024 * 1024

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
Params = Mapping[str, str]


def make_client(timeout: float = 30.0) -> httpx.AsyncClient:
    """The HTTP client: TLS verified, redirects followed (httpx drops auth across origins)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        verify=True,
        follow_redirects=True,
        max_redirects=5,
    )


class ValidatorStore(Protocol):
    def get_validators(self, url: str) -> Validators | None: ...


class Throttle:
    """At most one request per `interval` seconds, one at a time (arXiv's terms of use).

    One instance is shared by every source talking to the same service; the gap is counted from
    the end of the previous request, the conservative reading of "one request every 3 seconds".
    """

    def __init__(
        self, interval: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._last: float | None = None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._lock:
            if self._last is not None:
                wait = self._last + self.interval - self._clock()
                if wait > 0:
                    await self._sleep(wait)
            try:
                yield
            finally:
                self._last = self._clock()


@dataclass(frozen=True, slots=True)
class Reply:
    body: bytes
    validators: Validators | None = None
    not_modified: bool = False


@dataclass(frozen=True, slots=True)
class _Request:
    """One logical GET: where, what it is called in errors, the secrets its errors must not show."""

    url: str
    params: Params | None
    label: str
    known: frozenset[str]
    now: datetime | None
    validators: Validators | None


class HttpGetter:
    """GETs for one source: descriptive User-Agent, retries with jittered backoff, capped bodies."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        name: str,
        accept: str = FEED_ACCEPT,
        token: str | None = None,
        retries: int = 3,
        backoff: float = 1.0,
        max_wait: float = 60.0,
        max_body: int = DEFAULT_MAX_BODY,
        deadline: float = 30.0,
        sleep: Sleep = asyncio.sleep,
        throttle: Throttle | None = None,
        cache: ValidatorStore | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.name = name
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.max_body = max_body
        self.deadline = deadline
        self.cache = cache
        self._client = client
        self._sleep = sleep
        self._throttle = throttle
        self._token = token or None
        self._headers = {"User-Agent": USER_AGENT, "Accept": accept}
        if self._token:
            self._headers["Authorization"] = f"Bearer {self._token}"

    def __repr__(self) -> str:
        # Never the token: this may end up in a log line.
        return f"HttpGetter(name={self.name!r}, token={'***' if self._token else None})"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(
        self,
        url: str,
        *,
        params: Params | None = None,
        now: datetime | None = None,
        conditional: bool = True,
        label: str | None = None,
    ) -> Reply:
        """The body of `url` (with `params`), retried; with `conditional`, a 304 when unchanged.

        `now` measures a `Retry-After` date (without it a date is not honoured); `label` names
        the request in errors (default `GET <url>`).
        """
        request = _Request(
            url=url,
            params=params,
            label=label or f"GET {url}",
            known=self._secrets(url),
            now=now,
            validators=self.cache.get_validators(url) if conditional and self.cache else None,
        )
        return await self._retrying(request)

    def failure(
        self, url: str, message: str, *, transient: bool, status: int | None = None
    ) -> SourceError:
        """A `SourceError` about `url` with every secret this getter knows of masked."""
        return SourceError(
            redact(message, known=self._secrets(url)), transient=transient, status=status
        )

    def _secrets(self, url: str) -> frozenset[str]:
        # A hostile or echoing server could quote our Authorization header or URL back at us.
        return frozenset(secrets_of(url) | ({self._token} if self._token else set()))

    async def _retrying(self, request: _Request) -> Reply:
        attempt = 0
        while True:
            try:
                return await self._attempt(request)
            except RetryLater as failure:
                if attempt >= self.retries:
                    raise self._gave_up(request, failure, attempt + 1) from None
                delay = backoff_delay(
                    attempt, failure.wait, backoff=self.backoff, max_wait=self.max_wait
                )
                log.info(
                    "retrying source=%s %s error=%s in=%.1fs",
                    self.name,
                    redact(request.label, known=request.known),
                    redact(str(failure), known=request.known),
                    delay,
                )
                attempt += 1
                await self._sleep(delay)

    def _gave_up(self, request: _Request, failure: RetryLater, attempts: int) -> SourceError:
        message = f"{request.label}: {failure} (gave up after {attempts} attempts)"
        return self.failure(request.url, message, transient=True, status=failure.status)

    async def _attempt(self, request: _Request) -> Reply:
        if self._throttle is None:
            return await self._timed(request)
        async with self._throttle.slot():
            return await self._timed(request)

    async def _timed(self, request: _Request) -> Reply:
        # Inside the throttle's slot: waiting for our turn does not count against the server.
        async with deadline(self.deadline):
            return await self._request(request)

    async def _request(self, request: _Request) -> Reply:
        try:
            async with self._client.stream(
                "GET", request.url, params=request.params, headers=self._conditional(request)
            ) as response:
                status = response.status_code
                if status == 200:
                    body = await self._read(response, request)
                    return Reply(body=body, validators=_validators(request.url, response))
                if status == 304 and request.validators is not None:
                    return Reply(body=b"", validators=request.validators, not_modified=True)
                excerpt = await _head(response)
        except httpx.TimeoutException as exc:
            raise RetryLater(f"timed out ({type(exc).__name__})") from None
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            raise RetryLater(f"connection failed ({type(exc).__name__}: {exc})") from None
        except httpx.HTTPError as exc:
            # A bad URL, an unsupported scheme, a redirect loop: retrying will not help.
            message = f"{request.label}: {type(exc).__name__}: {exc}"
            raise self.failure(request.url, message, transient=False) from None
        self._refuse(response, excerpt, request)

    def _conditional(self, request: _Request) -> dict[str, str]:
        headers = dict(self._headers)
        known = request.validators
        if known is not None and known.etag:
            headers["If-None-Match"] = known.etag
        if known is not None and known.last_modified:
            headers["If-Modified-Since"] = known.last_modified
        return headers

    async def _read(self, response: httpx.Response, request: _Request) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise self._too_big(request)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_body:
                raise self._too_big(request)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_big(self, request: _Request) -> SourceError:
        message = (
            f"{request.label}: reply larger than max_bytes={self.max_body} (the cap on one reply)"
        )
        return self.failure(request.url, message, transient=False)

    def _refuse(self, response: httpx.Response, excerpt: bytes, request: _Request) -> NoReturn:
        status = response.status_code
        if status == 429 or status >= 500:
            wait = server_wait(response, request.now)
            reason = "HTTP 429 rate limited" if status == 429 else f"HTTP {status}"
            raise RetryLater(reason, status=status, wait=wait)
        body = excerpt.decode("utf-8", "replace")
        message = f"{request.label}: HTTP {status} {response.reason_phrase}: {body!r}"
        raise self.failure(request.url, message, transient=False, status=status)


async def _head(response: httpx.Response, limit: int = 4096) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)[:200]


def _validators(url: str, response: httpx.Response) -> Validators | None:
    etag = response.headers.get("ETag")
    modified = response.headers.get("Last-Modified")
    if not etag and not modified:
        return None
    return Validators(url=url, etag=etag or None, last_modified=modified or None)
