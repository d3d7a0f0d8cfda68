"""Several sources through the real pipeline: one paper whatever the source, failures kept apart,
304s that store nothing, `send_empty` notes, per-source status and the settings that name them."""

from __future__ import annotations

import argparse
import email
import email.policy
import logging
import mailbox
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from httpserver import LocalHTTPServer, Reply

from digestd import pipeline
from digestd.cli.status import cmd_status
from digestd.config.settings import Settings, load_settings
from digestd.core.errors import ConfigError
from digestd.deliver.transports.maildir import MaildirMailer
from digestd.mail.render import make_environments
from digestd.pipeline import Audience, Deps, Options
from digestd.rules.subscribers import load_subscribers
from digestd.sources import HuggingFaceSource, Source, make_client
from digestd.sources.arxiv import ArxivApiSource
from digestd.sources.arxiv_rss import ArxivRssSource
from digestd.sources.feed import FeedSource
from digestd.sources.http import HttpGetter
from digestd.store.sqlite import Store

FIXTURES = Path(__file__).parents[1] / "fixtures"
NOW = datetime(2026, 8, 12, 9, 0, tzinfo=UTC)
EVERYTHING = "subscribers:\n  - email: bob@example.org\n    max_papers: 50\n"


async def no_sleep(seconds: float) -> None:
    return None


def serve_all(server: LocalHTTPServer, *, skip: tuple[str, ...] = ()) -> None:
    """Every source's fixture, forever; paths in `skip` are left for the test to script."""
    hf = (FIXTURES / "hf_daily_papers_real_sample.json").read_bytes()
    server.route(
        "/api/daily_papers",
        lambda p, q, h: (200, {}, hf if q.get("date") == "2026-08-11" else b"[]"),
    )
    for path, name in [
        ("/api/query", "arxiv_api_query.xml"),
        ("/rss/cs.LG", "arxiv_rss_cs_lg.xml"),
        ("/feed", "feed_atom.xml"),
    ]:
        if path not in skip:
            server.respond(path, body=(FIXTURES / name).read_bytes(), times=None)


def sources(server: LocalHTTPServer, store: Store) -> tuple[Source, ...]:
    def get(name: str) -> HttpGetter:
        return HttpGetter(make_client(5.0), name=name, sleep=no_sleep, cache=store.polls)

    return (
        HuggingFaceSource(get("hf"), url=server.url + "/api/daily_papers", name="hf"),
        ArxivApiSource(get("arxiv-cs"), query="cat:cs.LG", url=server.url + "/api/query",
                       name="arxiv-cs"),
        ArxivRssSource(get("arxiv-rss"), categories=["cs.LG"], base_url=server.url + "/rss/",
                       announce_types=["new", "cross", "replace"], name="arxiv-rss"),
        FeedSource(get("lab"), url=server.url + "/feed", name="lab"),
    )  # fmt: skip


def make_deps(tmp_path: Path, server: LocalHTTPServer, subs: str = EVERYTHING) -> Deps:
    store = Store(tmp_path / "state.sqlite3")
    all_sources = sources(server, store)
    deps = Deps(
        store=store,
        source=all_sources[0],
        sources=all_sources,
        mailer=MaildirMailer(tmp_path / "mail"),
        audience=Audience.of(load_subscribers(subs, file="subscribers.yaml")),
        envs=make_environments(),
        options=Options(sender="Paper Digest <digest@example.org>"),
    )
    pipeline.register(deps, now=NOW - timedelta(days=1))
    return deps


async def close(deps: Deps) -> None:
    for source in deps.all_sources():
        await source.aclose()  # type: ignore[attr-defined]
    deps.store.close()


def inbox(tmp_path: Path) -> list[EmailMessage]:
    box = mailbox.Maildir(tmp_path / "mail", create=False)
    return [
        email.message_from_bytes(box.get_bytes(k), policy=email.policy.default)  # type: ignore[misc]
        for k in sorted(box.keys())
    ]


def text_of(message: EmailMessage) -> str:
    return message.get_body(("plain",)).get_content()  # type: ignore[union-attr,no-any-return]


async def send(deps: Deps, now: datetime) -> int:
    pipeline.compose(deps, now=now, once=True)
    return (await pipeline.deliver_due(deps, now=now, clock=lambda: now)).sent


