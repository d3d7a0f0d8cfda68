"""SubscriberSet.by_email: the first entry of an address, found without scanning every entry.

The reader pages look an address up on the event loop for every request; a scan of 20,000 YAML
entries there cost tens of ms a page while a compose ran (bench/web.py)."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest

from digestd.core import model
from digestd.core.model import Subscriber, SubscriberSet


def test_by_email_finds_the_first_entry_of_an_address_case_insensitively() -> None:
    first, second = Subscriber(email="Ann@Example.org"), Subscriber(email="ann@example.ORG")
    subs = SubscriberSet(subscribers=(first, second, Subscriber(email="bob@example.org")))
    assert subs.by_email("ANN@example.org") is first
    assert subs.by_email("nobody@example.org") is None
    assert replace(subs, subscribers=(second,)).by_email("ann@example.org") is second
    assert pickle.loads(pickle.dumps(subs)).by_email("bob@example.org") is not None
    assert subs == SubscriberSet(subscribers=(first, second, Subscriber(email="bob@example.org")))


def test_a_lookup_does_not_rescan_every_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    subs = SubscriberSet(
        subscribers=tuple(Subscriber(email=f"r{i}@example.org") for i in range(500))
    )
    assert subs.by_email("r7@example.org") is subs.subscribers[7]
    calls: list[str] = []

    def counted(email: str) -> str:
        calls.append(email)
        return email.lower()

    monkeypatch.setattr(model, "address_key", counted)
    assert subs.by_email("R499@example.org") is subs.subscribers[499]
    assert len(calls) == 1  # the asked address only
