"""What every state-file backend offers: the row types, errors and repository protocols.

SQLite (`digestd.store.sqlite`) is the first implementation; another backend is a new module that
implements these protocols, not an `if` in the callers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self

from digestd.core.errors import DigestdError
from digestd.core.model import Paper, Validators
from digestd.mail.parts import Spliced
from digestd.mail.webcopy import WebBody

__all__ = [
    "SELF_SERVICE_VIAS",
    "STATES",
    "AlertRepository",
    "AlertState",
    "BounceEvent",
    "BounceKind",
    "BounceRepository",
    "InstanceInfo",
    "InstanceRepository",
    "Leadership",
    "LedgerConflict",
    "OutboxKind",
    "OutboxProblem",
    "OutboxRepository",
    "OutboxRow",
    "OutboxState",
    "OwedAlerts",
    "PaperRepository",
    "PollInfo",
    "PollRepository",
    "Pause",
    "Reader",
    "ReaderCounts",
    "ReaderRepository",
    "ReaderState",
    "Rating",
    "RatingRepository",
    "SchemaError",
    "SourceStatus",
    "StateFileMoved",
    "StateStore",
    "StoreStatus",
    "StoredWebCopy",
    "SubscriberRepository",
    "Suppression",
    "SuspendPolicy",
    "Suspension",
    "WebCopyRepository",
]

# 'notice': a mail a reader's own action on the web pages asks for (confirm, "you are
# subscribed"), not a digest or alert; counted apart from those.
OutboxKind = Literal["digest", "alert", "notice"]
# How an address left when it left by its own hand (the List-Unsubscribe POST, the preferences
# page). A notice the person asks for again from the sign-up form still reaches such an address
# (double opt-in); a complaint's, a bounce's or the admin's suppression blocks everything.
SELF_SERVICE_VIAS: tuple[str, ...] = ("one-click", "preferences")
ReaderState = Literal["pending", "active", "paused", "unsubscribed"]
OutboxState = Literal[
    "queued", "sending", "sent", "deferred", "failed", "in_doubt", "expired", "empty"
]
STATES: tuple[OutboxState, ...] = (
    "queued",
    "sending",
    "sent",
    "deferred",
    "failed",
    "in_doubt",
    "expired",
    "empty",
)
_CLAIMABLE = ("queued", "deferred", "in_doubt")
_PENDING = ("queued", "sending", "deferred", "in_doubt")
_PROBLEMS = ("failed", "deferred", "in_doubt", "expired")


class SchemaError(DigestdError):
    """The database was written by a newer digestd than this one."""

    hint = "upgrade digestd, or point it at another database file"


class StateFileMoved(DigestdError):
    """The state file this connection uses no longer has its name (deleted, or replaced)."""

    hint = "put the original file back, or restore the rescued copy, then restart digestd"


class LedgerConflict(DigestdError):
    """A message would carry a paper the ledger already gave to another message of the same
    subscriber (another process composed it meanwhile): the message is not queued."""

    hint = "the paper goes out in the message that reserved it first"


@dataclass(frozen=True, slots=True)
class PollInfo:
    """One recorded poll of a source."""

    at: datetime
    ok: bool
    n_items: int
    n_new: int
    error: str | None
    source: str


@dataclass(frozen=True, slots=True)
class AlertState:
    """One admin alert's row (see `_migration_3`); a missing row reads as all zero."""

    name: str
    firing: bool = False
    notified: bool = False
    streak: int = 0
    since: datetime | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """One source as `digestd status` shows it (and the empty-digest note explains it)."""

    source: str
    last_poll_at: datetime | None
    last_success_at: datetime | None
    last_new_at: datetime | None  # the last poll that stored a paper no source had listed before
    error: str | None  # the latest poll's error, if it failed
    new_since: int = 0


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A claimed outbox row; `state` is the state before claiming (`in_doubt` = may be a resend)."""

    id: int
    subscriber: str
    kind: OutboxKind
    period: str
    message_id: str
    sender: str
    data: bytes
    attempts: int
    state: OutboxState
    suppressed: bool = False  # the address unsubscribed after this was queued (read with the claim)
    canonical: bool = False  # `data` needs no dot-stuffing (`Spliced.canonical`, stored with it)


@dataclass(frozen=True, slots=True)
class OutboxProblem:
    """A failed, deferred or in-doubt outbox row, as `digestd status` shows it."""

    subscriber: str
    kind: OutboxKind
    period: str
    state: OutboxState
    attempts: int
    last_code: int | None
    last_reply: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Suspension:
    """An address with consecutive hard failures; suspended once `failures` reached the limit."""

    email: str
    failures: int
    last_code: int | None
    last_reply: str | None
    updated_at: datetime
    suspended_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoreStatus:
    papers: int
    last_poll: PollInfo | None
    last_success_at: datetime | None
    outbox: dict[str, int]  # every state, zero included
    subscribers: int
    problems: list[OutboxProblem]  # most recent first, at most 20
    suspended: list[Suspension] = field(default_factory=list)  # most recent first
    sources: list[SourceStatus] = field(default_factory=list)
    ratings: tuple[int, int] = (0, 0)  # (likes, dislikes) of every reader (issue #16)
    instances: list[InstanceInfo] = field(default_factory=list)  # by name


@dataclass(frozen=True, slots=True)
class OwedAlerts:
    """One committed poll whose alerts are not queued yet."""

    poll_id: int
    at: datetime  # when the poll ran: alerts expire `alert_ttl` after it
    paper_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Suppression:
    """An address that asked to receive nothing more (`via`: one-click, admin…)."""

    email: str
    at: datetime
    via: str


@dataclass(frozen=True, slots=True)
class Pause:
    """An address that asked for nothing until `until` (any address: the YAML's readers too).

    `resumed_at` is set when the pause ended with "send what I missed" (`catch_up`) and that one
    digest is still owed: it covers the papers first seen since `since`.
    """

    email: str
    since: datetime
    until: datetime
    catch_up: bool = False
    resumed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Reader:
    """A self-registered reader. `spec` is the YAML-shaped subscriber entry they chose (see
    rules/readers.py); `version` counts edits (a page can refuse a stale form)."""

    email: str  # the address key
    name: str | None
    state: ReaderState
    spec: Mapping[str, object]
    created_at: datetime
    confirmed_at: datetime | None
    updated_at: datetime
    version: int
    paused_until: datetime | None = None
    catch_up: bool = False


@dataclass(frozen=True, slots=True)
class ReaderCounts:
    """`digestd status`: readers by state; `paused` counts every paused address, YAML's too."""

    pending: int = 0
    active: int = 0
    paused: int = 0
    unsubscribed: int = 0


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredWebCopy:
    """A web copy as stored: either the whole page (`whole`, zlib-compressed), or a shared body
    (`template`, zlib-compressed, with its `slots` as JSON) and this reader's `fills` (JSON).
    Turning it into a page is the web copy's business (`digestd.mail.webcopy.page_of`)."""

    whole: bytes | None
    template: bytes | None = None
    slots: str | None = None
    fills: str | None = None


BounceKind = Literal["permanent", "temporary", "complaint", "ignored"]


@dataclass(frozen=True, slots=True)
class BounceEvent:
    """One message read from the bounce mailbox, as recorded: `digest` (SHA-256 of its bytes)
    makes it count once; `outbox_id` and `email` are set only when its VERP token verified."""

    digest: str
    kind: BounceKind
    outbox_id: int | None = None
    email: str | None = None
    status: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One `digestd run` on this state, as its heartbeat last wrote it (`leads`: the sources it
    polls as the leader)."""

    name: str
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime
    leads: tuple[str, ...] = ()


# Given an address's consecutive hard failures, why it is suspended now, or None (not yet): the
# caller's policy (`digestd.deliver.drain.suspend_after`), recorded by the outbox.
SuspendPolicy = Callable[[int], "str | None"]

# ---------------------------------------------------------------------------------------------
# The repositories. Writes join the caller's batch when there is one, else commit on their own.


class PaperRepository(Protocol):
    def save(self, papers: Sequence[Paper], *, seen_at: datetime) -> None: ...
    def known(self, ids: Sequence[str]) -> dict[str, Paper]: ...
    def count(self) -> int: ...
    def corpus(self, limit: int) -> list[Paper]: ...  # newest first: the relevance model's corpus
    def get(self, ids: Iterable[str]) -> list[Paper]: ...
    def candidates(self, subscriber: str, *, since: datetime) -> list[Paper]: ...
    def candidates_for(
        self, subscribers: Sequence[str], *, since: datetime
    ) -> dict[str, list[Paper]]: ...


class PollRepository(Protocol):
    def record(
        self,
        source: str,
        *,
        at: datetime,
        ok: bool,
        n_items: int = 0,
        n_new: int = 0,
        error: str | None = None,
    ) -> int: ...
    def last(self, source: str | None = None) -> PollInfo | None: ...
    def last_success_at(self, source: str | None = None) -> datetime | None: ...
    def down_since(self, source: str | None = None) -> datetime | None: ...
    def source_status(
        self, names: Iterable[str] = (), *, since: datetime | None = None
    ) -> list[SourceStatus]: ...
    def get_validators(self, url: str) -> Validators | None: ...
    def save_validators(self, validators: Iterable[Validators], *, at: datetime) -> None: ...
    def owe_alerts(self, poll_id: int, paper_ids: Sequence[str], *, at: datetime) -> None: ...
    def owed_alerts(self) -> list[OwedAlerts]: ...
    def settle_alerts(self, poll_id: int) -> None: ...


class SubscriberRepository(Protocol):
    def register(self, emails: Iterable[str], *, at: datetime) -> dict[str, datetime]: ...
    def count(self) -> int: ...
    def id_of(self, email: str) -> int: ...
    def ids_of(self, emails: Iterable[str]) -> dict[str, int]: ...
    def email_of(self, subscriber_id: int) -> str | None: ...
    def retired_email(self, subscriber_id: int) -> str | None: ...
    def suppress(self, email: str, *, at: datetime, via: str) -> bool: ...
    def unsuppress(self, email: str, *, at: datetime) -> bool: ...
    def is_suppressed(self, email: str) -> bool: ...
    def suppressed_among(self, emails: Iterable[str]) -> set[str]: ...
    def suppressions(self) -> list[Suppression]: ...
    def suspended(self) -> set[str]: ...
    def suspensions(self) -> list[Suspension]: ...
    def unsuspend(self, email: str) -> Suspension | None: ...


class OutboxRepository(Protocol):
    def enqueue(
        self,
        *,
        subscriber: str,
        kind: OutboxKind,
        period: str,
        message_id: str,
        sender: str,
        data: bytes | Spliced | None,
        paper_ids: Sequence[str],
        at: datetime,
        expires_at: datetime | None = None,
    ) -> int | None: ...
    def record_unbuilt(
        self,
        *,
        subscriber: str,
        kind: OutboxKind,
        period: str,
        message_id: str,
        sender: str,
        error: str,
        at: datetime,
    ) -> bool: ...
    def reserved_among(
        self, subscribers: Iterable[str], paper_ids: Sequence[str]
    ) -> set[tuple[str, str]]: ...
    def last_digest_at(self, subscriber: str) -> datetime | None: ...
    def has_period(self, subscriber: str, kind: OutboxKind, period: str) -> bool: ...
    def claim_due(
        self,
        *,
        now: datetime,
        limit: int = 100,
        bodies: bool = True,
        by: str | None = None,
        lease_until: datetime | None = None,
    ) -> list[OutboxRow]: ...
    def renew_leases(self, by: str, *, until: datetime) -> int: ...
    def recover_expired(self, *, now: datetime) -> int: ...
    def with_bodies(self, rows: Sequence[OutboxRow]) -> list[OutboxRow]: ...
    def unclaim(self, rows: Iterable[OutboxRow]) -> int: ...
    def mark_sent(self, outbox_id: int, *, at: datetime, code: int | None, reply: str) -> None: ...
    def mark_deferred(
        self, outbox_id: int, *, at: datetime, retry_at: datetime, code: int | None, reply: str
    ) -> None: ...
    def mark_in_doubt(
        self, outbox_id: int, *, at: datetime, retry_at: datetime, code: int | None, reply: str
    ) -> None: ...
    def mark_failed(
        self,
        outbox_id: int,
        *,
        at: datetime,
        code: int | None,
        reply: str,
        suspend: SuspendPolicy | None = None,
    ) -> bool: ...
    def mark_expired(self, outbox_id: int, *, at: datetime, reason: str) -> None: ...
    def release_stale(self, *, now: datetime, reason: str) -> int: ...
    def expire_except(self, keep: Iterable[str], *, at: datetime, reason: str) -> int: ...
    def recover(self, *, now: datetime, by: str | None = None) -> int: ...
    def due_count(self, *, now: datetime) -> int: ...
    def pending_count(self) -> int: ...
    def last_sent_at(self) -> datetime | None: ...
    def prune(self, *, before: datetime, limit: int = ...) -> int: ...


class WebCopyRepository(Protocol):
    def save(
        self, token: str, *, subscriber: str, html: bytes, at: datetime, expires_at: datetime
    ) -> None: ...
    def save_fills(
        self,
        token: str,
        *,
        subscriber: str,
        body: WebBody,
        fills: Mapping[str, str],
        at: datetime,
        expires_at: datetime,
    ) -> None: ...
    def find(self, token: str, *, now: datetime) -> StoredWebCopy | None: ...
    def prune(self, *, now: datetime) -> int: ...


class AlertRepository(Protocol):
    def state(self, name: str) -> AlertState: ...
    def save(self, state: AlertState, *, at: datetime) -> None: ...


class BounceRepository(Protocol):
    def kind_of(self, digest: str) -> BounceKind | None: ...
    def recipient_of(self, outbox_id: int) -> str | None: ...
    def record(
        self, event: BounceEvent, *, at: datetime, suspend: SuspendPolicy | None
    ) -> Literal["duplicate", "recorded", "suspended", "suppressed"]: ...
    def counts(self) -> dict[BounceKind, int]: ...


class ReaderRepository(Protocol):
    """Self-registered readers, pauses (of any address) and the confirmation-mail rate limit.

    Every address is taken as given and keyed with `address_key`; nothing returns another
    address's data.
    """

    def add_pending(
        self, email: str, *, name: str | None, spec: Mapping[str, object], at: datetime
    ) -> Reader: ...
    def get(self, email: str) -> Reader | None: ...
    def confirm(self, email: str, *, at: datetime) -> Reader | None: ...
    def update(
        self, email: str, *, spec: Mapping[str, object], at: datetime, name: str | None = None
    ) -> Reader | None: ...
    def remove(self, email: str, *, at: datetime) -> bool: ...
    def version(self) -> int: ...
    def active(self) -> list[Reader]: ...
    def pending(self) -> list[Reader]: ...
    def counts(self, *, at: datetime) -> ReaderCounts: ...
    def expire_pending(self, *, before: datetime) -> int: ...
    def may_send_confirmation(self, email: str, *, at: datetime, every: timedelta) -> bool: ...
    def pause(
        self, email: str, *, until: datetime, at: datetime, catch_up: bool = False
    ) -> Pause: ...
    def resume(self, email: str, *, at: datetime, catch_up: bool | None = None) -> bool: ...
    def pause_of(self, email: str) -> Pause | None: ...
    def paused(self, *, at: datetime) -> set[str]: ...
    def end_pauses(self, *, at: datetime) -> int: ...
    def catch_ups(self) -> dict[str, datetime]: ...
    def settle_catch_up(self, email: str) -> None: ...


# -- ratings (issue #16): what a reader liked and disliked, the relevance model's teaching ----------


@dataclass(frozen=True, slots=True)
class Rating:
    """One reader's verdict on one paper: +1 (more like this) or -1 (less like this)."""

    reader: str  # address_key
    paper_id: str
    value: int
    at: datetime
    origin: str = "click"  # "click" (a mail link) or "import" (a `like:` list)


class RatingRepository(Protocol):
    def rate(
        self, reader: str, paper_id: str, value: int, *, at: datetime, origin: str = "click"
    ) -> None:
        """Record (or replace: a second click on the other link wins) one rating."""
        ...

    def unrate(self, reader: str, paper_id: str) -> bool: ...

    def ratings(self, reader: str) -> list[Rating]:
        """The reader's ratings, oldest first."""
        ...

    def likes(self, reader: str) -> list[str]:
        """Paper ids the reader liked, oldest first."""
        ...

    def readers(self) -> list[str]:
        """Every reader with at least one rating."""
        ...

    def changed_since(self, at: datetime) -> list[str]:
        """Readers whose ratings changed at or after `at` (their models need training)."""
        ...

    def forget(self, reader: str) -> int:
        """Remove every rating of a reader (a removed reader's data goes with them)."""
        ...

    def count(self) -> tuple[int, int]:
        """(likes, dislikes) over every reader, for `digestd status`."""
        ...


class InstanceRepository(Protocol):
    """The running instances: each writes its row (`beat`) every few seconds."""

    def beat(self, me: InstanceInfo) -> None: ...
    def forget(self, name: str) -> None: ...
    def all(self) -> list[InstanceInfo]: ...


class Leadership(Protocol):
    """Who polls a source: one leader at a time among the instances on one state. Leadership is
    held by a session (PostgreSQL: an advisory lock on a connection of its own), so it ends
    when its holder dies, and `try_lead` by another instance then succeeds."""

    def try_lead(self, source: str) -> bool: ...
    def release(self, source: str) -> None: ...
    def leading(self) -> frozenset[str]: ...
    def close(self) -> None: ...


class StateStore(Protocol):
    """The state as callers see it, whatever the backend (`digestd.store.open_store`): one
    repository per entity, transactions, the server secret, health. Not thread-safe: another
    thread opens its own with `side()`."""

    papers: PaperRepository
    polls: PollRepository
    subscribers: SubscriberRepository
    outbox: OutboxRepository
    webcopies: WebCopyRepository
    alerts: AlertRepository
    bounces: BounceRepository
    readers: ReaderRepository
    ratings: RatingRepository
    instances: InstanceRepository
    # Whether other daemons may share this state (PostgreSQL): their claims are then not ours.
    shared: bool

    def leadership(self, name: str = "") -> Leadership:
        """Poll leadership for one daemon (see `Leadership`)."""
        ...

    @property
    def path(self) -> Path | str:
        """Where the state is, as a person may read it (a file, or a URL without password)."""
        ...

    def side(self) -> StateStore:
        """Another connection to the same state, for another thread; never a new empty one."""
        ...

    def batch(self, *, sync: bool = True) -> AbstractContextManager[None]:
        """One transaction for several writes of any repositories."""
        ...

    def status(self) -> StoreStatus: ...
    def secret(self) -> bytes: ...

    def moved(self) -> str | None:
        """Why the state is no longer the one opened (a file deleted, replaced), or None."""
        ...

    def rescue(self, at: datetime) -> Path:
        """A consistent copy of a moved file's data (only called when `moved()` said so)."""
        ...

    def ping(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
