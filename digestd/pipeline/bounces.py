"""Reading the bounce mailboxes: each new message parsed, its VERP token verified against the
store, recorded (one transaction), then finished in its mailbox.

A permanent DSN strikes the address as a synchronous 5xx does (`delivery.suspend_after`); a
temporary one is recorded; an abuse report suppresses the address at once ("via complaint").
A message that is neither, or whose token does not verify (forged, or for a message this store
never sent), is recorded as ignored and left alone in its mailbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime

from digestd.bounces.inbox import Inbox, Incoming
from digestd.bounces.parse import Report, parse_report
from digestd.bounces.verp import BOUNCE_PURPOSE
from digestd.deliver.drain import suspend_after
from digestd.mail import linktokens
from digestd.store import StateStore
from digestd.store.protocols import BounceEvent

__all__ = ["BounceTally", "bounce_key", "read_bounces"]

log = logging.getLogger("digestd.pipeline")
_BATCH = 100  # messages per fetch: a backlog is read in rounds, each recorded before the next


@dataclass(slots=True)
class BounceTally:
    read: int = 0
    permanent: int = 0
    temporary: int = 0
    complaint: int = 0
    ignored: int = 0
    duplicate: int = 0  # read before (a crash between recording and finishing)
    suspended: int = 0
    suppressed: int = 0


def bounce_key(secret: bytes) -> bytes:
    """The VERP tokens' key: of its own purpose, so no link token of ours verifies as one."""
    return linktokens.derive_key(secret, BOUNCE_PURPOSE)


async def read_bounces(
    store: StateStore,
    inbox: Inbox,
    *,
    verp: str | None,
    key: bytes,
    now: datetime,
    suspend: int | None,
    max_bytes: int,
    limit: int = 1000,
) -> BounceTally:
    """Read up to `limit` new messages from `inbox`; the blocking mailbox calls run in a thread,
    the store's writes on the caller's (its connection belongs to it)."""
    tally = BounceTally()
    while tally.read < limit:
        batch = await asyncio.to_thread(inbox.fetch, min(_BATCH, limit - tally.read))
        if not batch:
            break
        for item in batch:
            handled = _record(store, item, verp=verp, key=key, now=now, suspend=suspend,
                              max_bytes=max_bytes, tally=tally)  # fmt: skip
            await asyncio.to_thread(inbox.finish, item, handled=handled)
            tally.read += 1
    return tally


def _record(
    store: StateStore,
    item: Incoming,
    *,
    verp: str | None,
    key: bytes,
    now: datetime,
    suspend: int | None,
    max_bytes: int,
    tally: BounceTally,
) -> bool:
    """Parse, verify and record one message; whether it was handled (else: left alone)."""
    digest = hashlib.sha256(item.data).hexdigest()
    seen = store.bounces.kind_of(digest)
    if seen is not None:
        tally.duplicate += 1
        return seen != "ignored"
    event = _event(store, parse_report(item.data, verp=verp, max_bytes=max_bytes), digest, key)
    result = store.bounces.record(event, at=now, suspend=suspend_after(suspend))
    setattr(tally, event.kind, getattr(tally, event.kind) + 1)
    tally.suspended += result == "suspended"
    tally.suppressed += result == "suppressed"
    # No address and no diagnostic text (it quotes addresses): the outbox id leads to both.
    log.info(
        "bounce kind=%s status=%s outbox_id=%s result=%s",
        event.kind, event.status, event.outbox_id, result,
    )  # fmt: skip
    return event.kind != "ignored"


def _event(store: StateStore, report: Report, digest: str, key: bytes) -> BounceEvent:
    """The report as recorded: acted upon only with a token that verifies for a message we sent."""
    if report.kind == "ignored":
        return BounceEvent(digest, "ignored", detail=report.detail)
    if not report.tokens:
        return BounceEvent(digest, "ignored", status=report.status,
                           detail=f"{report.kind} report without a VERP token")  # fmt: skip
    for token in report.tokens:
        parsed = linktokens.parse_bounce(token)
        email = None if parsed is None else store.bounces.recipient_of(parsed.outbox_id)
        if parsed is not None and email is not None and parsed.verify(key, email):
            return BounceEvent(digest, report.kind, parsed.outbox_id, email, report.status,
                               report.detail)  # fmt: skip
    return BounceEvent(digest, "ignored", status=report.status,
                       detail=f"{report.kind} report whose VERP token does not verify")  # fmt: skip
