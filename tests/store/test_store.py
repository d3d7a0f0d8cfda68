"""The store against both backends (tests/store/conftest.py: `state` is a SQLite file in tmp_path or a
PostgreSQL schema of its own); tests of what only a file has open `Store(db_path)` themselves."""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from digestd.core.model import Authority, Paper
from digestd.deliver.drain import STALE_REASON
from digestd.mail.parts import Part, Spliced
from digestd.pipeline.paper_merge import record_papers
from digestd.store import open_store, store_errors
from digestd.store.protocols import LedgerConflict, SchemaError, StateFileMoved
from digestd.store.sqlite import SCHEMA_VERSION, Store, probe

T0 = datetime(2025, 3, 10, 7, 0, tzinfo=UTC)
ALICE = "alice@example.org"
BOB = "bob@example.org"


def paper(pid: str, *, upvotes: int = 0, title: str | None = None, **kw: object) -> Paper:
    return Paper(
        id=pid,
        title=title or f"Title {pid}",
        abstract=f"Abstract of {pid}.",
        authors=("Ada Lovelace", "Émile Borel"),
        upvotes=upvotes,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nested" / "digestd.sqlite3"


def raw(store: Any, query: str, params: Any = ()) -> Any:
    """Run SQL written for SQLite (`?` placeholders) on either backend's connection."""
    if isinstance(store, Store):
        return store.db.conn.execute(query, params)
    return store.db.conn.execute(query.replace("?", "%s"), params)


@pytest.fixture
def sqlite_store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as s:
        yield s


def enqueue(
    store: Store,
    subscriber: str = ALICE,
    *,
    period: str = "2025-03-10",
    kind: str = "digest",
    ids: tuple[str, ...] | None = None,  # default: a paper of this message's own
    data: bytes | None = b"message bytes",
    at: datetime = T0,
    expires_at: datetime | None = None,
) -> int | None:
    return store.outbox.enqueue(
        subscriber=subscriber,
        kind=kind,  # type: ignore[arg-type]
        period=period,
        message_id=f"<{subscriber}.{kind}.{period}@digestd.test>",
        sender="digestd@example.org",
        data=data,
        paper_ids=ids if ids is not None else (f"2503.{kind}.{period}",),
        at=at,
        expires_at=expires_at,
    )


# -- opening, schema, pragmas --------------------------------------------------------------------


def test_open_creates_parents_and_sets_pragmas(db_path: Path, sqlite_store: Store) -> None:
    store = sqlite_store
    assert db_path.exists()
    assert store.db.schema_version() == SCHEMA_VERSION
    db = store.db.conn
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_reopen_keeps_data_schema_version_and_secret(db_path: Path) -> None:
    with Store(db_path) as s:
        record_papers(s, [paper("2503.00001")], seen_at=T0)
        s.subscribers.register([ALICE], at=T0)
        s.polls.record("hf", at=T0, ok=True, n_items=1, n_new=1)
        enqueue(s)
        secret = s.secret()
    with Store(db_path) as s:
        assert s.db.schema_version() == SCHEMA_VERSION
        assert s.papers.count() == 1
        assert s.outbox.has_period(ALICE, "digest", "2025-03-10")
        assert s.outbox.pending_count() == 1
        assert s.secret() == secret
        assert len(secret) == 32
        assert s.polls.last_success_at() == T0


def test_newer_schema_is_refused(db_path: Path) -> None:
    Store(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(SchemaError, match="999"):
        Store(db_path)


def test_naive_datetime_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.polls.record("hf", at=datetime(2025, 1, 1), ok=True)


# -- papers --------------------------------------------------------------------------------------


def test_record_papers_returns_only_new_and_updates_known(store: Store) -> None:
    new = record_papers(store, [paper("a", upvotes=1), paper("b", upvotes=2)], seen_at=T0)
    assert [p.id for p in new] == ["a", "b"]
    assert all(p.first_seen_at == T0 for p in new)

    later = T0 + timedelta(hours=1)
    updated_a = paper("a", upvotes=40, title="Better title", ai_summary="short")
    new = record_papers(store, [updated_a, paper("c")], seen_at=later)
    assert [(p.id, p.first_seen_at) for p in new] == [("c", later)]

    a, b, c = store.papers.get(["a", "b", "c"])
    assert (a.upvotes, a.title, a.ai_summary, a.first_seen_at) == (40, "Better title", "short", T0)
    assert b.upvotes == 2
    assert store.papers.count() == 3


def test_record_papers_duplicate_in_batch_counts_once(store: Store) -> None:
    new = record_papers(store, [paper("a", upvotes=1), paper("a", upvotes=5)], seen_at=T0)
    assert [(p.id, p.upvotes) for p in new] == [("a", 5)]
    assert store.papers.count() == 1


def test_sparse_update_keeps_optional_fields(store: Store) -> None:
    record_papers(store, [paper("a", github_repo="https://github.com/x/y")], seen_at=T0)
    record_papers(store, [paper("a", upvotes=3)], seen_at=T0 + timedelta(hours=1))
    (a,) = store.papers.get(["a"])
    assert a.github_repo == "https://github.com/x/y"
    assert a.upvotes == 3


def test_paper_round_trip_all_fields(store: Store) -> None:
    original = Paper(
        id="2503.01234",
        title="Ünïcode title",
        abstract="Abstract.",
        authors=("A. One", "B. Two"),
        upvotes=7,
        comments=2,
        published_at=datetime(2025, 3, 9, 18, 30, tzinfo=timezone(timedelta(hours=-5))),
        listed_on=date(2025, 3, 10),
        organization="Org",
        ai_summary="Summary",
        github_repo="https://github.com/o/r",
        project_page="https://example.org/p",
    )
    (new,) = record_papers(store, [original], seen_at=T0)
    (stored,) = store.papers.get([original.id])
    assert stored == new
    assert stored.published_at == datetime(2025, 3, 9, 23, 30, tzinfo=UTC)
    assert stored.published_at is not None and stored.published_at.tzinfo is UTC


def test_get_papers_keeps_order_and_skips_unknown(store: Store) -> None:
    record_papers(store, [paper("a"), paper("b")], seen_at=T0)
    assert [p.id for p in store.papers.get(["b", "zzz", "a", "b"])] == ["b", "a"]
    assert store.papers.get([]) == []


def test_record_many_papers(store: Store) -> None:
    batch = [paper(f"2503.{i:05d}") for i in range(1200)]  # more than one IN chunk
    assert len(record_papers(store, batch, seen_at=T0)) == 1200
    assert record_papers(store, batch, seen_at=T0 + timedelta(hours=1)) == []


# -- times ---------------------------------------------------------------------------------------


def test_times_round_trip_as_aware_utc(store: Store) -> None:
    paris = timezone(timedelta(hours=1))
    at = datetime(2025, 3, 10, 8, 0, 0, 123456, tzinfo=paris)
    store.polls.record("hf", at=at, ok=True)
    poll = store.polls.last("hf")
    assert poll is not None
    assert poll.at == at
    assert poll.at.tzinfo is UTC
    assert poll.at.hour == 7
    (stored,) = record_papers(store, [paper("a")], seen_at=at)
    assert stored.first_seen_at is not None and stored.first_seen_at.tzinfo is UTC
    stamp = raw(store, "SELECT first_seen_at FROM papers").fetchone()[0]
    assert stamp == "2025-03-10T07:00:00.123456+00:00"


def test_whole_second_and_fraction_compare_in_time_order(store: Store) -> None:
    # Text comparison in SQL must agree with time order even when microseconds are zero.
    record_papers(store, [paper("early")], seen_at=T0)
    record_papers(store, [paper("late")], seen_at=T0 + timedelta(microseconds=500))
    since = T0 + timedelta(microseconds=1)
    assert [p.id for p in store.papers.candidates(ALICE, since=since)] == ["late"]


# -- polls ---------------------------------------------------------------------------------------


def test_polls(store: Store) -> None:
    assert store.polls.last() is None
    assert store.polls.last_success_at() is None
    first = store.polls.record("hf", at=T0, ok=True, n_items=50, n_new=3)
    second = store.polls.record("hf", at=T0 + timedelta(hours=1), ok=False, error="HTTP 503")
    store.polls.record("file", at=T0 + timedelta(minutes=30), ok=True)
    assert second > first
    last = store.polls.last()
    assert last is not None
    assert (last.ok, last.error, last.source, last.n_items) == (False, "HTTP 503", "hf", 0)
    assert store.polls.last_success_at("hf") == T0
    assert store.polls.last_success_at() == T0 + timedelta(minutes=30)
    file_poll = store.polls.last("file")
    assert file_poll is not None and file_poll.ok


# -- subscribers ---------------------------------------------------------------------------------


def test_register_subscribers_idempotent_and_case_insensitive(store: Store) -> None:
    first = store.subscribers.register(["Alice@Example.org", BOB], at=T0)
    assert first == {"Alice@Example.org": T0, BOB: T0}
    later = T0 + timedelta(days=1)
    again = store.subscribers.register(["ALICE@EXAMPLE.ORG", "carol@example.org"], at=later)
    assert again == {"ALICE@EXAMPLE.ORG": T0, "carol@example.org": later}
    assert store.subscribers.count() == 3
    emails = [r[0] for r in raw(store, "SELECT email FROM subscribers ORDER BY email")]
    assert emails == ["alice@example.org", BOB, "carol@example.org"]


def test_register_100k_subscribers(store: Store) -> None:
    emails = [f"user{i}@example.org" for i in range(100_000)]
    result = store.subscribers.register(emails, at=T0)
    assert len(result) == 100_000
    assert store.subscribers.register(emails[:10], at=T0 + timedelta(days=1))[emails[0]] == T0
    assert store.subscribers.count() == 100_000


# -- candidates and the ledger -------------------------------------------------------------------


def test_candidates_since_window_and_order(store: Store) -> None:
    record_papers(store, [paper("old", upvotes=99)], seen_at=T0 - timedelta(days=2))
    record_papers(
        store, [paper("b", upvotes=5), paper("a", upvotes=5), paper("c", upvotes=9)], seen_at=T0
    )
    ids = [p.id for p in store.papers.candidates(ALICE, since=T0)]
    assert ids == ["c", "a", "b"]
    window = [p.id for p in store.papers.candidates(ALICE, since=T0 - timedelta(days=3))]
    assert window == ["old", "c", "a", "b"]


def test_ledger_reservation_excludes_candidates_per_subscriber(store: Store) -> None:
    record_papers(store, [paper("a"), paper("b")], seen_at=T0)
    assert enqueue(store, ALICE, ids=("a",)) is not None
    assert [p.id for p in store.papers.candidates("ALICE@example.org", since=T0)] == ["b"]
    assert [p.id for p in store.papers.candidates(BOB, since=T0)] == ["a", "b"]


def test_enqueue_unique_per_subscriber_kind_period(store: Store) -> None:
    record_papers(store, [paper("a"), paper("b")], seen_at=T0)
    first = enqueue(store, ids=("a",))
    assert first is not None
    # Same key: refused, nothing changes (b stays a candidate).
    assert enqueue(store, ids=("b",), data=b"other") is None
    assert [p.id for p in store.papers.candidates(ALICE, since=T0)] == ["b"]
    assert store.outbox.pending_count() == 1
    # Another kind, period or subscriber is a new row.
    assert enqueue(store, kind="alert", period="poll-1", ids=()) is not None
    assert enqueue(store, period="2025-03-11", ids=()) is not None
    assert enqueue(store, BOB, ids=("a",)) is not None
    assert store.outbox.has_period(ALICE, "digest", "2025-03-10")
    assert store.outbox.has_period("Alice@Example.ORG", "alert", "poll-1")
    assert not store.outbox.has_period(ALICE, "alert", "2025-03-10")


def test_item8_conflicting_reservation_aborts_the_message(store: Store) -> None:
    """A paper already in another message for this subscriber: this message is not queued at
    all (row, body, parts, reservations), instead of going out carrying the paper a second time."""
    record_papers(store, [paper("a"), paper("b")], seen_at=T0)
    first = enqueue(store, ids=("a",))
    with pytest.raises(LedgerConflict, match="already reserved"):
        enqueue(store, period="2025-03-11", ids=("a", "b"))
    owners = dict(raw(store, "SELECT paper_id, outbox_id FROM deliveries").fetchall())
    assert owners == {"a": first}
    assert not store.outbox.has_period(ALICE, "digest", "2025-03-11")
    assert store.outbox.pending_count() == 1
    assert raw(store, "SELECT COUNT(*) FROM outbox_bodies").fetchone()[0] == 1


def test_item8_conflict_in_a_batch_rolls_back_only_that_message(store: Store) -> None:
    """Composing queues a batch in one transaction: the conflicting message goes, the rest stay,
    and a shared part the aborted message brought is written again by the next one."""
    record_papers(store, [paper("a"), paper("b")], seen_at=T0)
    enqueue(store, ids=("a",))
    part = Part("k" * 64, b"shared part bytes")
    spliced = Spliced(b"own", ((0, part),))
    with store.batch():
        with pytest.raises(LedgerConflict):
            store.outbox.enqueue(
                subscriber=ALICE, kind="digest", period="p2", message_id="<x@t>",
                sender="s@t", data=spliced, paper_ids=["b", "a"], at=T0,
            )  # fmt: skip
        bob = store.outbox.enqueue(
            subscriber=BOB, kind="digest", period="p2", message_id="<y@t>",
            sender="s@t", data=spliced, paper_ids=["a"], at=T0,
        )  # fmt: skip
    assert bob is not None
    assert not store.outbox.has_period(ALICE, "digest", "p2")
    claimed = {row.id: row.data for row in store.outbox.claim_due(now=T0 + timedelta(days=1))}
    assert claimed[bob] == b"shared part bytes" + b"own"
    assert raw(store, "SELECT COUNT(*) FROM message_parts").fetchone()[0] == 1


def test_enqueue_empty_period(store: Store) -> None:
    outbox_id = enqueue(store, data=None, ids=())
    assert outbox_id is not None
    assert store.status().outbox["empty"] == 1
    assert store.outbox.pending_count() == 0
    assert store.outbox.claim_due(now=T0 + timedelta(days=1)) == []
    assert enqueue(store, data=None, ids=()) is None
    with pytest.raises(ValueError, match="empty"):
        enqueue(store, period="other", data=None, ids=("a",))


# -- delivery state machine ----------------------------------------------------------------------


def test_claim_then_sent(store: Store) -> None:
    outbox_id = enqueue(store)
    assert store.outbox.claim_due(now=T0 - timedelta(seconds=1)) == []
    (row,) = store.outbox.claim_due(now=T0)
    assert (row.id, row.state, row.attempts, row.data) == (outbox_id, "queued", 1, b"message bytes")
    assert row.message_id == f"<{ALICE}.digest.2025-03-10@digestd.test>"
    assert store.outbox.claim_due(now=T0 + timedelta(hours=1)) == []  # already sending
    store.outbox.mark_sent(row.id, at=T0, code=250, reply="2.0.0 Ok: queued as X")
    assert store.outbox.pending_count() == 0
    assert store.status().outbox["sent"] == 1
    with pytest.raises(ValueError, match="sent"):
        store.outbox.mark_sent(row.id, at=T0, code=250, reply="again")


def test_claim_order_and_limit(store: Store) -> None:
    ids = [enqueue(store, period=f"p{i}", at=T0 + timedelta(minutes=i)) for i in range(3)]
    claimed = store.outbox.claim_due(now=T0 + timedelta(hours=1), limit=2)
    assert [r.id for r in claimed] == ids[:2]


def test_deferred_then_retry(store: Store) -> None:
    enqueue(store)
    (row,) = store.outbox.claim_due(now=T0)
    retry = T0 + timedelta(minutes=10)
    store.outbox.mark_deferred(row.id, at=T0, retry_at=retry, code=451, reply="4.3.0 try later")
    assert store.outbox.claim_due(now=retry - timedelta(seconds=1)) == []
    status = store.status()
    assert status.outbox["deferred"] == 1
    assert status.problems[0].last_code == 451
    (again,) = store.outbox.claim_due(now=retry)
    assert (again.state, again.attempts) == ("deferred", 2)
    assert store.outbox.pending_count() == 1


def test_failed_releases_papers(store: Store) -> None:
    record_papers(store, [paper("a")], seen_at=T0)
    enqueue(store, ids=("a",))
    assert store.papers.candidates(ALICE, since=T0) == []
    (row,) = store.outbox.claim_due(now=T0)
    store.outbox.mark_failed(row.id, at=T0, code=550, reply="5.1.1 no such user")
    assert [p.id for p in store.papers.candidates(ALICE, since=T0)] == ["a"]
    assert store.outbox.has_period(ALICE, "digest", "2025-03-10")  # not recomposed
    assert store.outbox.claim_due(now=T0 + timedelta(days=1)) == []


def test_expired_releases_papers(store: Store) -> None:
    record_papers(store, [paper("a")], seen_at=T0)
    outbox_id = enqueue(store, ids=("a",))
    assert outbox_id is not None
    store.outbox.mark_expired(outbox_id, at=T0, reason="too old")
    assert [p.id for p in store.papers.candidates(ALICE, since=T0)] == ["a"]
    assert store.status().outbox["expired"] == 1
    with pytest.raises(ValueError, match="expired"):
        store.outbox.mark_expired(outbox_id, at=T0, reason="twice")
    with pytest.raises(ValueError, match="no such row"):
        store.outbox.mark_expired(9999, at=T0, reason="unknown")


def test_release_stale(store: Store) -> None:
    record_papers(store, [paper("a"), paper("b"), paper("c")], seen_at=T0)
    deadline = T0 + timedelta(hours=12)
    stale = enqueue(store, period="p1", ids=("a",), expires_at=deadline)
    enqueue(store, period="p2", ids=("b",), expires_at=deadline + timedelta(days=1))
    enqueue(store, period="p3", ids=("c",))
    assert store.outbox.release_stale(now=deadline - timedelta(seconds=1), reason=STALE_REASON) == 0
    assert store.outbox.release_stale(now=deadline, reason=STALE_REASON) == 1
    assert [p.id for p in store.papers.candidates(ALICE, since=T0)] == ["a"]
    assert {r.period for r in store.outbox.claim_due(now=deadline)} == {"p2", "p3"}
    assert stale is not None
    with pytest.raises(ValueError, match="expired"):
        store.outbox.mark_sent(stale, at=deadline, code=250, reply="ok")
    assert store.outbox.pending_count() == 2


def test_recover_after_crash(state: str | Path) -> None:
    with open_store(state) as s:
        record_papers(s, [paper("a")], seen_at=T0)
        outbox_id = enqueue(s, ids=("a",))
        (row,) = s.outbox.claim_due(now=T0)
        # The process dies here, between claiming and the relay's reply.
    restart = T0 + timedelta(minutes=5)
    with open_store(state) as s:
        assert s.status().outbox["sending"] == 1
        assert s.outbox.recover(now=restart) == 1
        assert s.outbox.recover(now=restart) == 0
        assert s.status().problems[0].state == "in_doubt"
        (again,) = s.outbox.claim_due(now=restart)
        assert (again.id, again.state, again.attempts) == (outbox_id, "in_doubt", 2)
        assert (again.message_id, again.data) == (row.message_id, row.data)
        assert s.papers.candidates(ALICE, since=T0) == []  # still reserved while in doubt
        s.outbox.mark_sent(again.id, at=restart, code=250, reply="ok")
        assert s.outbox.pending_count() == 0


# -- status and prune ----------------------------------------------------------------------------


def test_status(store: Store) -> None:
    empty = store.status()
    assert (empty.papers, empty.last_poll, empty.last_success_at, empty.subscribers) == (
        0,
        None,
        None,
        0,
    )
    assert set(empty.outbox.values()) == {0}
    assert empty.problems == []

    record_papers(store, [paper("a"), paper("b")], seen_at=T0)
    store.subscribers.register([ALICE, BOB], at=T0)
    store.polls.record("hf", at=T0, ok=True, n_items=2, n_new=2)
    store.polls.record("hf", at=T0 + timedelta(hours=1), ok=False, error="timeout")
    for i in range(25):
        enqueue(store, period=f"p{i:02d}", ids=())
    for n, row in enumerate(store.outbox.claim_due(now=T0, limit=22)):
        store.outbox.mark_failed(row.id, at=T0 + timedelta(minutes=n), code=550, reply=f"no {n}")
    enqueue(store, BOB)

    status = store.status()
    assert status.papers == 2
    assert status.subscribers == 2
    assert status.last_poll is not None
    assert (status.last_poll.ok, status.last_poll.error) == (False, "timeout")
    assert status.last_success_at == T0
    assert status.outbox["failed"] == 22
    assert status.outbox["queued"] == 4
    assert len(status.problems) == 20
    newest = status.problems[0]
    assert (newest.state, newest.last_reply, newest.attempts) == ("failed", "no 21", 1)
    assert newest.updated_at == T0 + timedelta(minutes=21)
    assert newest.subscriber == ALICE and newest.kind == "digest"


def test_prune_drops_old_sent_bytes_only(store: Store) -> None:
    record_papers(store, [paper("a")], seen_at=T0)
    enqueue(store, period="old", ids=("a",))
    enqueue(store, period="new", ids=())
    enqueue(store, period="queued", ids=())
    old, new, _ = store.outbox.claim_due(now=T0)
    store.outbox.mark_sent(old.id, at=T0, code=250, reply="ok")
    store.outbox.mark_sent(new.id, at=T0 + timedelta(days=10), code=250, reply="ok")
    raw(store, "UPDATE outbox SET state = 'queued' WHERE period = 'queued'")

    assert store.outbox.prune(before=T0 + timedelta(days=5)) == 1
    assert store.outbox.prune(before=T0 + timedelta(days=5)) == 0
    bytes_by_period = (
        "SELECT period, COALESCE(b.data, o.data) FROM outbox o"
        " LEFT JOIN outbox_bodies b ON b.outbox_id = o.id"
    )
    data = dict(raw(store, bytes_by_period).fetchall())
    assert data == {"old": None, "new": b"message bytes", "queued": b"message bytes"}
    # The ledger survives pruning: the paper is still not a candidate.
    assert store.papers.candidates(ALICE, since=T0) == []
    assert store.status().outbox["sent"] == 2


def test_candidates_for_a_batch_equal_candidates_one_by_one(store: Store) -> None:
    record_papers(store, [paper("old", upvotes=99)], seen_at=T0 - timedelta(days=2))
    record_papers(store, [paper("b", upvotes=5), paper("a", upvotes=5), paper("c")], seen_at=T0)
    enqueue(store, ALICE, ids=("a",))
    enqueue(store, BOB, ids=("old",), period="p2")
    subs = [ALICE, "Bob@Example.org", "carol@example.org", ALICE]
    for since in (T0, T0 - timedelta(days=3)):
        found = store.papers.candidates_for(subs, since=since)
        assert set(found) == {ALICE, BOB, "carol@example.org"}
        for sub in subs:
            assert found[sub.lower()] == store.papers.candidates(sub, since=since)
    assert store.papers.candidates_for([], since=T0) == {}


def test_compressed_bodies_are_claimed_as_plain_bytes(store: Store) -> None:
    message = b"Subject: x\r\n\r\n" + b"body line\r\n" * 500
    zipped = enqueue(store, ALICE, ids=(), period="z")
    # As `enqueue(compressed=True)` stored it (gone: nothing used it); such rows stay readable.
    raw(
        store,
        "UPDATE outbox_bodies SET data = ?, zlib = 1 WHERE outbox_id = ?",
        (zlib.compress(message, 1), zipped),
    )
    enqueue(store, BOB, ids=(), period="plain")
    rows = {row.subscriber: row.data for row in store.outbox.claim_due(now=T0)}
    assert rows == {ALICE: message, BOB: b"message bytes"}


def test_batch_lookups_agree_with_the_single_ones(store: Store) -> None:
    single = store.subscribers.id_of("Carol@Example.org")
    ids = store.subscribers.ids_of([ALICE, "carol@example.org", ALICE.upper()])
    assert ids == {ALICE: store.subscribers.id_of(ALICE), "carol@example.org": single}
    store.subscribers.suppress(BOB, at=T0, via="test")
    assert store.subscribers.suppressed_among([ALICE, BOB.upper(), "nobody@example.org"]) == {BOB}
    assert store.subscribers.suppressed_among([]) == set()


def test_a_claim_says_which_addresses_left_since_they_were_queued(store: Store) -> None:
    enqueue(store, ALICE)
    enqueue(store, BOB)
    store.subscribers.suppress(BOB, at=T0, via="test")
    claimed = {row.subscriber: row.suppressed for row in store.outbox.claim_due(now=T0, limit=10)}
    assert claimed == {ALICE: False, BOB: True}


def test_a_claim_without_bodies_is_completed_by_another_connection(
    store: Store, state: str | Path
) -> None:
    enqueue(store, ALICE, data=b"alice's bytes")
    store.outbox.enqueue(
        subscriber=BOB, kind="digest", period="p", message_id="<b@x>", sender="d@example.org",
        data=b"bob's bytes", paper_ids=[], at=T0,
    )  # fmt: skip
    heads = store.outbox.claim_due(now=T0, limit=10, bodies=False)
    assert [row.data for row in heads] == [b"", b""]
    with open_store(state) as reader:
        rows = reader.outbox.with_bodies(heads)
    assert [(r.subscriber, r.data, r.attempts) for r in rows] == [
        (ALICE, b"alice's bytes", 1),
        (BOB, b"bob's bytes", 1),
    ]


def test_canonical_bodies_come_back_marked(store: Store) -> None:
    enqueue(store, ALICE, data=b"x\r\n")
    store.outbox.enqueue(
        subscriber=BOB, kind="digest", period="p", message_id="<b@x>", sender="d@example.org",
        data=Spliced(b"y\r\n", canonical=True), paper_ids=[], at=T0,
    )  # fmt: skip
    rows = {row.subscriber: row for row in store.outbox.claim_due(now=T0, limit=10)}
    assert {who: row.data for who, row in rows.items()} == {ALICE: b"x\r\n", BOB: b"y\r\n"}
    assert rows[BOB].canonical and not rows[ALICE].canonical


def test_new_state_files_use_16_kib_pages(sqlite_store: Store, db_path: Path) -> None:
    store = sqlite_store
    assert store.db.conn.execute("PRAGMA page_size").fetchone()[0] == 16384
    store.close()
    with Store(db_path) as again:  # reopening keeps it (and would keep a 4 KiB file's, too)
        assert again.db.conn.execute("PRAGMA page_size").fetchone()[0] == 16384


# -- shared message parts ------------------------------------------------------------------------

STYLE = Part("style-key", b"<style>shared by every message</style>\r\n" * 40)
PAPERS = Part("papers-key", b"the same ten papers\r\n" * 200)


def spliced(name: bytes) -> Spliced:
    """A message with two shared parts: at the start of its own bytes and in the middle."""
    own = b"To: " + name + b"\r\n\r\n" + b"Dear " + name + b"\r\n"
    return Spliced(own, ((0, STYLE), (len(own) - 2, PAPERS)), canonical=True)


def queue_spliced(store: Store, who: str, *, period: str = "p") -> int | None:
    return store.outbox.enqueue(
        subscriber=who, kind="digest", period=period, message_id=f"<{who}.{period}@x>",
        sender="d@example.org", data=spliced(who.encode()), paper_ids=[], at=T0,
    )  # fmt: skip


@contextmanager
def unchecked(store: Any) -> Iterator[None]:
    """Foreign keys off for a moment, to damage a state on purpose."""
    if isinstance(store, Store):
        raw(store, "PRAGMA foreign_keys = OFF")
        yield
        return
    raw(store, "SET session_replication_role = replica")
    try:
        yield
    finally:
        raw(store, "SET session_replication_role = DEFAULT")


def count(store: Any, table: str) -> int:
    return int(raw(store, f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_shared_parts_are_stored_once_and_claimed_spliced_back(
    store: Store, state: str | Path
) -> None:
    who = [f"r{i}@example.org" for i in range(30)]
    with store.batch():
        for address in who[:20]:
            queue_spliced(store, address)
    for address in who[20:]:  # one transaction each: still one copy of each part
        queue_spliced(store, address)
    assert count(store, "message_parts") == 2
    own = raw(store, "SELECT MAX(LENGTH(data)) FROM outbox_bodies").fetchone()[0]
    assert own < 100  # each message's own bytes only
    claimed = store.outbox.claim_due(now=T0, limit=10)
    assert [row.data for row in claimed] == [spliced(a.encode()).whole() for a in who[:10]]
    assert all(row.canonical for row in claimed)
    heads = store.outbox.claim_due(now=T0, limit=30, bodies=False)
    with open_store(state) as reader:
        rows = reader.outbox.with_bodies(heads)
    assert [row.data for row in rows] == [spliced(a.encode()).whole() for a in who[10:]]


def test_a_message_that_names_a_missing_part_is_never_handed_out(store: Store) -> None:
    queue_spliced(store, ALICE)
    with unchecked(store):
        raw(store, "DELETE FROM message_parts WHERE key = 'papers-key'")
    with pytest.raises(KeyError):
        store.outbox.claim_due(now=T0)
    assert store.status().outbox["queued"] == 1  # the claim rolled back


def test_prune_drops_parts_only_when_no_message_names_them(store: Store) -> None:
    queue_spliced(store, ALICE)
    queue_spliced(store, BOB)
    alone = Spliced(b"x\r\n", ((0, Part("alone-key", b"only carol's\r\n")),))
    store.outbox.enqueue(
        subscriber="carol@example.org", kind="digest", period="p", message_id="<c@x>",
        sender="d@example.org", data=alone, paper_ids=[], at=T0,
    )  # fmt: skip
    rows = store.outbox.claim_due(now=T0, limit=10)
    for row in rows[:1] + rows[2:]:  # alice's and carol's go out; bob's is still queued
        store.outbox.mark_sent(row.id, at=T0, code=250, reply="ok")
    store.outbox.unclaim(rows[1:2])
    # A part the foreign key still needs cannot be dropped by mistake.
    with pytest.raises(store_errors()):
        raw(store, "DELETE FROM message_parts WHERE key = 'style-key'")
    assert store.outbox.prune(before=T0 + timedelta(days=1)) == 2
    keys = {row[0] for row in raw(store, "SELECT key FROM message_parts")}
    assert keys == {"style-key", "papers-key"}  # bob's message still names both
    (bob,) = store.outbox.claim_due(now=T0)
    assert bob.data == spliced(BOB.encode()).whole()
    store.outbox.mark_sent(bob.id, at=T0, code=250, reply="ok")
    assert store.outbox.prune(before=T0 + timedelta(days=1)) == 1
    assert count(store, "message_parts") == count(store, "outbox_parts") == 0


def test_prune_reads_on_from_where_it_stopped(store: Store) -> None:
    """A row still pending holds the mark; rows queued after `before` end the scan."""
    for i in range(3):
        enqueue(store, f"u{i}@example.org", ids=())
    first, second, third = store.outbox.claim_due(now=T0, limit=10)
    store.outbox.mark_sent(first.id, at=T0, code=250, reply="ok")
    store.outbox.mark_sent(third.id, at=T0, code=250, reply="ok")
    later = T0 + timedelta(days=1)
    assert store.outbox.prune(before=later) == 2
    assert store.db.meta("pruned_through") == str(first.id)  # second is still sending
    store.outbox.mark_failed(second.id, at=T0, code=550, reply="5.1.1 no such user")
    assert store.outbox.prune(before=later) == 1
    assert store.db.meta("pruned_through") == str(third.id)
    assert store.outbox.prune(before=later) == 0


def test_a_version_7_file_upgrades_and_its_queued_bodies_still_go_out(db_path: Path) -> None:
    with Store(db_path) as store:
        enqueue(store, ALICE, data=b"queued before the upgrade")
        store.db.conn.execute("DROP TABLE outbox_parts")
        store.db.conn.execute("DROP TABLE message_parts")
        store.db.conn.execute("ALTER TABLE papers DROP COLUMN authority")  # migration 9's
        store.db.conn.execute("DROP TABLE retired_subscriber_ids")  # migration 10's
        store.db.conn.execute("DROP TABLE alerts_owed")  # migration 11's
        store.db.conn.execute("DROP TABLE bounces")  # migration 13's (bounces)
        store.db.conn.execute("ALTER TABLE suspensions DROP COLUMN bounces")
        store.db.conn.execute("DROP TABLE ratings")  # migration 14's (ratings)
        store.db.conn.execute("DROP TABLE instances")  # migration 16's (leases, instances)
        store.db.conn.execute("DROP INDEX outbox_leases")
        store.db.conn.execute("ALTER TABLE outbox DROP COLUMN claimed_by")
        store.db.conn.execute("ALTER TABLE outbox DROP COLUMN lease_until")
        store.db.conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    with Store(db_path) as store:
        assert store.db.schema_version() == SCHEMA_VERSION
        (row,) = store.outbox.claim_due(now=T0)
        assert row.data == b"queued before the upgrade"
        queue_spliced(store, BOB)
        (bob,) = store.outbox.claim_due(now=T0)
        assert bob.data == spliced(BOB.encode()).whole()


def test_shared_bytes_written_in_a_rolled_back_batch_are_written_again(store: Store) -> None:
    with pytest.raises(RuntimeError), store.batch():
        queue_spliced(store, ALICE)
        raise RuntimeError("the batch fails after the parts were inserted")
    assert count(store, "message_parts") == count(store, "outbox") == 0
    queue_spliced(store, ALICE)  # a new transaction: the parts go in again, the key allows it
    (row,) = store.outbox.claim_due(now=T0)
    assert row.data == spliced(ALICE.encode()).whole()


def test_a_long_backlog_is_pruned_over_several_calls(store: Store) -> None:
    for i in range(7):
        enqueue(store, f"u{i}@example.org", ids=())
    for row in store.outbox.claim_due(now=T0, limit=10):
        store.outbox.mark_sent(row.id, at=T0, code=250, reply="ok")
    later = T0 + timedelta(days=1)
    assert [store.outbox.prune(before=later, limit=3) for _ in range(4)] == [3, 3, 1, 0]
    assert count(store, "outbox_bodies") == 0 and count(store, "outbox") == 7


def test_item9_a_feed_never_rewrites_the_stored_text_of_hf_or_arxiv(store: Store) -> None:
    real = paper("2502.60001", title="Real title", authority=Authority.HUGGINGFACE)
    claim = Paper(
        id="2502.60001", title="Poisoned", abstract="Poisoned abstract", authors=("Mallory",),
        authority=Authority.FEED, link="https://evil.example/x",
    )  # fmt: skip
    for first, then in ((real, claim), (claim, real)):
        raw(store, "DELETE FROM papers")  # each order from an empty table
        record_papers(store, [first], seen_at=T0)
        record_papers(store, [then], seen_at=T0 + timedelta(hours=1))
        (stored,) = store.papers.get(["2502.60001"])
        assert (stored.title, stored.abstract, stored.authors) == (
            "Real title", "Abstract of 2502.60001.", ("Ada Lovelace", "Émile Borel"),
        )  # fmt: skip
        assert stored.authority == Authority.HUGGINGFACE and stored.version is None


def test_item9_a_version_8_file_forgets_version_claims_of_rows_a_feed_touched(
    db_path: Path,
) -> None:
    with Store(db_path) as store:
        record_papers(store, 
            [
                paper("2502.60001", title="Poisoned", version=10000, on_huggingface=True,
                      link="https://evil.example/x"),
                paper("2502.60002", version=2),
            ],
            seen_at=T0,
        )  # fmt: skip
        store.db.conn.execute("ALTER TABLE papers DROP COLUMN authority")
        store.db.conn.execute("DROP TABLE retired_subscriber_ids")  # migration 10's
        store.db.conn.execute("DROP TABLE alerts_owed")  # migration 11's
        store.db.conn.execute("DROP TABLE bounces")  # migration 13's (bounces)
        store.db.conn.execute("ALTER TABLE suspensions DROP COLUMN bounces")
        store.db.conn.execute("DROP TABLE ratings")  # migration 14's (ratings)
        store.db.conn.execute("DROP TABLE instances")  # migration 16's (leases, instances)
        store.db.conn.execute("DROP INDEX outbox_leases")
        store.db.conn.execute("ALTER TABLE outbox DROP COLUMN claimed_by")
        store.db.conn.execute("ALTER TABLE outbox DROP COLUMN lease_until")
        store.db.conn.execute("UPDATE meta SET value = '8' WHERE key = 'schema_version'")
    with Store(db_path) as store:
        poisoned, clean = store.papers.get(["2502.60001", "2502.60002"])
        assert (poisoned.version, poisoned.authority) == (None, Authority.HUGGINGFACE)
        assert (clean.version, clean.authority) == (2, Authority.ARXIV_RSS)
        # The next Hugging Face listing puts the real text back.
        record_papers(store, 
            [paper("2502.60001", title="Real", on_huggingface=True,
                   authority=Authority.HUGGINGFACE)],
            seen_at=T0 + timedelta(hours=1),
        )  # fmt: skip
        assert store.papers.get(["2502.60001"])[0].title == "Real"


def test_item11_a_poll_error_is_stored_redacted_and_without_control_bytes(store: Store) -> None:
    error = "GET https://u:pw@h.example/f?token=SECRET&x=1: HTTP 404 \x1b[2J\x9b1m\x07 gone"
    store.polls.record("feed", at=T0, ok=False, error=error)
    stored = store.polls.last("feed")
    assert stored is not None and stored.error is not None
    assert stored.error == "GET https://***@h.example/f?token=***&x=1: HTTP 404 [2J 1m gone"


def test_item11_probe_says_whether_a_run_could_write(db_path: Path) -> None:
    assert probe(db_path) == "not created yet" and not db_path.exists()
    with Store(db_path) as store:
        assert probe(db_path) == f"writable, schema version {SCHEMA_VERSION}"
        # A daemon in the middle of a write: `check` before a reload must not fail on it.
        store.db.conn.execute("BEGIN IMMEDIATE")
        assert probe(db_path) == "in use by a running digestd"
        store.db.conn.execute("ROLLBACK")
    db_path.write_bytes(b"not a database, but long enough to have a header" * 4)
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        probe(db_path)


def test_item7_a_second_connection_opens_the_same_file_or_none(db_path: Path) -> None:
    with Store(db_path) as store:
        secret = store.secret()
        assert store.moved() is None
        store.side().close()
        db_path.rename(db_path.with_name("aside"))
        assert store.moved() == f"the state file {db_path} was deleted"
        with pytest.raises(StateFileMoved, match="was deleted"):
            store.side()
        assert not db_path.exists()  # no empty database made under the name
        sqlite3.connect(db_path).close()
        assert store.moved() == f"the state file {db_path} was replaced by another file"
        with pytest.raises(StateFileMoved, match="was replaced"):
            store.side()
        rescued = store.rescue(T0)
        assert rescued.name == "digestd.sqlite3.rescued-20250310T070000Z"
        with Store(rescued) as copy:
            assert copy.db.schema_version() == SCHEMA_VERSION and copy.secret() == secret


def test_i14_a_batch_inside_a_batch_joins_it(store: Store) -> None:
    """Recording papers opens a batch of its own; inside the poll's batch it must join it, and
    the outer batch's later writes still belong to the one transaction."""
    with pytest.raises(RuntimeError), store.batch():
        record_papers(store, [paper("a")], seen_at=T0)
        store.polls.record("hf", at=T0, ok=True, n_items=1, n_new=1)
        raise RuntimeError("the poll's batch fails after both writes")
    assert store.papers.count() == 0 and store.polls.last() is None
    with store.batch():
        record_papers(store, [paper("a")], seen_at=T0)
        store.polls.record("hf", at=T0, ok=True, n_items=1, n_new=1)
    assert store.papers.count() == 1 and store.polls.last() is not None


def test_i14_the_suspension_policy_is_the_callers(store: Store) -> None:
    """The store records strikes; whether they suspend, and the words why, are the caller's."""
    for n in range(3):
        enqueue(store, period=f"p{n}")
        (row,) = store.outbox.claim_due(now=T0)
        never = store.outbox.mark_failed(
            row.id, at=T0, code=550, reply="no", suspend=lambda n: None
        )
        assert not never
    enqueue(store, period="p3")
    enqueue(store, period="pending")
    (row,) = store.outbox.claim_due(now=T0, limit=1)
    assert store.outbox.mark_failed(
        row.id, at=T0, code=550, reply="no", suspend=lambda n: f"{n} strikes" if n >= 4 else None
    )
    assert store.subscribers.suspended() == {ALICE}
    expired = [p for p in store.status().problems if p.state == "expired"]
    assert [(p.period, p.last_reply) for p in expired] == [("pending", "4 strikes")]
