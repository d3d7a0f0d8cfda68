"""`like:` lists become imported likes: files read, missing papers fetched once from a local arXiv
API (batched id_list, throttled), stored as old papers, clicks never overwritten."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from httpserver import LocalHTTPServer

from digestd.core.model import Paper, Subscriber
from digestd.pipeline.likes import import_likes
from digestd.pipeline.paper_merge import record_papers
from digestd.sources import arxiv
from digestd.sources.http import HttpGetter, Throttle, make_client
from digestd.store.sqlite import Store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
API = "/api/query"
NOW = datetime(2026, 8, 12, 9, 0, tzinfo=UTC)
REPLY = (FIXTURES / "arxiv_api_query.xml").read_bytes()  # 2608.20001, 2608.09888, 2002.00741


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.delays: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.delays.append(round(seconds, 3))
        self.t += seconds


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.sqlite3")


def getter(client: httpx.AsyncClient, clock: Clock) -> HttpGetter:
    throttle = Throttle(3.0, clock=clock, sleep=clock.sleep)
    return HttpGetter(client, name="arxiv-likes", sleep=clock.sleep, throttle=throttle)


async def test_likes_from_yaml_and_a_bibtex_file_fetch_the_missing_papers_once(
    http_server: LocalHTTPServer, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    http_server.respond(API, body=REPLY, times=None)
    (tmp_path / "lib.bib").write_text(
        "@article{a, title={MoE}, eprint={2608.20001}, archivePrefix={arXiv}}\n"
        "@misc{b, title={Old}, url={https://arxiv.org/abs/2002.00741v1}}\n"
        "@book{c, title={A book}}\n"
    )
    record_papers(store, [Paper(id="2608.09888", title="Known", abstract="x")], seen_at=NOW)
    store.ratings.rate("bob@example.org", "2608.20001", -1, at=NOW)  # a click: it stays
    subs = [
        Subscriber(
            email="Ada@Example.org", likes=("2608.09888", "2699.00001"), like_files=("lib.bib",)
        ),
        Subscriber(email="bob@example.org", likes=("2608.20001",)),
    ]
    monkeypatch.setattr(arxiv, "ID_BATCH", 2)  # two requests for three missing ids
    clock = Clock()
    async with make_client(5.0) as client:
        report = await import_likes(
            store, getter(client, clock), subs, now=NOW, base=tmp_path, url=http_server.url + API
        )
    requests = http_server.requests_to(API)
    assert [r.query["id_list"] for r in requests] == ["2699.00001,2608.20001", "2002.00741"]
    assert clock.delays == [3.0]  # arXiv's pace between the two
    assert report.fetched == 2 and report.unknown == ("2699.00001",) and report.skipped == 1
    assert report.problems == () and report.fetch_error is None
    assert store.ratings.likes("ada@example.org") == ["2002.00741", "2608.09888", "2608.20001"]
    assert [r.value for r in store.ratings.ratings("bob@example.org")] == [-1]
    (old,) = store.papers.known(["2002.00741"]).values()
    assert old.first_seen_at is not None and old.first_seen_at < NOW  # never a "new" paper
    async with make_client(5.0) as client:  # a second run fetches nothing known
        again = await import_likes(
            store,
            getter(client, Clock()),
            subs[1:],
            now=NOW,
            base=tmp_path,
            url=http_server.url + API,
        )
    assert again.fetched == 0 and len(http_server.requests_to(API)) == 2


async def test_broken_and_missing_files_are_reported_and_the_rest_goes_on(
    store: Store, tmp_path: Path
) -> None:
    record_papers(store, [Paper(id="2608.09888", title="Known", abstract="x")], seen_at=NOW)
    (tmp_path / "bad.txt").write_text("2608.09888\nnot an id\n")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    sub = Subscriber(
        email="ada@example.org",
        likes=("2608.09888",),
        like_files=("bad.txt", "nowhere.bib", "latin1.txt"),
    )
    report = await import_likes(store, None, [sub], now=NOW, base=tmp_path)
    shown = [str(p) for p in report.problems]
    assert shown[0] == "bad.txt:2:1: like: 'not an id' is not an arXiv id (like 2401.00001)"
    assert shown[1].startswith("nowhere.bib: like: no such file")
    assert shown[2] == "latin1.txt: like: not UTF-8 text (byte 3)"
    assert store.ratings.likes("ada@example.org") == ["2608.09888"]


async def test_an_unreachable_api_leaves_the_stored_likes_and_says_why(
    http_server: LocalHTTPServer, store: Store, tmp_path: Path
) -> None:
    http_server.respond(API, status=400, body=b"bad request", times=None)
    sub = Subscriber(email="ada@example.org", likes=("2608.20001",))
    async with make_client(5.0) as client:
        report = await import_likes(
            store, getter(client, Clock()), [sub], now=NOW, base=tmp_path, url=http_server.url + API
        )
    assert report.fetch_error is not None and "400" in report.fetch_error
    assert report.liked == 0 and store.ratings.likes("ada@example.org") == []
