"""This daemon among several: its heartbeat row, its claims' leases, leadership changes, and how
`digestd status` and `/metrics` show the instances."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from digestd.cli.status import format_instances
from digestd.service.instance import Instance, heartbeat_every
from digestd.service.metrics import Metrics
from digestd.store.leadership import SoleLeader
from digestd.store.protocols import InstanceInfo
from digestd.store.sqlite import Store

T0 = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "s.sqlite3") as s:
        yield s


def test_a_beat_writes_the_row_and_renews_the_claims(store: Store) -> None:
    store.outbox.enqueue(
        subscriber="a@x.org", kind="digest", period="p", message_id="<m@x>", sender="d@x.org",
        data=b"bytes", paper_ids=("p1",), at=T0,
    )  # fmt: skip
    store.outbox.claim_due(now=T0, by="mail-a", lease_until=T0 + timedelta(seconds=1))
    me = Instance(store, name="mail-a", lease=timedelta(minutes=2), leader=SoleLeader())
    assert me.try_lead("hf")  # taking the lead writes the row at once
    me.beat(T0)
    (row,) = store.instances.all()
    assert (row.name, row.last_seen, row.leads) == ("mail-a", T0, ("hf",))
    assert store.outbox.recover_expired(now=T0 + timedelta(minutes=1)) == 0  # renewed
    me.stop()
    assert store.instances.all() == []


def test_a_failing_database_costs_a_beat_not_the_daemon(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    me = Instance(store, name="mail-a", lease=timedelta(minutes=2), leader=SoleLeader())
    store.close()
    me._beat_quietly()
    me._beat_quietly()
    assert caplog.text.count("heartbeat failed") == 1  # said once, until it works again


def test_four_beats_per_lease() -> None:
    assert heartbeat_every(timedelta(minutes=2)) == 30
    assert heartbeat_every(timedelta(seconds=1)) == 0.5


def test_status_shows_each_instance_its_sources_and_the_silent_ones() -> None:
    alive = InstanceInfo("mail-a", "h1", 10, T0, T0 + timedelta(minutes=5), ("arxiv", "hf"))
    dead = InstanceInfo("mail-b", "h2", 20, T0, T0, ("hf",))
    lines = format_instances([alive, dead], now=T0 + timedelta(minutes=5, seconds=10))
    assert lines[0] == "instances:   2"
    assert lines[1].endswith("leads arxiv, hf") and "host h1 pid 10" in lines[1]
    assert lines[2].endswith("SILENT (dead or cut off)")
    assert format_instances([]) == []


def test_metrics_show_each_instance_and_each_sources_leader(store: Store) -> None:
    store.instances.beat(InstanceInfo("mail-a", "h1", 10, T0, T0, ("hf",)))
    text = Metrics(store).render().decode()
    assert 'digestd_poll_leader{instance="mail-a",source="hf"} 1.0' in text
    assert 'digestd_instance_last_seen_timestamp_seconds{host="h1",instance="mail-a"}' in text
