"""The one HTTP stack (issue 14): every behaviour of the union, for every source kind that uses it.

Hugging Face, arXiv API, arXiv RSS and a generic feed each poll a real local HTTP server through
their own `HttpGetter`; the injected sleep records the waits, so no test ever waits.
"""

from __future__ import annotations

import base64
import logging
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpserver import LocalHTTPServer, Reply
from test_service import write_config

from digestd.core.errors import SourceError
from digestd.core.model import Validators
from digestd.sources import HttpGetter, make_client
from digestd.sources.arxiv import ArxivApiSource
from digestd.sources.arxiv_rss import ArxivRssSource
from digestd.sources.base import Source
from digestd.sources.feed import FeedSource
from digestd.sources.huggingface import HF_ACCEPT, HuggingFaceSource

FIXTURES = Path(__file__).parents[1] / "fixtures"
NOW = datetime(2026, 8, 12, 9, 0, tzinfo=UTC)
SECRET = "s3cr3t-pw-4711"  # the password in every source URL's userinfo
TOKEN = "hf_tok3n_0815"  # Hugging Face's bearer token
KINDS = ["huggingface", "arxiv", "arxiv_rss", "feed"]
PATHS = {
    "huggingface": "/api/daily_papers",
    "arxiv": "/api/query",
    "arxiv_rss": "/rss/cs.LG",
    "feed": "/feed.xml",
}
BODIES = {
    "huggingface": b"[]",
    "arxiv": (FIXTURES / "arxiv_api_query.xml").read_bytes(),
    "arxiv_rss": (FIXTURES / "arxiv_rss_cs_lg.xml").read_bytes(),
    "feed": (FIXTURES / "feed_rss2.xml").read_bytes(),
}


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(round(seconds, 3))


class Cache:
    def __init__(self) -> None:
        self.saved: dict[str, Validators] = {}

    def get_validators(self, url: str) -> Validators | None:
        return self.saved.get(url)


@dataclass
class Polled:
    """One source of `kind` on the local server, its requests' path and its waits."""

    kind: str
    source: Source
    path: str
    sleeps: Sleeps

    async def fetch(self) -> Any:
        return await self.source.fetch(now=NOW)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(timeout=5.0) as c:
        yield c


def build(kind: str, server: LocalHTTPServer, client: httpx.AsyncClient, **kw: Any) -> Polled:
    """A `kind` source whose URL carries `SECRET` as its password; Hugging Face sends `TOKEN`
    instead (credentials in the URL would replace its Authorization header)."""
    sleeps = Sleeps()
    base = with_password(server.url)
    source: Source
    if kind == "huggingface":
        getter = HttpGetter(client, name=kind, accept=HF_ACCEPT, token=TOKEN, sleep=sleeps, **kw)
        source = HuggingFaceSource(getter, url=server.url + PATHS[kind], days=1)
        return Polled(kind, source, PATHS[kind], sleeps)
    getter = HttpGetter(client, name=kind, sleep=sleeps, **kw)
    if kind == "arxiv":
        source = ArxivApiSource(getter, query="cat:cs.LG", url=base + PATHS[kind])
    elif kind == "arxiv_rss":
        source = ArxivRssSource(getter, categories=["cs.LG"], base_url=base + "/rss/")
    else:
        source = FeedSource(getter, url=base + PATHS[kind])
    return Polled(kind, source, PATHS[kind], sleeps)


def with_password(url: str) -> str:
    return url.replace("http://", f"http://reader:{SECRET}@")


def http_date(when: datetime) -> str:
    return format_datetime(when, usegmt=True)


def echo_password(path: str, query: dict[str, str], headers: Mapping[str, str]) -> Reply:
    """A server that quotes the credentials it was sent back in its error page."""
    auth = headers.get("authorization", "")
    basic = auth.removeprefix("Basic ")
    said = base64.b64decode(basic).decode() if basic != auth else auth
    return 401, {}, f"bad credentials: {said}".encode()


