"""The bounce mailboxes as the daemon and `run --once` read them: the inboxes the settings name,
read one after the other, a failing one logged (never a traceback) and retried next time."""

from __future__ import annotations

import logging
from datetime import datetime

from apscheduler.triggers.interval import IntervalTrigger

from digestd.bounces.imap import ImapError, ImapInbox
from digestd.bounces.inbox import Inbox, MaildirInbox
from digestd.config.settings import Settings
from digestd.pipeline import Deps
from digestd.pipeline.bounces import BounceTally, bounce_key, read_bounces
from digestd.service.clock import utcnow
from digestd.service.schedule import Schedule

__all__ = ["BounceReader", "schedule_bounces"]

log = logging.getLogger(__name__)


class BounceReader:
    """The configured inboxes (a Maildir, an IMAP folder) and what reading them needs."""

    def __init__(self, settings: Settings) -> None:
        b = settings.bounces
        self.settings = b
        self.verp = settings.delivery.verp
        self.inboxes: list[Inbox] = []
        if b.maildir is not None:
            self.inboxes.append(
                MaildirInbox(b.maildir, processed=b.processed, move_to=b.move_to,
                             max_bytes=b.max_bytes)
            )  # fmt: skip
        imap = b.imap
        if imap is not None:
            self.inboxes.append(
                ImapInbox(
                    imap.host, imap.port, username=imap.username,
                    password=settings.imap_password() or "", security=imap.security,
                    folder=imap.folder, processed=b.processed, move_to=b.move_to,
                    max_bytes=b.max_bytes, timeout=imap.timeout.total_seconds(),
                    ca_file=imap.ca_file, validate_certs=imap.validate_certs,
                )
            )  # fmt: skip

    async def read(self, deps: Deps, *, now: datetime) -> BounceTally:
        """Every inbox once; an inbox that fails is logged and skipped until the next run.
        Each is closed afterwards (a logout takes a moment; it is not worth a held session)."""
        total = BounceTally()
        key = bounce_key(deps.options.secret or deps.store.secret())
        for inbox in self.inboxes:
            try:
                tally = await read_bounces(
                    deps.store, inbox, verp=self.verp, key=key, now=now,
                    suspend=deps.options.suspend_after, max_bytes=self.settings.max_bytes,
                )  # fmt: skip
            except (ImapError, OSError) as exc:
                log.warning("bounces not read inbox=%r error=%s", inbox, exc)
                continue
            finally:
                inbox.close()  # one IMAP session per run: nothing held open between runs
            for name in total.__slots__:
                setattr(total, name, getattr(total, name) + getattr(tally, name))
        if total.read:
            log.info(
                "bounces read=%d permanent=%d temporary=%d complaints=%d ignored=%d"
                " suspended=%d suppressed=%d", total.read, total.permanent, total.temporary,
                total.complaint, total.ignored, total.suspended, total.suppressed,
            )  # fmt: skip
        return total

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.close()


def schedule_bounces(schedule: Schedule, deps: Deps, settings: Settings) -> BounceReader | None:
    """A job reading the bounce inboxes every `bounces.check_every` (under the work lock, as
    every store write is), first at start-up; None when no inbox is configured."""
    if not settings.bounces.enabled:
        return None
    reader = BounceReader(settings)

    async def job() -> None:
        await reader.read(deps, now=utcnow())

    schedule.scheduler.add_job(
        schedule.locked(job),
        IntervalTrigger(seconds=settings.bounces.check_every.total_seconds()),
        id="bounces",
        next_run_time=utcnow(),
    )
    return reader
