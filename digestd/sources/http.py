"""The HTTP side shared by the feed sources: conditional GETs, a politeness throttle, retries, a size cap.

`HttpGetter.get` returns a whole body, a "not modified", or raises `SourceError`; it never returns
part of a body. Validators (ETag, Last-Modified) are read from a `ValidatorStore` (the SQLite store)
and handed back with the body: the pipeline saves them only once the papers are stored, so a crash
between the two can never turn the next poll into a 304 that hides papers never stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn, Protocol

import httpx

from digestd.core.errors import SourceError
from digestd.core.model import ParseResult, Validators
from digestd.core.redact import redact_url
from digestd.sources.huggingface import USER_AGENT
from digestd.sources.retry import RetryLater, backoff_delay, deadline, server_wait

__all__ = ["FeedPoll", "HttpGetter", "Reply", "Throttle", "ValidatorStore"]

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
DEFAULT_MAX_BODY = 16 * 1024 * 1024


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


class HttpGetter:
    """GETs for one source: descriptive User-Agent, retries with jittered backoff, capped bodies."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        name: str,
        accept: str = "application/atom+xml, application/rss+xml, application/xml;q=0.9, */*;q=0.5",
        retries: int = 3,
        backoff: float = 1.0,
        max_wait: float = 60.0,
        max_body: int = DEFAULT_MAX_BODY,
        deadline: float = 30.0,
        sleep: Sleep = asyncio.sleep,
        throttle: Throttle | None = None,
        cache: ValidatorStore | None = None,
    ) -> None:
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
        self._headers = {"User-Agent": USER_AGENT, "Accept": accept}

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, url: str, *, conditional: bool = True) -> Reply:
        """The body of `url`, retried; with `conditional`, a 304 when the server's copy is unchanged."""
        known = self.cache.get_validators(url) if conditional and self.cache else None
        attempt = 0
        while True:
            try:
                return await self._attempt(url, known)
            except RetryLater as failure:
                if attempt >= self.retries:
                    raise SourceError(
                        f"GET {url}: {failure} (gave up after {attempt + 1} attempts)",
                        transient=True,
                        status=failure.status,
                    ) from None
                delay = self._delay(attempt, failure.wait)
                log.info(
                    "retrying source=%s url=%s error=%s in=%.1fs",
                    self.name,
                    redact_url(url),
                    failure,
                    delay,
                )
                attempt += 1
                await self._sleep(delay)

    async def _attempt(self, url: str, known: Validators | None) -> Reply:
        headers = dict(self._headers)
        if known is not None and known.etag:
            headers["If-None-Match"] = known.etag
        if known is not None and known.last_modified:
            headers["If-Modified-Since"] = known.last_modified
        if self._throttle is None:
            return await self._timed(url, headers, known)
        async with self._throttle.slot():
            return await self._timed(url, headers, known)

    async def _timed(self, url: str, headers: dict[str, str], known: Validators | None) -> Reply:
        # Inside the throttle's slot: waiting for our turn does not count against the server.
        async with deadline(self.deadline):
            return await self._request(url, headers, known)

    async def _request(self, url: str, headers: dict[str, str], known: Validators | None) -> Reply:
        try:
            async with self._client.stream("GET", url, headers=headers) as response:
                status = response.status_code
                if status == 200:
                    body = await self._read(response, url)
                    return Reply(body=body, validators=_validators(url, response))
                if status == 304 and known is not None:
                    return Reply(body=b"", validators=known, not_modified=True)
                excerpt = await _head(response)
        except httpx.TimeoutException as exc:
            raise RetryLater(f"timed out ({type(exc).__name__})") from None
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            raise RetryLater(f"connection failed ({type(exc).__name__}: {exc})") from None
        except httpx.HTTPError as exc:
            raise SourceError(f"GET {url}: {type(exc).__name__}: {exc}", transient=False) from None
        self._refuse(response, excerpt, url)

    async def _read(self, response: httpx.Response, url: str) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise self._too_big(url)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_body:
                raise self._too_big(url)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_big(self, url: str) -> SourceError:
        return SourceError(
            f"GET {url}: reply larger than max_bytes={self.max_body}; not a feed this size?",
            transient=False,
        )

    def _refuse(self, response: httpx.Response, excerpt: bytes, url: str) -> NoReturn:
        status = response.status_code
        if status == 429:
            raise RetryLater("HTTP 429 rate limited", status=429, wait=server_wait(response))
        if status >= 500:
            raise RetryLater(f"HTTP {status}", status=status, wait=server_wait(response))
        body = excerpt.decode("utf-8", "replace")
        raise SourceError(
            f"GET {url}: HTTP {status} {response.reason_phrase}: {body!r}",
            transient=False,
            status=status,
        )

    def _delay(self, attempt: int, wait: float | None) -> float:
        return backoff_delay(attempt, wait, backoff=self.backoff, max_wait=self.max_wait)


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


class FeedPoll:
    """One conditional GET of `url` per poll, its body parsed by `parse`: the shape every XML source shares.

    A 304 is a successful poll with nothing new; a parse failure names the URL; the validators of the
    reply travel with the papers so the store saves them only once the papers are stored.
    """

    name: str
    url: str
    _getter: HttpGetter

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.url)!r}, name={self.name!r})"

    def parse(self, body: bytes) -> ParseResult:
        raise NotImplementedError

    async def aclose(self) -> None:
        await self._getter.aclose()

    async def fetch(self, *, now: datetime) -> ParseResult:
        reply = await self._getter.get(self.url)
        if reply.not_modified:
            return ParseResult(papers=(), not_modified=True)
        try:
            result = self.parse(reply.body)
        except SourceError as exc:
            raise SourceError(f"GET {self.url}: {exc}", transient=exc.transient) from None
        validators = (reply.validators,) if reply.validators else ()
        return ParseResult(papers=result.papers, problems=result.problems, validators=validators)
