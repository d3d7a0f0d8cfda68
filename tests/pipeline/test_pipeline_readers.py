"""Self-registered readers in the pipeline (issue 15): one merged subscriber set (YAML wins), a
reader's change rebuilding only the readers' matcher off the event loop, pauses with skip or
catch-up, against a real store, a file source and a Maildir."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_pipeline import inbox, make_deps, papers_json

from digestd import pipeline
from digestd.pipeline import Deps, readers, webreaders
from digestd.rules.readers import reader_spec
from digestd.sources import FileSource

MON_0600 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
YAML = """\
defaults:
  schedule: "0 7 * * *"
  max_papers: 50
rule_sets:
  kv:
    - any: ["kv cache"]
subscribers:
  - email: alice@example.org
    name: Alice
    rules: [{any: [attention]}]
"""
CAROL = "carol@example.org"


def join(deps: Deps, email: str, spec: dict[str, object], *, now: datetime) -> None:
    """A reader signs up and confirms (the store's side of the web pages)."""
    deps.store.readers.add_pending(email, name=email.split("@")[0].title(), spec=spec, at=now)
    deps.store.readers.confirm(email, at=now)


def recipients(tmp_path: Path) -> list[str]:
    return sorted(str(m["To"]) for m in inbox(tmp_path))


def titles(tmp_path: Path, to: str) -> set[str]:
    found = set()
    for m in inbox(tmp_path):
        if to in str(m["To"]):
            found |= {line for line in m.get_body(("plain",)).get_content().splitlines()}  # type: ignore[union-attr]
    return found


async def run_once(deps: Deps, now: datetime) -> int:
    pipeline.compose(deps, now=now, once=True)
    return (await pipeline.deliver_due(deps, now=now, clock=lambda: now)).sent


@pytest.fixture
def deps(tmp_path: Path) -> Deps:
    return make_deps(tmp_path, YAML, now=MON_0600)


async def test_yaml_and_web_readers_are_one_set_and_yaml_wins(deps: Deps, tmp_path: Path) -> None:
    join(deps, CAROL, reader_spec(topics=["kv"]), now=MON_0600)
    join(deps, "ALICE@example.org", reader_spec(keywords=["diffusion"]), now=MON_0600)
    pipeline.register(deps, now=MON_0600)
    served = [(s.email, s.name) for s in deps.subscribers.subscribers]
    assert served == [("alice@example.org", "Alice"), (CAROL, "Carol")]
    await pipeline.ingest(deps, now=MON_0600)
    assert await run_once(deps, MON_0600) == 2
    carol = "\n".join(titles(tmp_path, CAROL))
    assert "KV Cache" in carol or "KV cache" in carol
    assert "Task-KV" in carol and "SpAtten" not in carol  # the topic's rules, not Alice's


async def test_a_readers_change_rebuilds_only_their_matcher_off_the_loop(
    deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    yaml_matcher = deps.audience.matcher
    threads: list[int] = []
    build = webreaders.build_web

    def spy(*args: object) -> object:
        threads.append(threading.get_ident())
        return build(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(readers, "build_web", spy)
    deps.store.readers.add_pending(
        CAROL, name="Carol", spec=reader_spec(topics=["kv"]), at=MON_0600
    )
    confirmed = await readers.confirm_reader(deps, CAROL, now=MON_0600)
    assert confirmed is not None and confirmed.state == "active"
    assert deps.audience.matcher is yaml_matcher  # the YAML's index is not rebuilt
    assert threads and threads[0] != threading.get_ident()  # built in a worker thread
    assert deps.subscribers.by_email(CAROL) is not None
    assert deps.audience.registered[CAROL] == MON_0600
    await readers.edit_reader(deps, CAROL, reader_spec(keywords=["diffusion"]), now=MON_0600)
    sub = deps.subscribers.by_email(CAROL)
    assert sub is not None and sub.rules[0].any[0].text == "diffusion"
    assert readers.remove_reader(deps, CAROL, now=MON_0600)
    assert deps.subscribers.by_email(CAROL) is None and deps.audience.web is None


async def test_a_confirmed_readers_first_digest_covers_lookback(deps: Deps, tmp_path: Path) -> None:
    await pipeline.ingest(deps, now=MON_0600 - timedelta(days=2))  # papers from before they joined
    join(deps, CAROL, reader_spec(topics=["kv"]), now=MON_0600)
    readers.refresh_readers(deps, now=MON_0600)
    assert (
        pipeline.compose(deps, now=MON_0600 + timedelta(minutes=30)).n_queued == 0
    )  # 07:00 not yet
    assert pipeline.compose(deps, now=MON_0600 + timedelta(hours=1)).n_queued == 2
    await pipeline.deliver_due(deps, now=MON_0600 + timedelta(hours=1), clock=lambda: MON_0600)
    assert CAROL in " ".join(recipients(tmp_path))


async def test_an_edit_applies_from_the_next_digest_and_resends_nothing(
    deps: Deps, tmp_path: Path
) -> None:
    join(deps, CAROL, reader_spec(topics=["kv"]), now=MON_0600)
    readers.refresh_readers(deps, now=MON_0600)
    await pipeline.ingest(deps, now=MON_0600)
    assert await run_once(deps, MON_0600) == 2
    await readers.edit_reader(
        deps, CAROL, reader_spec(topics=["kv"], keywords=["attention"]), now=MON_0600
    )
    later = MON_0600 + timedelta(minutes=1)
    assert await run_once(deps, later) == 1  # attention papers, not the kv ones again
    bodies = [
        m.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        for m in inbox(tmp_path)
        if CAROL in str(m["To"])
    ]
    first = [b for b in bodies if "Task-KV" in b]
    second = [b for b in bodies if "SpAtten" in b]
    assert len(bodies) == 2 and len(first) == 1 and len(second) == 1  # Task-KV never twice
    assert "SpAtten" not in first[0] and "Task-KV" not in second[0]


def _ingest_file(deps: Deps, tmp_path: Path, *, offset: int, count: int) -> None:
    deps.source = FileSource(papers_json(tmp_path, count, offset=offset))


@pytest.mark.parametrize("catch_up", [False, True])
async def test_a_paused_reader_gets_nothing_then_skips_or_catches_up(
    deps: Deps, tmp_path: Path, catch_up: bool
) -> None:
    join(deps, CAROL, reader_spec(keywords=["attention"], alerts=True), now=MON_0600)
    readers.refresh_readers(deps, now=MON_0600)
    readers.pause_reader(deps.store, CAROL, weeks=1, now=MON_0600, catch_up=catch_up)
    readers.pause_reader(
        deps.store, "alice@example.org", weeks=1, now=MON_0600
    )  # a YAML reader too
    _ingest_file(deps, tmp_path, offset=0, count=20)
    during = MON_0600 + timedelta(days=1)
    await pipeline.ingest(deps, now=during)  # alerts owed for Carol's alert rule: not sent
    assert await run_once(deps, during) == 0
    resumed = MON_0600 + timedelta(days=3)
    assert readers.resume_reader(deps.store, CAROL, now=resumed)
    _ingest_file(deps, tmp_path, offset=20, count=34)
    await pipeline.ingest(deps, now=resumed + timedelta(minutes=1))
    pipeline.queue_owed_alerts(deps, now=resumed + timedelta(minutes=1))  # nothing owed twice
    assert await run_once(deps, resumed + timedelta(minutes=2)) >= 1
    got = "\n".join(titles(tmp_path, CAROL))
    assert "FlashAttention-4" in got  # after the pause
    assert ("SpAtten" in got) is catch_up  # during the pause: skipped, or in the catch-up digest
    assert "alice" not in " ".join(recipients(tmp_path))  # still paused
    assert deps.store.readers.catch_ups() == {}


def test_a_pause_is_one_to_eight_weeks(deps: Deps) -> None:
    with pytest.raises(ValueError, match="1 to 8 weeks"):
        readers.pause_reader(deps.store, CAROL, weeks=9, now=MON_0600)
    with pytest.raises(ValueError, match="1 to 8 weeks"):
        readers.pause_reader(deps.store, CAROL, weeks=0, now=MON_0600)


def test_a_spec_that_no_longer_validates_drops_the_topic_not_the_reader(deps: Deps) -> None:
    join(deps, CAROL, {"use": ["gone"], "rules": [{"any": ["diffusion"]}]}, now=MON_0600)
    join(deps, "dan@example.org", {"rules": [{"query": "(broken"}]}, now=MON_0600)
    readers.refresh_readers(deps, now=MON_0600)
    assert [s.email for s in deps.subscribers.subscribers][1:] == [CAROL]


async def test_a_reload_keeps_the_web_readers_and_lets_yaml_win(deps: Deps) -> None:
    join(deps, CAROL, reader_spec(topics=["kv"]), now=MON_0600)
    readers.refresh_readers(deps, now=MON_0600)
    from digestd.rules.subscribers import load_subscribers

    yaml = load_subscribers(YAML + f"  - email: {CAROL}\n    name: Admin's Carol\n", file="s.yaml")
    pipeline.swap_subscribers(deps, yaml, now=MON_0600)
    assert [(s.email, s.name) for s in deps.subscribers.subscribers][1:] == [
        (CAROL, "Admin's Carol")
    ]
    pipeline.swap_subscribers(deps, load_subscribers(YAML, file="s.yaml"), now=MON_0600)
    assert [(s.email, s.name) for s in deps.subscribers.subscribers][1:] == [(CAROL, "Carol")]


async def test_a_change_by_another_process_is_picked_up_before_composing(
    deps: Deps, tmp_path: Path
) -> None:
    calls: list[int] = []
    deps.audience_changed = lambda: calls.append(1)
    from digestd.store.sqlite import Store

    with Store(tmp_path / "state.sqlite3") as other:  # `digestd subscribers …`, or a web worker
        join(other_deps(other), CAROL, reader_spec(topics=["kv"]), now=MON_0600)
    assert deps.subscribers.by_email(CAROL) is None
    await readers.sync_readers_async(deps, now=MON_0600)
    assert deps.subscribers.by_email(CAROL) is not None and calls == [1]
    await readers.sync_readers_async(deps, now=MON_0600)
    assert calls == [1]  # nothing changed: nothing rebuilt
    with Store(tmp_path / "state.sqlite3") as other:
        assert other.readers.remove(CAROL, at=MON_0600)
    await pipeline.ingest(deps, now=MON_0600)
    pipeline.compose(deps, now=MON_0600, once=True)  # syncs first: Carol gets nothing
    assert deps.subscribers.by_email(CAROL) is None
    queued = deps.store.db.conn.execute(
        "SELECT COUNT(*) FROM outbox WHERE subscriber = ?", (CAROL,)
    )
    assert queued.fetchone()[0] == 0


class _StoreOnly:
    def __init__(self, store: object) -> None:
        self.store = store


def other_deps(store: object) -> Deps:
    return _StoreOnly(store)  # type: ignore[return-value]  # `join` only uses the store