async def test_one_paper_whatever_the_source_and_never_twice(
    tmp_path: Path, http_server: LocalHTTPServer
) -> None:
    serve_all(http_server)
    deps = make_deps(tmp_path, http_server)
    try:
        # HF and the arXiv API first: 2608.09888 is in both (HF, and v2 from arXiv).
        report = await pipeline.ingest(deps, now=NOW, only=["hf", "arxiv-cs"])
        assert report.ok and [r.source for r in report.per_source] == ["hf", "arxiv-cs"]
        assert report.n_items == 4 + 3 and report.n_new == 4 + 2
        assert await send(deps, NOW) == 1
        # Later: the RSS (with a v3 replacement of 2608.09888 and 2608.20001 again) and a blog.
        later = NOW + timedelta(hours=1)
        report = await pipeline.ingest(deps, now=later, only=["arxiv-rss", "lab"])
        assert [r.n_new for r in report.per_source] == [1, 1]  # 2608.20002 and the blog post
        assert await send(deps, later) == 1
        # Everything again: nothing is new, nothing is sent.
        report = await pipeline.ingest(deps, now=later + timedelta(hours=1))
        assert report.ok and report.n_new == 0
        assert await send(deps, later + timedelta(hours=1)) == 0

        merged = deps.store.papers.get(["2608.09888"])[0]
        assert merged.upvotes == 781  # from Hugging Face, not zeroed by arXiv
        assert merged.categories == ("cs.LG", "cs.AI")  # from arXiv
        assert merged.version == 3 and merged.title.endswith("Third Take")  # newest version
        assert merged.sources == ("hf", "arxiv-cs", "arxiv-rss")
    finally:
        await close(deps)

    first, second = inbox(tmp_path)
    one, two = text_of(first), text_of(second)
    assert one.count("https://huggingface.co/papers/2608.09888") == 1  # HF page when known
    assert "https://arxiv.org/abs/2608.20001" in one  # else the arXiv abstract
    assert "PDF: https://arxiv.org/pdf/2608.20001" in one
    assert "2608.09888" not in two and "2608.20001" not in two  # not re-sent as v3 or via RSS
    assert "https://arxiv.org/abs/2608.20002" in two
    assert http_server.url + "/posts/fpga-accelerator" in two  # relative link resolved


async def test_new_papers_from_a_second_source_trigger_alerts_only_once(
    tmp_path: Path, http_server: LocalHTTPServer
) -> None:
    serve_all(http_server)
    subs = (
        "subscribers:\n  - email: a@example.org\n    rules:\n"
        "      - any: [kv cache]\n        alert: true\n"
    )
    deps = make_deps(tmp_path, http_server, subs)
    try:
        assert (await pipeline.ingest(deps, now=NOW, only=["arxiv-cs"])).n_alerts == 1
        # The RSS and the blog list 2608.20001 too: known already, no second alert.
        assert (await pipeline.ingest(deps, now=NOW, only=["arxiv-rss", "lab"])).n_alerts == 0
    finally:
        await close(deps)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ((200, {}, b"<?xml version='1.0'?><rss><channel><item>"), "truncated body"),
        ((200, {"Content-Type": "text/html"}, b"<!DOCTYPE html><html>oops</html>"), "HTML page"),
        ((200, {}, b""), "empty body"),
        ((200, {}, "<rss><channel><title>é</title></channel></rss>".encode("cp1252")), "utf-8"),
        ((200, {}, b"<rss><channel><item></channel></rss>"), "XML error"),
        ((500, {}, b"boom"), "HTTP 500"),
    ],
)
async def test_a_malformed_feed_fails_only_its_source(
    tmp_path: Path,
    http_server: LocalHTTPServer,
    caplog: pytest.LogCaptureFixture,
    reply: Reply,
    reason: str,
) -> None:
    serve_all(http_server)
    http_server.route("/bad", lambda p, q, h: reply)
    deps = make_deps(tmp_path, http_server)
    bad = FeedSource(
        HttpGetter(make_client(5.0), name="bad", sleep=no_sleep, retries=0), url=http_server.url
        + "/bad", name="bad",
    )  # fmt: skip
    deps.sources = (bad, *deps.sources)
    try:
        with caplog.at_level(logging.INFO, logger="digestd"):
            report = await pipeline.ingest(deps, now=NOW)
        assert not report.ok and report.error is not None and reason in report.error
        assert [r.ok for r in report.per_source] == [False, True, True, True, True]
        failures = [r for r in caplog.records if "poll failed" in r.getMessage()]
        assert len(failures) == 1 and "source=bad" in failures[0].getMessage()
        assert reason in failures[0].getMessage()
        assert not any(
            p.sources == ("bad",) for p in deps.store.papers.candidates("x@y.org", since=NOW)
        )
        assert deps.store.papers.count() == 4 + 2 + 1 + 1  # hf, arxiv, rss (cross), blog post
        (bad_status,) = [s for s in deps.store.polls.source_status(["bad"]) if s.source == "bad"]
        assert bad_status.error is not None and reason in bad_status.error
        assert bad_status.last_success_at is None
    finally:
        await close(deps)


