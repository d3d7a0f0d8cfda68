"""Orchestration: ingest (poll → store → owed alerts), compose (due digests → outbox), deliver_due.
The only place that knows the order; `from digestd import pipeline; pipeline.compose(...)`."""

from digestd.pipeline.compose import ComposeReport, Overdue, compose, overdue
from digestd.pipeline.deliver import DeliverReport, deliver_due
from digestd.pipeline.deps import Audience, Deps, Options, key, register, swap_subscribers, swap_web
from digestd.pipeline.enqueue import links_for, make_message_id
from digestd.pipeline.ingest import (
    IngestReport,
    fetch,
    ingest,
    queue_owed_alerts,
    record_poll,
)
from digestd.pipeline.preview import preview

__all__ = [
    "Audience",
    "ComposeReport",
    "DeliverReport",
    "Deps",
    "IngestReport",
    "Options",
    "Overdue",
    "compose",
    "deliver_due",
    "fetch",
    "ingest",
    "key",
    "links_for",
    "make_message_id",
    "overdue",
    "preview",
    "queue_owed_alerts",
    "record_poll",
    "register",
    "swap_subscribers",
    "swap_web",
]