def held(kind: str) -> tuple[str, ...]:
    """The secrets a source of `kind` holds: Hugging Face its token, the others a URL password."""
    return (TOKEN,) if kind == "huggingface" else (SECRET,)


# Retry-After as seconds or a date, on 429 and 5xx, capped ---------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [429, 503])
async def test_i14_retry_after_date_is_honoured(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, kind: str, status: int
) -> None:
    polled = build(kind, http_server, client, backoff=1.0)
    later = http_date(NOW + timedelta(seconds=30))
    http_server.respond(polled.path, status=status, headers={"Retry-After": later})
    http_server.respond(polled.path, body=BODIES[kind])
    await polled.fetch()
    assert polled.sleeps.delays == [30.0]  # measured from the poll's `now`, not backoff


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [429, 502, 503])
async def test_i14_retry_after_seconds_is_honoured(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, kind: str, status: int
) -> None:
    polled = build(kind, http_server, client, backoff=1.0)
    http_server.respond(polled.path, status=status, headers={"Retry-After": "7"})
    http_server.respond(polled.path, body=BODIES[kind])
    await polled.fetch()
    assert polled.sleeps.delays == [7.0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "retry_after", ["3600", http_date(NOW + timedelta(days=2))], ids=["seconds", "date"]
)
async def test_i14_retry_after_is_capped_at_max_wait(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, kind: str, retry_after: str
) -> None:
    polled = build(kind, http_server, client, max_wait=60.0)
    http_server.respond(polled.path, status=503, headers={"Retry-After": retry_after})
    http_server.respond(polled.path, body=BODIES[kind])
    await polled.fetch()
    assert polled.sleeps.delays == [60.0]


@pytest.mark.parametrize("kind", KINDS)
async def test_i14_a_past_or_garbled_retry_after_falls_back_to_backoff(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, kind: str
) -> None:
    polled = build(kind, http_server, client, backoff=1.0)
    past = http_date(NOW - timedelta(hours=1))
    http_server.respond(polled.path, status=503, headers={"Retry-After": past})
    http_server.respond(polled.path, status=503, headers={"Retry-After": "soon\x07"})
    http_server.respond(polled.path, body=BODIES[kind])
    await polled.fetch()
    assert polled.sleeps.delays[0] == 0.0  # the date has passed: retry at once
    assert 2.0 <= polled.sleeps.delays[1] <= 3.0  # unreadable: the second backoff step


# Secrets never in errors or logs --------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_i14_secrets_scrubbed_from_a_refusal(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, kind: str
) -> None:
    polled = build(kind, http_server, client)
    http_server.route(polled.path, echo_password)
    with pytest.raises(SourceError) as info:
        await polled.fetch()
    assert info.value.status == 401 and info.value.transient is False
    assert "bad credentials" in str(info.value) and "HTTP 401" in str(info.value)
    for secret in held(kind):
        assert secret not in str(info.value) and secret not in repr(polled.source)


@pytest.mark.parametrize("kind", KINDS)
async def test_i14_secrets_scrubbed_from_retries_and_their_log_lines(
    http_server: LocalHTTPServer,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    polled = build(kind, http_server, client, retries=2)
    body = f"upstream says {' '.join(held(kind))}"
    http_server.respond(polled.path, status=503, body=body, times=None)
    with caplog.at_level(logging.INFO, logger="digestd"), pytest.raises(SourceError) as info:
        await polled.fetch()
    assert info.value.transient is True and info.value.status == 503
    assert "gave up after 3 attempts" in str(info.value)
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2
    for text in (str(info.value), *retries):
        assert all(secret not in text for secret in held(kind)), text
        masked = "http://127.0.0.1" if kind == "huggingface" else "http://***@127.0.0.1"
        assert masked in text, text  # the URL is still named, its userinfo masked


@pytest.mark.parametrize("kind", KINDS)
async def test_i14_secrets_scrubbed_from_a_parse_failure(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, kind: str
) -> None:
    polled = build(kind, http_server, client)
    http_server.respond(polled.path, body=f"<oops {' '.join(held(kind))}".encode())
    with pytest.raises(SourceError) as info:
        await polled.fetch()
    assert info.value.transient is False
    for secret in held(kind):
        assert secret not in str(info.value), str(info.value)


# Size cap and conditional GETs ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_i14_every_source_caps_a_reply(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, kind: str
) -> None:
    polled = build(kind, http_server, client, max_body=4096)
    http_server.respond(polled.path, body=b" " * 100_000, times=None)
    with pytest.raises(SourceError, match="larger than max_bytes=4096") as info:
        await polled.fetch()
    assert info.value.transient is False and polled.sleeps.delays == []