async def test_a_304_stores_nothing_new_and_counts_as_a_successful_poll(
    tmp_path: Path, http_server: LocalHTTPServer
) -> None:
    body = (FIXTURES / "arxiv_rss_cs_lg.xml").read_bytes()

    def rss(path: str, query: dict[str, str], headers: Mapping[str, str]) -> Reply:
        if headers.get("if-none-match") == '"day-1"':
            return 304, {}, b""
        return 200, {"ETag": '"day-1"'}, body

    http_server.route("/rss/cs.LG", rss)
    deps = make_deps(tmp_path, http_server)
    try:
        first = await pipeline.ingest(deps, now=NOW, only=["arxiv-rss"])
        assert first.n_new == 3
        url = http_server.url + "/rss/cs.LG"
        validators = deps.store.polls.get_validators(url)
        assert validators is not None and validators.etag == '"day-1"'
        second = await pipeline.ingest(deps, now=NOW + timedelta(hours=1), only=["arxiv-rss"])
        (one,) = second.per_source
        assert one.ok and one.not_modified and one.n_items == 0
        assert deps.store.papers.count() == 3
        (status,) = deps.store.polls.source_status(["arxiv-rss"])
        assert status.last_success_at == NOW + timedelta(hours=1)
        assert status.last_new_at == NOW
    finally:
        await close(deps)


async def test_validators_are_not_saved_when_the_poll_fails(
    tmp_path: Path, http_server: LocalHTTPServer
) -> None:
    http_server.respond("/rss/cs.LG", body=b"<rss><channel><item>", headers={"ETag": '"x"'})
    deps = make_deps(tmp_path, http_server)
    try:
        assert not (await pipeline.ingest(deps, now=NOW, only=["arxiv-rss"])).ok
        assert deps.store.polls.get_validators(http_server.url + "/rss/cs.LG") is None
    finally:
        await close(deps)


async def test_send_empty_names_the_sources_that_had_nothing_new(
    tmp_path: Path, http_server: LocalHTTPServer
) -> None:
    serve_all(http_server, skip=("/rss/cs.LG", "/api/query"))
    http_server.route("/rss/cs.LG", lambda p, q, h: (200, {}, b"<rss><channel/></rss>"))
    subs = (
        "subscribers:\n  - email: quiet@example.org\n    send_empty: true\n    rules:\n"
        "      - any: [zebrafish]\n  - email: silent@example.org\n    rules:\n"
        "      - any: [zebrafish]\n"
    )
    deps = make_deps(tmp_path, http_server, subs)
    deps.sources = deps.sources[:3]  # hf, arxiv-cs, arxiv-rss
    http_server.respond("/api/query", status=400, body=b"bad", times=None)
    try:
        await pipeline.ingest(deps, now=NOW)
        assert await send(deps, NOW) == 1  # only the subscriber who asked for the note
    finally:
        await close(deps)
    (note,) = inbox(tmp_path)
    assert "quiet@" in str(note["To"]) and "nothing new matched" in str(note["Subject"])
    text = text_of(note)
    assert "Sources with nothing new: arxiv-cs, arxiv-rss." in text
    assert "hf: 4 new papers" in text
    assert "arxiv-cs: 0 new papers; failing: GET" in text


