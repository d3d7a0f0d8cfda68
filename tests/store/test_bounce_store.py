"""The bounces table: a message counted once, a permanent bounce a strike that a later accepted send
does not reset, a complaint a suppression, all in one transaction; on both backends (`store` is
tests/store/conftest.py's)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from digestd.deliver.drain import suspend_after
from digestd.store import StateStore as Store
from digestd.store.protocols import BounceEvent

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
ADA = "ada@example.org"


def sent(store: Store, who: str = ADA, *, period: str) -> int:
    outbox_id = store.outbox.enqueue(
        subscriber=who, kind="digest", period=period, message_id=f"<{who}.{period}@t>",
        sender="d@example.org", data=b"bytes", paper_ids=(), at=T0,
    )  # fmt: skip
    assert outbox_id is not None
    (row,) = store.outbox.claim_due(now=T0)
    store.outbox.mark_sent(row.id, at=T0, code=250, reply="ok")
    return outbox_id


def bounce(outbox_id: int | None, digest: str, kind: str = "permanent") -> BounceEvent:
    email = None if outbox_id is None else ADA
    return BounceEvent(digest, kind, outbox_id, email, "5.1.1", "550 5.1.1 no such user")  # type: ignore[arg-type]


def test_three_bounces_suspend_even_though_the_relay_accepted_every_send(store: Store) -> None:
    policy = suspend_after(3)
    results = []
    for day in range(3):
        outbox_id = sent(store, period=f"d{day}")  # the relay's 250 comes before the bounce
        results.append(store.bounces.record(bounce(outbox_id, f"h{day}"), at=T0, suspend=policy))
    assert results == ["recorded", "recorded", "suspended"]
    assert store.subscribers.suspended() == {ADA}
    (suspension,) = store.subscribers.suspensions()
    assert suspension.failures == 3 and suspension.last_reply is not None
    assert "bounce 5.1.1" in suspension.last_reply


def test_a_sent_message_resets_synchronous_strikes_but_not_bounces(store: Store) -> None:
    first = sent(store, period="d0")
    store.bounces.record(bounce(first, "h0"), at=T0, suspend=suspend_after(3))
    sent(store, period="d1")
    (suspension,) = store.subscribers.suspensions()
    assert suspension.failures == 1  # the bounce still counts


def test_one_message_read_twice_and_two_reports_of_one_message_strike_once(store: Store) -> None:
    outbox_id = sent(store, period="d0")
    policy = suspend_after(2)
    assert store.bounces.record(bounce(outbox_id, "h0"), at=T0, suspend=policy) == "recorded"
    assert store.bounces.record(bounce(outbox_id, "h0"), at=T0, suspend=policy) == "duplicate"
    assert store.bounces.record(bounce(outbox_id, "h1"), at=T0, suspend=policy) == "recorded"
    (suspension,) = store.subscribers.suspensions()
    assert suspension.failures == 1 and suspension.suspended_at is None
    assert store.bounces.counts()["permanent"] == 2
    assert store.bounces.kind_of("h0") == "permanent" and store.bounces.kind_of("zz") is None


def test_a_complaint_suppresses_at_once(store: Store) -> None:
    outbox_id = sent(store, period="d0")
    event = BounceEvent("c0", "complaint", outbox_id, ADA, None, "feedback type abuse")
    assert store.bounces.record(event, at=T0 + timedelta(hours=1), suspend=None) == "suppressed"
    (suppression,) = store.subscribers.suppressions()
    assert (suppression.email, suppression.via) == (ADA, "complaint")


def test_temporary_and_ignored_reports_are_only_counted(store: Store) -> None:
    outbox_id = sent(store, period="d0")
    store.bounces.record(bounce(outbox_id, "t0", "temporary"), at=T0, suspend=suspend_after(1))
    store.bounces.record(BounceEvent("i0", "ignored", detail="not a report"), at=T0, suspend=None)
    assert store.subscribers.suspensions() == [] and store.subscribers.suppressions() == []
    assert store.bounces.counts() == {"permanent": 0, "temporary": 1, "complaint": 0, "ignored": 1}


def test_the_recipient_of_a_message_and_of_none(store: Store) -> None:
    outbox_id = sent(store, period="d0")
    assert store.bounces.recipient_of(outbox_id) == ADA
    assert store.bounces.recipient_of(outbox_id + 1000) is None
