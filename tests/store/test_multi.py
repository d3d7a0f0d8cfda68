"""Several instances on one state: claim leases, their recovery while running, the instances'
heartbeats, and poll leadership (SQLite: the sole daemon leads; PostgreSQL: advisory locks)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from digestd.store import StateStore as Store
from digestd.store.leadership import AdvisoryLeader, SoleLeader, lock_key
from digestd.store.protocols import InstanceInfo

T0 = datetime(2025, 3, 10, 7, 0, tzinfo=UTC)
LEASE = timedelta(minutes=2)
PG = os.environ.get("DIGESTD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def queue(store: Store, who: str, period: str = "p1") -> int:
    outbox_id = store.outbox.enqueue(
        subscriber=who, kind="digest", period=period, message_id=f"<{who}.{period}@t>",
        sender="d@example.org", data=b"bytes", paper_ids=(f"{who}-{period}",), at=T0,
    )  # fmt: skip
    assert outbox_id is not None
    return outbox_id


def test_a_claim_names_its_claimant_and_lease(store: Store) -> None:
    queue(store, "a@x.org")
    (row,) = store.outbox.claim_due(now=T0, by="one", lease_until=T0 + LEASE)
    assert row.state == "queued"
    assert store.outbox.renew_leases("other", until=T0 + LEASE) == 0
    assert store.outbox.renew_leases("one", until=T0 + LEASE) == 1


def test_an_expired_lease_is_resent_with_the_same_message_id(store: Store) -> None:
    queue(store, "a@x.org")
    queue(store, "b@x.org")
    a, b = store.outbox.claim_due(now=T0, by="dead", lease_until=T0 + LEASE)
    assert store.outbox.renew_leases("alive", until=T0 + 2 * LEASE) == 0
    assert store.outbox.recover_expired(now=T0 + LEASE - timedelta(seconds=1)) == 0
    assert store.outbox.recover_expired(now=T0 + LEASE) == 2
    again = store.outbox.claim_due(now=T0 + LEASE, by="alive", lease_until=T0 + 2 * LEASE)
    assert [(r.id, r.message_id, r.state, r.attempts) for r in again] == [
        (a.id, a.message_id, "in_doubt", 2),
        (b.id, b.message_id, "in_doubt", 2),
    ]


def test_a_renewed_lease_is_not_recovered(store: Store) -> None:
    queue(store, "a@x.org")
    store.outbox.claim_due(now=T0, by="one", lease_until=T0 + LEASE)
    assert store.outbox.renew_leases("one", until=T0 + 3 * LEASE) == 1
    assert store.outbox.recover_expired(now=T0 + 2 * LEASE) == 0
    assert store.status().outbox["sending"] == 1


def test_a_late_sent_after_recovery_is_still_recorded(store: Store) -> None:
    queue(store, "a@x.org")
    (row,) = store.outbox.claim_due(now=T0, by="slow", lease_until=T0 + LEASE)
    store.outbox.recover_expired(now=T0 + LEASE)
    # The relay's 250 arrives after the lease passed: the message was sent, the re-send is saved.
    store.outbox.mark_sent(row.id, at=T0 + LEASE, code=250, reply="ok")
    assert store.outbox.claim_due(now=T0 + 2 * LEASE) == []
    assert store.outbox.pending_count() == 0


def test_start_up_recovers_only_its_own_and_expired_claims(store: Store) -> None:
    for who in ("a@x.org", "b@x.org", "c@x.org"):
        queue(store, who)
    rows = store.outbox.claim_due(now=T0, limit=1, by="me", lease_until=T0 + LEASE)
    rows += store.outbox.claim_due(now=T0, limit=1, by="other", lease_until=T0 + LEASE)
    rows += store.outbox.claim_due(now=T0, limit=1, by="gone", lease_until=T0)
    assert store.outbox.recover(now=T0 + timedelta(seconds=1), by="me") == 2  # me's and gone's
    assert store.status().outbox == {**store.status().outbox, "sending": 1, "in_doubt": 2}
    assert store.outbox.recover(now=T0 + timedelta(seconds=1)) == 1  # the old way: all of them


def test_instances_beat_and_forget(store: Store) -> None:
    me = InstanceInfo("a", "host1", 10, T0, T0, ("arxiv",))
    store.instances.beat(me)
    store.instances.beat(InstanceInfo("b", "host2", 20, T0, T0))
    store.instances.beat(InstanceInfo("a", "host1", 10, T0, T0 + LEASE, ("arxiv", "hf")))
    assert [(i.name, i.last_seen, i.leads) for i in store.instances.all()] == [
        ("a", T0 + LEASE, ("arxiv", "hf")),
        ("b", T0, ()),
    ]
    store.instances.forget("b")
    assert [i.name for i in store.status().instances] == ["a"]


def test_the_sole_daemon_of_a_file_leads_every_source(store: Store) -> None:
    leader = store.leadership()
    if not store.shared:
        assert isinstance(leader, SoleLeader)
    try:
        assert leader.try_lead("arxiv") and leader.try_lead("hf")  # the first instance leads
        leader.release("hf")
        assert leader.leading() == {"arxiv"}
    finally:
        leader.close()


# -- PostgreSQL advisory locks -----------------------------------------------------------------


def _pg_up() -> bool:
    try:
        import psycopg

        psycopg.connect(PG, connect_timeout=2).close()
    except Exception:
        return False
    return True


def eventually(check: Callable[[], bool], within: float = 5.0) -> bool:
    """The server ends a closed session a moment after the client leaves: as a follower's
    next poll would, ask again until it holds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


pg = pytest.mark.skipif(not _pg_up(), reason=f"PostgreSQL not reachable at {PG}")


@pg
def test_one_leader_per_source_and_takeover_when_its_session_ends() -> None:
    first, second = AdvisoryLeader(PG), AdvisoryLeader(PG)
    name = f"pgmulti-test-{os.getpid()}"
    try:
        assert first.try_lead(name)
        assert first.try_lead(name)  # held: asking again keeps it
        assert not second.try_lead(name)
        assert second.try_lead(name + "-other")
        first.close()  # the leader dies: its session, and the lock, go with it
        assert eventually(lambda: second.try_lead(name))
        assert second.leading() == {name, name + "-other"}
        second.release(name)
        assert second.leading() == {name + "-other"}
    finally:
        first.close()
        second.close()


@pg
def test_a_leader_whose_session_died_competes_again() -> None:
    import psycopg

    leader, other = AdvisoryLeader(PG), AdvisoryLeader(PG)
    name = f"pgmulti-test-dead-{os.getpid()}"
    try:
        assert leader.try_lead(name)
        pid = leader._conn.info.backend_pid
        with psycopg.connect(PG, autocommit=True) as admin:  # the server ends its session
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        assert other.try_lead(name)
        assert not leader.try_lead(name)  # finds its session dead: it leads nothing
        assert leader.leading() == frozenset()
        assert not leader.try_lead(name)  # a new session, and the other holds the lock
        other.close()
        assert eventually(lambda: leader.try_lead(name))
    finally:
        leader.close()
        other.close()


def test_lock_keys_differ_by_namespace_and_source() -> None:
    keys = {lock_key(ns, src) for ns in ("test/a", "test/b") for src in ("arxiv", "hf")}
    assert len(keys) == 4
    assert all(-(2**63) <= k < 2**63 for k in keys)


def test_an_unreachable_server_means_not_the_leader() -> None:
    leader = AdvisoryLeader("postgresql://postgres@127.0.0.1:1/none", connect_timeout=1)
    assert not leader.try_lead("arxiv")
    assert leader.leading() == frozenset()
