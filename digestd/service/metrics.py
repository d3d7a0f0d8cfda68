"""Prometheus metrics for one daemon: counters fed by the pipeline's observer and a metered mailer,
gauges read from the store at scrape time (so they are true after a restart).

Each daemon owns its `CollectorRegistry` rather than the process-global one, so two daemons in one
test process never share counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from digestd import __version__
from digestd.core.model import Outcome
from digestd.core.observer import Phase
from digestd.deliver.transports.base import Mailer
from digestd.store import StateStore
from digestd.store.protocols import STATES, InstanceInfo

__all__ = ["CONTENT_TYPE", "MeteredMailer", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From a local relay's milliseconds to the 10-minute end-of-DATA timeout.
_SEND_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """The daemon's metrics; also an `Observer` for the pipeline."""

    def __init__(self, store: StateStore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.polls = Counter(
            "digestd_polls", "Polls of the source, by result", ["result"], registry=r
        )
        self.matched_papers = Counter(
            "digestd_matched_papers",
            "Papers matched into a queued message, by message kind",
            ["kind"],
            registry=r,
        )
        self.composed = Counter(
            "digestd_messages_composed", "Messages composed, by kind", ["kind"], registry=r
        )
        self.replies = Counter(
            "digestd_smtp_replies",
            "Send attempts by the class of the relay's reply (none: no reply, e.g. unreachable)",
            ["class"],
            registry=r,
        )
        self.outcomes = Counter(
            "digestd_send_outcomes", "Send attempts by outcome", ["outcome"], registry=r
        )
        self.send_seconds = Histogram(
            "digestd_send_seconds", "Time to hand one message to the relay", buckets=_SEND_BUCKETS,
            registry=r,
        )  # fmt: skip
        for result in ("ok", "failed"):
            self.polls.labels(result)  # present at 0 from the start: rate() needs a first sample
        for cls in ("2xx", "4xx", "5xx", "none"):
            self.replies.labels(cls)
        r.register(_StoreCollector(store))

    def poll(self, ok: bool) -> None:
        self.polls.labels("ok" if ok else "failed").inc()

    def sent(self, outcome: Outcome, seconds: float) -> None:
        self.send_seconds.observe(seconds)
        self.outcomes.labels(outcome.status).inc()
        self.replies.labels(reply_class(outcome.code)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # Observer ------------------------------------------------------------------------------

    def begin(self, phase: Phase, total: int | None = None) -> None:
        pass

    def advance(self, phase: Phase, n: int = 1) -> None:
        pass

    def matched(self, kind: Literal["digest", "alert"], n_papers: int) -> None:
        self.composed.labels(kind).inc()
        self.matched_papers.labels(kind).inc(n_papers)

    def end(self, phase: Phase, summary: str) -> None:
        pass


def reply_class(code: int | None) -> str:
    return "none" if code is None or not 200 <= code < 600 else f"{code // 100}xx"


class _StoreCollector:
    """Gauges read from the store when scraped: cheap COUNT/MAX queries on indexed columns."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        status = self.store.status()
        yield _gauge("digestd_papers_stored", "Papers in the store", status.papers)
        yield _gauge("digestd_subscribers_known", "Subscribers ever registered", status.subscribers)
        messages = GaugeMetricFamily(
            "digestd_messages", "Outbox messages by state", labels=["state"]
        )
        for state in STATES:
            messages.add_metric([state], status.outbox.get(state, 0))
        yield messages
        bounces = GaugeMetricFamily(
            "digestd_bounces", "Messages read from the bounce mailbox, by kind", labels=["kind"]
        )
        for kind, count in self.store.bounces.counts().items():
            bounces.add_metric([kind], count)
        yield bounces
        last_poll = status.last_success_at
        yield _gauge(
            "digestd_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful poll (0: never)",
            last_poll.timestamp() if last_poll else 0,
        )
        last_sent = self.store.outbox.last_sent_at()
        yield _gauge(
            "digestd_last_sent_timestamp_seconds",
            "Unix time the relay last accepted a message (0: never)",
            last_sent.timestamp() if last_sent else 0,
        )
        yield from _instance_gauges(status.instances)
        info = GaugeMetricFamily("digestd_info", "digestd version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def _instance_gauges(instances: Iterable[InstanceInfo]) -> Iterable[Metric]:
    """Each instance on this state (its last heartbeat) and the leader of each source."""
    seen = GaugeMetricFamily(
        "digestd_instance_last_seen_timestamp_seconds",
        "Unix time of each instance's last heartbeat",
        labels=["instance", "host"],
    )
    leader = GaugeMetricFamily(
        "digestd_poll_leader",
        "1 for the instance that polls the source",
        labels=["source", "instance"],
    )
    for i in instances:
        seen.add_metric([i.name, i.host], i.last_seen.timestamp())
        for source in i.leads:
            leader.add_metric([source, i.name], 1)
    yield seen
    yield leader


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class MeteredMailer:
    """A `Mailer` that times each send and counts its outcome, then tells `on_outcome` (alerts)."""

    def __init__(
        self,
        inner: Mailer,
        metrics: Metrics,
        on_outcome: Callable[[Outcome], None] = lambda outcome: None,
    ) -> None:
        self.inner = inner
        self.metrics = metrics
        self.on_outcome = on_outcome

    async def send(
        self, sender: str, recipient: str, data: bytes, *, canonical: bool = False
    ) -> Outcome:
        start = time.perf_counter()
        outcome = await self.inner.send(sender, recipient, data, canonical=canonical)
        self.metrics.sent(outcome, time.perf_counter() - start)
        self.on_outcome(outcome)
        return outcome

    async def aclose(self) -> None:
        await self.inner.aclose()