async def test_status_command_shows_each_source(
    tmp_path: Path, http_server: LocalHTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve_all(http_server, skip=("/api/query",))
    http_server.respond("/api/query", status=404, body=b"gone", times=None)
    config = tmp_path / "digestd.yaml"
    config.write_text(
        f"""sources:
  - name: hf
    kind: huggingface
    url: {http_server.url}/api/daily_papers
  - name: arxiv-cs
    kind: arxiv
    url: {http_server.url}/api/query
    categories: [cs.LG]
  - name: arxiv-rss
    kind: arxiv_rss
    url: {http_server.url}/rss/
    categories: [cs.LG]
    poll_every: 6h
state: state.sqlite3
subscribers: subscribers.yaml
delivery: {{kind: maildir, path: mail, from: "D <d@example.org>"}}
"""
    )
    (tmp_path / "subscribers.yaml").write_text(EVERYTHING)
    settings = load_settings(config)
    from digestd.service import wiring as app

    deps = app.open_deps(settings, now=NOW)
    try:
        await pipeline.ingest(deps, now=NOW)
    finally:
        await app.close(deps)
    # cmd_status, not cli.main: main would replace the root log handlers for the whole session.
    assert cmd_status(settings, argparse.Namespace()) == 0
    out = capsys.readouterr().out
    assert (
        "  hf: last successful poll 2026-08-12 09:00 UTC; last new paper 2026-08-12 09:00 UTC; ok"
        in out
    )
    assert "  arxiv-cs: last successful poll never; last new paper never; ERROR GET" in out
    assert "HTTP 404" in out
    assert (
        "  arxiv-rss: last successful poll 2026-08-12 09:00 UTC; last new paper 2026-08-12" in out
    )


# Settings -----------------------------------------------------------------------------------


def test_single_source_means_a_one_element_list_named_after_its_kind() -> None:
    (only,) = Settings(source={"kind": "file", "url": "x.json"}).all_sources()  # type: ignore[arg-type]
    assert (only.key, only.kind) == ("file", "file")


def test_sources_list_with_per_kind_defaults() -> None:
    s = Settings(
        sources=[  # type: ignore[list-item]
            {"name": "arxiv-cs", "kind": "arxiv", "categories": ["cs.LG"], "poll_every": "6h"},
            {"kind": "arxiv_rss", "categories": ["cs.LG", "cs.AI"]},
            {"name": "trending", "kind": "huggingface", "listing": "trending"},
            {"name": "blog", "kind": "feed", "url": "https://lab.example.org/feed.atom"},
        ]
    )
    arxiv, rss, trending, blog = s.all_sources()
    assert arxiv.url == "https://export.arxiv.org/api/query"
    assert arxiv.poll_every == timedelta(hours=6)
    assert (rss.key, rss.url, rss.announce_types) == (
        "arxiv_rss",
        "https://rss.arxiv.org/rss/",
        ["new", "cross"],
    )
    assert trending.listing == "trending" and blog.key == "blog"


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("sources:\n  - kind: arxiv\n", "needs categories or a query"),
        ("sources:\n  - kind: arxiv_rss\n", "needs categories"),
        ("sources:\n  - kind: feed\n", "needs a url"),
        ("sources:\n  - kind: arxiv_rss\n    categories: [cs.LG]\n    announce_types: [old]\n",
         "announce_types"),
        ("sources:\n  - {name: a, kind: huggingface}\n  - {name: a, kind: huggingface}\n",
         "repeated: a"),
        ("source: {kind: huggingface}\nsources:\n  - {kind: huggingface}\n", "not both"),
        ("sources: []\n", "sources"),
        ("sources:\n  - {name: 'no spaces', kind: huggingface}\n", "name"),
    ],
)  # fmt: skip
def test_bad_sources_settings(tmp_path: Path, yaml: str, message: str) -> None:
    path = tmp_path / "digestd.yaml"
    path.write_text(yaml)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


async def test_daemon_schedules_each_source_at_its_own_interval(
    tmp_path: Path, http_server: LocalHTTPServer
) -> None:
    from digestd.service.daemon import Daemon

    deps = make_deps(tmp_path, http_server)
    try:
        daemon = Daemon(
            deps,
            poll_every=timedelta(minutes=30),
            intervals={"arxiv-cs": timedelta(hours=6), "arxiv-rss": timedelta(hours=2)},
        )
        daemon._schedule()
        jobs = {
            j.id: getattr(j.trigger, "interval", None) for j in daemon.schedule.scheduler.get_jobs()
        }
        assert jobs["poll hf"] == timedelta(minutes=30)
        assert jobs["poll arxiv-cs"] == timedelta(hours=6)
        assert jobs["poll arxiv-rss"] == timedelta(hours=2)
        assert jobs["poll lab"] == timedelta(minutes=30)
    finally:
        await close(deps)


def test_the_readme_config_with_several_sources_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("### Several sources, one paper")[1].split("```yaml\n")[1].split("```")[0]
    path = tmp_path / "digestd.yaml"
    path.write_text(block)
    names = [(s.key, s.kind) for s in load_settings(path).all_sources()]
    assert names == [
        ("hf", "huggingface"), ("arxiv-cs", "arxiv"), ("arxiv-rss", "arxiv_rss"), ("lab-blog", "feed"),
    ]  # fmt: skip


async def test_an_unsubscribed_address_gets_no_empty_note(
    tmp_path: Path, http_server: LocalHTTPServer
) -> None:
    serve_all(http_server)
    subs = "subscribers:\n  - email: quiet@example.org\n    send_empty: true\n    rules:\n"
    subs += "      - any: [zebrafish]\n"
    deps = make_deps(tmp_path, http_server, subs)
    deps.store.subscribers.suppress("quiet@example.org", at=NOW, via="test")
    try:
        await pipeline.ingest(deps, now=NOW)
        assert await send(deps, NOW) == 0
    finally:
        await close(deps)
    assert not (tmp_path / "mail").exists() or inbox(tmp_path) == []