@pytest.mark.parametrize("kind", ["arxiv", "arxiv_rss", "feed"])
async def test_i14_conditional_get_for_every_xml_source(
    http_server: LocalHTTPServer, client: httpx.AsyncClient, kind: str
) -> None:
    cache = Cache()
    polled = build(kind, http_server, client, cache=cache)
    http_server.respond(polled.path, body=BODIES[kind], headers={"ETag": '"v1"'})
    http_server.respond(polled.path, status=304)
    first = await polled.fetch()
    assert first.papers and [v.etag for v in first.validators] == ['"v1"']
    cache.saved.update({v.url: v for v in first.validators})
    second = await polled.fetch()
    assert second.not_modified and not second.papers
    assert http_server.requests_to(polled.path)[-1].headers["if-none-match"] == '"v1"'


# End to end: `run --once` and `status` with four hostile peers ---------------------------------


def test_i14_run_once_every_source_kind_keeps_its_secrets(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: Any
) -> None:
    """Each kind's server echoes the credentials it got; nothing of them reaches any output."""
    for path in PATHS.values():
        http_server.route(path, echo_password)
    config = write_run_config(tmp_path, http_server.url, smtp_server.port)
    run = [sys.executable, "-m", "digestd", "--config", str(config)]
    once = subprocess.run([*run, "run", "--once"], capture_output=True, text=True, timeout=30)
    status = subprocess.run([*run, "status"], capture_output=True, text=True, timeout=30)
    assert once.returncode == 1, once.stderr  # four failed polls, each said so
    with sqlite3.connect(tmp_path / "var" / "digestd.sqlite3") as db:
        errors = dict(db.execute("SELECT source, error FROM polls WHERE ok = 0").fetchall())
    assert sorted(errors) == sorted(KINDS)
    for kind, error in errors.items():
        assert "HTTP 401" in error and "bad credentials" in error, (kind, error)
    for text in (once.stdout, once.stderr, status.stdout, status.stderr, *errors.values()):
        assert SECRET not in text and TOKEN not in text and "Traceback" not in text, text
    auth = [r.headers.get("authorization", "") for r in http_server.requests]
    assert f"Bearer {TOKEN}" in auth  # the token was sent, only never shown


def write_run_config(tmp: Path, server: str, smtp_port: int) -> Path:
    """test_service's config with its one source replaced by one source of every HTTP kind."""
    subscribers = 'subscribers:\n  - email: alice@example.org\n    rules:\n      - any: ["kv"]\n'
    config = write_config(tmp, source=server, smtp_port=smtp_port, subscribers=subscribers)
    base = with_password(server)
    sources = f"""\
sources:
  - kind: huggingface
    url: {server}{PATHS["huggingface"]}
    token: {TOKEN}
    retries: 0
  - kind: arxiv
    url: {base}{PATHS["arxiv"]}
    categories: [cs.LG]
    retries: 0
    min_interval: 0s
  - kind: arxiv_rss
    url: {base}/rss/
    categories: [cs.LG]
    retries: 0
    min_interval: 0s
  - kind: feed
    url: {base}{PATHS["feed"]}
    retries: 0
"""
    config.write_text(sources + "state:" + config.read_text().split("state:", 1)[1])
    return config
