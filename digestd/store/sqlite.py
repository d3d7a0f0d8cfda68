"""The SQLite store: papers seen, polls, subscribers, the delivery ledger and the outbox.

Every public method is one short transaction. Times are always passed in (time-machine does not
mock SQLite's clock), stored as fixed-width ISO-8601 UTC text so that text order is time order, and
returned as aware UTC datetimes.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import sqlite3
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, cast

from digestd.core.errors import DigestdError
from digestd.core.merge import merge, merge_all
from digestd.core.model import Authority, Paper, Validators
from digestd.core.redact import safe_text
from digestd.mail.parts import Part, Spliced
from digestd.mail.webcopy import WebBody, fill_page

__all__ = [
    "SCHEMA_VERSION",
    "STATES",
    "OutboxKind",
    "OutboxProblem",
    "OutboxRow",
    "OutboxState",
    "AlertState",
    "LedgerConflict",
    "PollInfo",
    "SchemaError",
    "SourceStatus",
    "StateFileMoved",
    "explain",
    "probe",
    "Store",
    "StoreStatus",
    "Suppression",
    "Suspension",
]

OutboxKind = Literal["digest", "alert"]
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
_ENDED = ("sent", "failed", "expired", "empty")  # nothing more will be sent: bytes may go
# Rows a sender may still expire: anything not final (a claimed row may turn out to be too old).
_EXPIRABLE = _PENDING
# Well under SQLite's default limit of host parameters per statement (32766 since 3.32, 999 before).
_CHUNK = 500
# Enough to spot a pattern in `digestd status` without flooding the screen.
_STATUS_PROBLEMS = 20
# How long (ms) to wait for another connection's write lock before "database is locked".
_BUSY_TIMEOUT_MS = 5000
_PRUNE_ROWS = 20_000  # outbox rows one prune looks at: a day's run of a large list
_PROBE_WAIT = 0.5  # s `probe` waits for another writer before calling the file in use
_PART_CACHE = 64  # shared message parts kept in memory: a few per shape, a few shapes per run

_T = TypeVar("_T")


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


# ---------------------------------------------------------------------------------------------
# Value conversions


def _ts(value: datetime) -> str:
    """Aware datetime → fixed-width UTC text (always with microseconds: text order = time order)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime given to the store: {value!r}")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _opt_ts(value: datetime | None) -> str | None:
    return None if value is None else _ts(value)


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _opt_dt(text: str | None) -> datetime | None:
    return None if text is None else _dt(text)


# What to do about an SQLite error a person can fix, by a word of its message.
_HINTS = (
    ("readonly", "make it, its -wal and -shm files and its directory writable by the user"
     " digestd runs as"),
    ("disk is full", "free space on its file system; what was queued before is kept and sent"
     " by the next run"),
    ("unable to open", "check that its directory exists and is writable by the user digestd"
     " runs as"),
    ("locked", "another program holds it locked; digestd tries again at the next run"),
    ("not a database", "the file is not a digestd database: check the `state` setting"),
    ("malformed", "the file is damaged: restore it from a backup"),
)  # fmt: skip


def explain(path: Path, exc: sqlite3.Error) -> str:
    """One line for a person: what is wrong with the state file at `path`, what to do."""
    text = str(exc)
    hint = next((h for word, h in _HINTS if word in text.lower()), "")
    return f"the state file {path}: {text}" + (f" ({hint})" if hint else "")


def probe(path: Path) -> str:
    """Whether digestd can run on the state file at `path`, changing nothing: a write in a
    transaction that is rolled back. Returns what it found.

    :raises sqlite3.Error: the file cannot be written (read-only, full, not a database…).
    :raises OSError: it does not exist and cannot be created.
    """
    if not path.exists():
        parent = next(p for p in (path.parent, *path.parents) if p.exists())
        if not os.access(parent, os.W_OK):
            raise sqlite3.OperationalError(f"unable to open database file (in {parent})")
        return "not created yet"
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=rw"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=_PROBE_WAIT)
    try:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            # A running daemon holds the write lock: it writes there, so the file is writable
            # (`check` before a reload must not fail on that).
            return "in use by a running digestd"
        db.execute("CREATE TABLE digestd_probe (x)")  # SQLite refuses the write here, if at all
        db.execute("ROLLBACK")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        row = None
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = row[0] if row else "0"
    finally:
        db.close()
    return f"writable, schema version {version}"


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None for an in-memory database."""
    if str(path) == ":memory:":
        return None
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _email_key(email: str) -> str:
    return email.strip().lower()


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


# ---------------------------------------------------------------------------------------------
# Schema: migration N brings the database from version N-1 to N. Append, never edit.


def _migration_1(db: sqlite3.Connection) -> None:
    for statement in _SCHEMA_1:
        db.execute(statement)


_SCHEMA_1 = (
    """CREATE TABLE papers (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        abstract TEXT NOT NULL,
        authors TEXT NOT NULL,
        upvotes INTEGER NOT NULL,
        comments INTEGER NOT NULL,
        organization TEXT,
        published_at TEXT,
        listed_on TEXT,
        ai_summary TEXT,
        github_repo TEXT,
        project_page TEXT,
        first_seen_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX papers_first_seen ON papers(first_seen_at)",
    """CREATE TABLE polls (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        at TEXT NOT NULL,
        ok INTEGER NOT NULL,
        n_items INTEGER NOT NULL,
        n_new INTEGER NOT NULL,
        error TEXT
    )""",
    "CREATE INDEX polls_source_at ON polls(source, at)",
    "CREATE INDEX polls_at ON polls(at)",
    """CREATE TABLE subscribers (
        email TEXT PRIMARY KEY,
        registered_at TEXT NOT NULL
    )""",
    """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        subscriber TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('digest', 'alert')),
        period TEXT NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        sender TEXT NOT NULL,
        data BLOB,
        n_papers INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('queued', 'sending', 'sent', 'deferred', 'failed', 'in_doubt', 'expired', 'empty')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        last_code INTEGER,
        last_reply TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        sent_at TEXT,
        expires_at TEXT,
        UNIQUE (subscriber, kind, period)
    )""",
    "CREATE INDEX outbox_due ON outbox(state, next_attempt_at)",
    """CREATE TABLE deliveries (
        subscriber TEXT NOT NULL,
        paper_id TEXT NOT NULL,
        outbox_id INTEGER NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
        PRIMARY KEY (subscriber, paper_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX deliveries_outbox ON deliveries(outbox_id)",
)


def _migration_2(db: sqlite3.Connection) -> None:
    """Unsubscribe and web copies: stable subscriber ids for tokens, suppressions, stored HTML."""
    for statement in _SCHEMA_2:
        db.execute(statement)


_SCHEMA_2 = (
    # AUTOINCREMENT: an id is never reused, so an old unsubscribe link can never name someone else.
    """CREATE TABLE subscriber_ids (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        email TEXT NOT NULL UNIQUE
    )""",
    """CREATE TABLE suppressions (
        email TEXT PRIMARY KEY,
        at TEXT NOT NULL,
        via TEXT NOT NULL
    )""",
    """CREATE TABLE web_copies (
        token TEXT PRIMARY KEY,
        subscriber TEXT NOT NULL,
        html BLOB NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    )""",
    "CREATE INDEX web_copies_expires ON web_copies(expires_at)",
)


def _migration_3(db: sqlite3.Connection) -> None:
    # Admin alerts: `firing` is the condition as last evaluated, `notified` what the admins were
    # last told; a mail goes out only when the two differ, so one per transition, retried if lost.
    db.execute(
        """CREATE TABLE admin_alerts (
            name TEXT PRIMARY KEY,
            firing INTEGER NOT NULL DEFAULT 0,
            notified INTEGER NOT NULL DEFAULT 0,
            streak INTEGER NOT NULL DEFAULT 0,
            since TEXT,
            detail TEXT,
            updated_at TEXT NOT NULL
        )"""
    )


def _migration_4(db: sqlite3.Connection) -> None:
    """Delivery hardening: the ledger records when a paper really went out; hard-failure strikes."""
    # Set in the transaction that marks the message sent; NULL = reserved, message not yet sent.
    db.execute("ALTER TABLE deliveries ADD COLUMN sent_at TEXT")
    # One row per address with consecutive hard failures; suspended_at set = gets nothing more.
    db.execute(
        """CREATE TABLE suspensions (
            email TEXT PRIMARY KEY,
            failures INTEGER NOT NULL,
            last_code INTEGER,
            last_reply TEXT,
            updated_at TEXT NOT NULL,
            suspended_at TEXT
        )"""
    )
    # Message bytes live apart from the outbox row: every state change rewrites the whole row,
    # and with ~40 KB inline that was 11 WAL pages per transition. Older rows keep outbox.data.
    db.execute(
        """CREATE TABLE outbox_bodies (
            outbox_id INTEGER PRIMARY KEY REFERENCES outbox(id) ON DELETE CASCADE,
            data BLOB NOT NULL
        )"""
    )


def _migration_5(db: sqlite3.Connection) -> None:
    """Several sources: what each knows of a paper, and HTTP validators for conditional polls."""
    for statement in _SCHEMA_5:
        db.execute(statement)


_SCHEMA_5 = (
    "ALTER TABLE papers ADD COLUMN categories TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE papers ADD COLUMN sources TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE papers ADD COLUMN version INTEGER",
    # Every paper stored before this migration came from a Hugging Face listing (or its format).
    "ALTER TABLE papers ADD COLUMN on_huggingface INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE papers ADD COLUMN link TEXT",
    """CREATE TABLE http_validators (
        url TEXT PRIMARY KEY,
        etag TEXT,
        last_modified TEXT,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX polls_source_new ON polls(source, n_new, at)",
)


def _migration_6(db: sqlite3.Connection) -> None:
    """Web copies as one shared body per distinct page plus each subscriber's few values.

    Thousands of copies of one run differ only in a name and two links; compressing and storing
    ~40 KB each cost more than rendering the mail. A body holds the page with placeholder tokens
    (`slots`: JSON slot → token); a copy that names one stores `fills` (JSON slot → value) and an
    empty `html`. Rows from before keep their whole compressed page.
    """
    db.execute(
        """CREATE TABLE web_bodies (
            hash TEXT PRIMARY KEY,
            html BLOB NOT NULL,
            slots TEXT NOT NULL
        )"""
    )
    db.execute("ALTER TABLE web_copies ADD COLUMN body TEXT")
    db.execute("ALTER TABLE web_copies ADD COLUMN fills TEXT")
    db.execute("CREATE INDEX web_copies_body ON web_copies(body)")
    # Message bytes may be stored zlib-compressed (by the compose worker): ~4x less to write to
    # the WAL and the database, which at 44 KB a message had become the compose bottleneck.
    db.execute("ALTER TABLE outbox_bodies ADD COLUMN zlib INTEGER NOT NULL DEFAULT 0")


def _migration_7(db: sqlite3.Connection) -> None:
    """Whether a body is known to need no dot-stuffing (`Spliced.canonical`), as checked by the
    compose worker that built it; rows from before are checked when sent, as always."""
    db.execute("ALTER TABLE outbox_bodies ADD COLUMN canonical INTEGER NOT NULL DEFAULT 0")


def _migration_8(db: sqlite3.Connection) -> None:
    """Message bytes shared by many messages (`mail.parts.Part`: a run of a shape's template) stored
    once; each body keeps its own bytes and where each part goes (`outbox_parts`, in `seq`
    order, at byte offset `at` of its own bytes). A part goes once no body names it (`prune`);
    the foreign key refuses to drop one that is still named.
    """
    db.execute(
        """CREATE TABLE message_parts (
            key TEXT PRIMARY KEY,
            data BLOB NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE outbox_parts (
            outbox_id INTEGER NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            at INTEGER NOT NULL,
            part TEXT NOT NULL REFERENCES message_parts(key),
            PRIMARY KEY (outbox_id, seq)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX outbox_parts_part ON outbox_parts(part)")


def _migration_9(db: sqlite3.Connection) -> None:
    """Which kind of source a paper's text came from (`model.Authority`), so a feed can no longer
    overwrite arXiv's or Hugging Face's text. Rows from before get the lowest rank their columns
    allow: listed on HF → HF; no link (only arXiv and HF rows have none) → arXiv RSS; else a feed.
    A version on a row a feed touched may be a feed's claim: it is forgotten, so the next arXiv
    or HF poll rewrites the text.
    """
    db.execute("ALTER TABLE papers ADD COLUMN authority INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "UPDATE papers SET authority = CASE WHEN on_huggingface = 1 THEN ?"
        " WHEN link IS NULL THEN ? ELSE ? END",
        (int(Authority.HUGGINGFACE), int(Authority.ARXIV_RSS), int(Authority.FEED)),
    )
    db.execute("UPDATE papers SET version = NULL WHERE link IS NOT NULL")


def _migration_10(db: sqlite3.Connection) -> None:
    """Resubscribing retires the address's id: links made before it (in mails read before the
    unsubscribe) name a retired id and do nothing; the next mail carries a new id (AUTOINCREMENT
    never gives an id twice). Kept to tell such a link apart from a forged one."""
    db.execute(
        """CREATE TABLE retired_subscriber_ids (
            id INTEGER PRIMARY KEY,
            email TEXT NOT NULL,
            retired_at TEXT NOT NULL
        )"""
    )


def _migration_11(db: sqlite3.Connection) -> None:
    """The alerts a poll owes: written in the poll's own transaction, with its papers, and deleted in
    the one that queues those alerts, so a crash or an error in between leaves them owed, not
    forgotten (issue 12 item 6). `paper_ids`: a JSON list, the poll's new papers.
    """
    db.execute(
        """CREATE TABLE alerts_owed (
            poll_id INTEGER PRIMARY KEY REFERENCES polls(id),
            at TEXT NOT NULL,
            paper_ids TEXT NOT NULL
        )"""
    )


_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
    _migration_8,
    _migration_9,
    _migration_10,
    _migration_11,
)
SCHEMA_VERSION = len(_MIGRATIONS)

_PAPER_COLUMNS = (
    "id, title, abstract, authors, upvotes, comments, organization, published_at, listed_on,"
    " ai_summary, github_repo, project_page, first_seen_at, categories, sources, version,"
    " on_huggingface, link, authority"
)

# The row is the merge of what every source said (digestd.core.merge, done before writing), so a
# known paper is simply overwritten; only first_seen_at never changes.
_UPSERT_PAPER = """
INSERT INTO papers (id, title, abstract, authors, upvotes, comments, organization, published_at,
                    listed_on, ai_summary, github_repo, project_page, first_seen_at, updated_at,
                    categories, sources, version, on_huggingface, link, authority)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    title = excluded.title,
    abstract = excluded.abstract,
    authors = excluded.authors,
    upvotes = excluded.upvotes,
    comments = excluded.comments,
    organization = excluded.organization,
    published_at = excluded.published_at,
    listed_on = excluded.listed_on,
    ai_summary = excluded.ai_summary,
    github_repo = excluded.github_repo,
    project_page = excluded.project_page,
    updated_at = excluded.updated_at,
    categories = excluded.categories,
    sources = excluded.sources,
    version = excluded.version,
    on_huggingface = excluded.on_huggingface,
    link = excluded.link,
    authority = excluded.authority
"""


def _paper_params(paper: Paper, seen: str) -> tuple[Any, ...]:
    return (
        paper.id,
        paper.title,
        paper.abstract,
        json.dumps(list(paper.authors), ensure_ascii=False),
        paper.upvotes,
        paper.comments,
        paper.organization,
        _opt_ts(paper.published_at),
        None if paper.listed_on is None else paper.listed_on.isoformat(),
        paper.ai_summary,
        paper.github_repo,
        paper.project_page,
        seen,
        seen,
        json.dumps(list(paper.categories)),
        json.dumps(list(paper.sources), ensure_ascii=False),
        paper.version,
        int(paper.on_huggingface),
        paper.link,
        int(paper.authority),
    )


def _paper_from_row(row: sqlite3.Row) -> Paper:
    return _paper_from_values(tuple(row[c] for c in _PAPER_FIELDS))


_PAPER_FIELDS = (
    "id", "title", "abstract", "authors", "upvotes", "comments", "organization", "published_at",
    "listed_on", "ai_summary", "github_repo", "project_page", "first_seen_at",
    "categories", "sources", "version", "on_huggingface", "link", "authority",
)  # fmt: skip


@functools.lru_cache(maxsize=4096)  # every subscriber's candidates are the same few rows
def _paper_from_values(values: tuple[Any, ...]) -> Paper:
    row = dict(zip(_PAPER_FIELDS, values, strict=True))
    return Paper(
        id=row["id"],
        title=row["title"],
        abstract=row["abstract"],
        authors=tuple(json.loads(row["authors"])),
        upvotes=row["upvotes"],
        comments=row["comments"],
        organization=row["organization"],
        published_at=_opt_dt(row["published_at"]),
        listed_on=None if row["listed_on"] is None else date.fromisoformat(row["listed_on"]),
        ai_summary=row["ai_summary"],
        github_repo=row["github_repo"],
        project_page=row["project_page"],
        first_seen_at=_dt(row["first_seen_at"]),
        categories=tuple(json.loads(row["categories"])),
        sources=tuple(json.loads(row["sources"])),
        version=row["version"],
        on_huggingface=bool(row["on_huggingface"]),
        link=row["link"],
        authority=Authority(row["authority"]),
    )


def _poll_from_row(row: sqlite3.Row) -> PollInfo:
    return PollInfo(
        at=_dt(row["at"]),
        ok=bool(row["ok"]),
        n_items=row["n_items"],
        n_new=row["n_new"],
        error=row["error"],
        source=row["source"],
    )


_BODY_COLUMNS = (
    "COALESCE(b.data, o.data) AS data, COALESCE(b.zlib, 0) AS zlib,"
    " COALESCE(b.canonical, 0) AS canonical"
)


_Body = tuple[bytes, bool]  # a message's whole bytes and whether they are canonical


def _body(data: bytes, packed: int, canonical: int, parts: Sequence[tuple[int, Part]]) -> _Body:
    plain = zlib.decompress(data) if packed else bytes(data)
    return Spliced(plain, tuple(parts)).whole(), bool(canonical)


def _outbox_from_row(row: sqlite3.Row, *, attempts: int, body: _Body = (b"", False)) -> OutboxRow:
    return OutboxRow(
        id=row["id"],
        subscriber=row["subscriber"],
        kind=row["kind"],
        period=row["period"],
        message_id=row["message_id"],
        sender=row["sender"],
        data=body[0],
        attempts=attempts,
        state=row["state"],
        suppressed=bool(row["suppressed"]),
        canonical=body[1],
    )


def _suspension_from_row(row: sqlite3.Row) -> Suspension:
    return Suspension(
        email=row["email"],
        failures=row["failures"],
        last_code=row["last_code"],
        last_reply=row["last_reply"],
        updated_at=_dt(row["updated_at"]),
        suspended_at=_opt_dt(row["suspended_at"]),
    )


def _problem_from_row(row: sqlite3.Row) -> OutboxProblem:
    return OutboxProblem(
        subscriber=row["subscriber"],
        kind=row["kind"],
        period=row["period"],
        state=row["state"],
        attempts=row["attempts"],
        last_code=row["last_code"],
        last_reply=row["last_reply"],
        updated_at=_dt(row["updated_at"]),
    )


# ---------------------------------------------------------------------------------------------


class Store:
    """One connection to the digestd database; not thread-safe, meant for the event loop thread."""

    def __init__(self, path: str | Path, *, same_as: Store | None = None) -> None:
        """Open (and create, unless `same_as`) the database at `path`.

        `same_as`: a second connection to the very file `same_as` has open; never creates one.
        :raises StateFileMoved: with `same_as`, another file (or none) now has the name.
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the sqlite3 module must not open transactions behind our back;
        # `_write` issues BEGIN IMMEDIATE so the write lock is taken up front (no upgrade deadlock).
        self._db = self._connect(same_as)
        # Which file this is: a file deleted or replaced under a running daemon keeps being
        # written through the open descriptor while new connections get another (`moved`).
        self.identity = _identity(self.path)
        if same_as is not None and self.identity != same_as.identity:
            self._db.close()
            raise StateFileMoved(same_as.moved() or f"the state file {self.path} was replaced")
        self._db.row_factory = sqlite3.Row
        self._secret: bytes | None = None
        self._batching = False
        self._written: set[tuple[str, str]] = set()  # shared bytes inserted in this transaction
        self._part_cache: dict[str, Part] = {}
        try:
            self._configure()
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------

    def _connect(self, same_as: Store | None) -> sqlite3.Connection:
        if same_as is None or str(self.path) == ":memory:":
            return sqlite3.connect(self.path, isolation_level=None)
        # mode=rw: a second connection must never create an empty database under the name.
        uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=rw"
        try:
            return sqlite3.connect(uri, uri=True, isolation_level=None)
        except sqlite3.OperationalError:
            raise StateFileMoved(f"the state file {self.path} was deleted") from None

    def moved(self) -> str | None:
        """Why the name no longer leads to this connection's file (deleted, replaced), or None."""
        if self.identity is None:
            return None
        try:
            now = _identity(self.path)
        except FileNotFoundError:
            return f"the state file {self.path} was deleted"
        except OSError as exc:
            return f"the state file {self.path} cannot be checked: {exc.strerror}"
        if now != self.identity:
            return f"the state file {self.path} was replaced by another file"
        return None

    def rescue(self, at: datetime) -> Path:
        """A consistent copy of this connection's database next to its old name, for a file
        deleted or replaced under us: what only our open descriptor still reaches."""
        target = self.path.with_name(f"{self.path.name}.rescued-{at.strftime('%Y%m%dT%H%M%SZ')}")
        copy = sqlite3.connect(target)
        try:
            self._db.backup(copy)
        finally:
            copy.close()
        return target

    def _configure(self) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        # New files only (an existing one keeps its size): a ~40 KB message then spans 3 pages,
        # not 11, and composing 20,000 writes ~10 % faster. 64 KiB pages were slower again.
        self._db.execute("PRAGMA page_size = 16384")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL (got {mode!r})")
        # FULL: under WAL, NORMAL may lose the last commits on power loss; "sent" must stay sent.
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.path} has schema version {version};"
                f" this digestd knows up to {SCHEMA_VERSION}"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with self._write() as db:
                _MIGRATIONS[number - 1](db)
                self._set_meta(db, "schema_version", str(number))

    def schema_version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def ping(self) -> None:
        """A cheap query, for the systemd watchdog: raises if the database is unusable."""
        self._db.execute("SELECT 1").fetchone()

    @contextmanager
    def batch(self, *, sync: bool = True) -> Iterator[None]:
        """One transaction for several writes (each `_write` inside joins it): one commit, not N.

        Only for work that is redone when lost, like composing: nothing in it is final until the
        batch commits, so a crash inside the batch leaves none of it.

        `sync=False` commits without waiting for the disk (WAL, synchronous=NORMAL): still atomic
        and safe from a crash of the process, and made durable by the next FULL commit, which
        syncs the whole WAL. For composing: a queued message is sent only after its `sending`
        mark is committed FULL, so nothing leaves the host that a power cut could forget.
        """
        if not sync:
            self._db.execute("PRAGMA synchronous = NORMAL")
        try:
            with self._write():
                self._batching = True
                try:
                    yield
                finally:
                    self._batching = False
        finally:
            if not sync:
                self._db.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self._batching:
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._written.clear()
        try:
            yield self._db
        except BaseException:
            # A full disk or an I/O error may have rolled it back already; a failing ROLLBACK
            # would hide the error that says why.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A deferred transaction: several SELECTs see one snapshot."""
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            self._db.execute("COMMIT")

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self._db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # -- meta ------------------------------------------------------------------------------

    def secret(self) -> bytes:
        """The server secret (32 random bytes), created on first use and kept forever."""
        if self._secret is not None:  # read once: every Message-ID needs it
            return self._secret
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('secret', ?)",
                (secrets.token_bytes(32).hex(),),
            )
            row = db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
        self._secret = bytes.fromhex(row[0])
        return self._secret

    # -- papers ----------------------------------------------------------------------------

    def record_papers(self, papers: Sequence[Paper], *, seen_at: datetime) -> list[Paper]:
        """Insert unknown papers, merge known ones; return the inserted ones with first_seen_at.

        A paper known already (from another source, or in another version) is merged with what
        is stored (`digestd.core.merge`) and is not new: the ledger keys on its id, so it is never
        delivered twice. A paper listed twice in `papers` counts once, merged in order.
        """
        seen = _ts(seen_at)
        first_seen = _dt(seen)
        batch = merge_all(papers)
        with self._write() as db:
            known = self._known_papers(db, [p.id for p in batch])
            rows = [merge(known[p.id], p) if p.id in known else p for p in batch]
            db.executemany(_UPSERT_PAPER, (_paper_params(p, seen) for p in rows))
        return [replace(p, first_seen_at=first_seen) for p in batch if p.id not in known]

    @staticmethod
    def _known_papers(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, Paper]:
        known: dict[str, Paper] = {}
        for chunk in _chunks(ids):
            sql = f"SELECT {_PAPER_COLUMNS} FROM papers WHERE id IN ({_marks(len(chunk))})"
            known.update((row["id"], _paper_from_row(row)) for row in db.execute(sql, chunk))
        return known

    def paper_count(self) -> int:
        return cast(int, self._scalar("SELECT COUNT(*) FROM papers"))

    def get_papers(self, ids: Iterable[str]) -> list[Paper]:
        """The stored papers with these ids, in the order asked; unknown ids are left out."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, Paper] = {}
        with self._read() as db:
            for chunk in _chunks(wanted):
                sql = f"SELECT {_PAPER_COLUMNS} FROM papers WHERE id IN ({_marks(len(chunk))})"
                found.update((row["id"], _paper_from_row(row)) for row in db.execute(sql, chunk))
        return [found[i] for i in wanted if i in found]

    def candidates(self, subscriber: str, *, since: datetime) -> list[Paper]:
        """Papers first seen at or after `since` not yet reserved for `subscriber` in the ledger."""
        rows = self._db.execute(
            f"""SELECT {_PAPER_COLUMNS} FROM papers p
                WHERE p.first_seen_at >= ?
                  AND NOT EXISTS (SELECT 1 FROM deliveries d
                                  WHERE d.subscriber = ? AND d.paper_id = p.id)
                ORDER BY p.upvotes DESC, p.id""",
            (_ts(since), _email_key(subscriber)),
        )
        return [_paper_from_row(row) for row in rows]

    def candidates_for(
        self, subscribers: Sequence[str], *, since: datetime
    ) -> dict[str, list[Paper]]:
        """`candidates` for each of `subscribers` from two queries, not one per subscriber.

        The papers are read and parsed once and shared between subscribers (same objects), in
        the order `candidates` gives; each subscriber's reserved ones are left out.
        """
        keys = list(dict.fromkeys(_email_key(s) for s in subscribers))
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_PAPER_COLUMNS} FROM papers WHERE first_seen_at >= ?"
                " ORDER BY upvotes DESC, id",
                (_ts(since),),
            ).fetchall()
            papers = [_paper_from_row(row) for row in rows]
            reserved: dict[str, set[str]] = {}
            for chunk in _chunks(keys):
                for subscriber, paper_id in db.execute(
                    "SELECT d.subscriber, d.paper_id FROM deliveries d JOIN papers p"
                    " ON p.id = d.paper_id AND p.first_seen_at >= ?"
                    f" WHERE d.subscriber IN ({_marks(len(chunk))})",
                    (_ts(since), *chunk),
                ):
                    reserved.setdefault(subscriber, set()).add(paper_id)
        return {
            k: [p for p in papers if p.id not in reserved[k]] if k in reserved else list(papers)
            for k in keys
        }

    # -- polls -----------------------------------------------------------------------------

    def record_poll(
        self,
        source: str,
        *,
        at: datetime,
        ok: bool,
        n_items: int = 0,
        n_new: int = 0,
        error: str | None = None,
    ) -> int:
        """Record one poll of `source`; returns its id.

        The error is shown by `status`, in admin alerts and in empty-digest notes: it is stored
        redacted and without control characters, whoever the caller.
        """
        cleaned = None if error is None else safe_text(error)
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO polls (source, at, ok, n_items, n_new, error)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (source, _ts(at), int(ok), n_items, n_new, cleaned),
            )
        return cast(int, cursor.lastrowid)

    def last_poll(self, source: str | None = None) -> PollInfo | None:
        """The latest poll of `source` (of any source when None)."""
        where, params = self._poll_filter(source)
        row = self._db.execute(
            f"SELECT * FROM polls {where} ORDER BY at DESC, id DESC LIMIT 1", params
        ).fetchone()
        return None if row is None else _poll_from_row(row)

    def last_success_at(self, source: str | None = None) -> datetime | None:
        """When `source` (any source when None) was last polled successfully."""
        where, params = self._poll_filter(source, ok_only=True)
        return _opt_dt(self._scalar(f"SELECT MAX(at) FROM polls {where}", params))

    @staticmethod
    def _poll_filter(source: str | None, *, ok_only: bool = False) -> tuple[str, list[Any]]:
        clauses = ["ok = 1"] if ok_only else []
        params: list[Any] = []
        if source is not None:
            clauses.append("source = ?")
            params.append(source)
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), params

    def source_status(
        self, names: Iterable[str] = (), *, since: datetime | None = None
    ) -> list[SourceStatus]:
        """Per source (the `names` given, then any other that was polled): its recent history.

        `new_since` counts the new papers its polls stored at or after `since` (all time if None).
        """
        polled = [row[0] for row in self._db.execute("SELECT DISTINCT source FROM polls")]
        order = list(dict.fromkeys([*names, *sorted(polled)]))
        return [self._one_source(name, since) for name in order]

    def _one_source(self, name: str, since: datetime | None) -> SourceStatus:
        last = self.last_poll(name)
        last_new = self._scalar("SELECT MAX(at) FROM polls WHERE source = ? AND n_new > 0", (name,))
        new_since = self._scalar(
            "SELECT COALESCE(SUM(n_new), 0) FROM polls WHERE source = ? AND at >= ?",
            (name, _ts(since) if since else ""),
        )
        return SourceStatus(
            source=name,
            last_poll_at=last.at if last else None,
            last_success_at=self.last_success_at(name),
            last_new_at=_opt_dt(last_new),
            error=last.error if last is not None and not last.ok else None,
            new_since=cast(int, new_since),
        )

    # -- HTTP validators -------------------------------------------------------------------

    def get_validators(self, url: str) -> Validators | None:
        """The ETag / Last-Modified last seen for `url`, for a conditional GET."""
        row = self._db.execute(
            "SELECT etag, last_modified FROM http_validators WHERE url = ?", (url,)
        ).fetchone()
        return None if row is None else Validators(url, row["etag"], row["last_modified"])

    def save_validators(self, validators: Iterable[Validators], *, at: datetime) -> None:
        with self._write() as db:
            db.executemany(
                "INSERT INTO http_validators (url, etag, last_modified, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (url) DO UPDATE SET etag = excluded.etag,"
                " last_modified = excluded.last_modified, updated_at = excluded.updated_at",
                ((v.url, v.etag, v.last_modified, _ts(at)) for v in validators),
            )

    # -- subscribers -----------------------------------------------------------------------

    def register_subscribers(self, emails: Iterable[str], *, at: datetime) -> dict[str, datetime]:
        """Register unknown addresses at `at`; map each address, as given, to its registration time.

        Addresses are compared case-insensitively (stored lowercased).
        """
        given = list(dict.fromkeys(emails))
        keys = list(dict.fromkeys(_email_key(e) for e in given))
        stamp = _ts(at)
        registered: dict[str, datetime] = {}
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO subscribers (email, registered_at) VALUES (?, ?)",
                ((key, stamp) for key in keys),
            )
            for chunk in _chunks(keys):
                sql = (
                    "SELECT email, registered_at FROM subscribers"
                    f" WHERE email IN ({_marks(len(chunk))})"
                )
                registered.update((row[0], _dt(row[1])) for row in db.execute(sql, chunk))
        return {email: registered[_email_key(email)] for email in given}

    def subscriber_count(self) -> int:
        return cast(int, self._scalar("SELECT COUNT(*) FROM subscribers"))

    # -- outbox ----------------------------------------------------------------------------

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
        compressed: bool = False,
    ) -> int | None:
        """Queue one message and reserve its papers for `subscriber`, atomically.

        `data=None` records an empty period (state 'empty') so it is not composed again.
        `data` may come `Spliced`: its parts are stored once however many messages share them,
        and claims hand out the whole message (`OutboxRow.canonical` if it was marked so).
        `compressed`: `data` is the message zlib-compressed; claims hand out the plain bytes.
        Returns the outbox id, or None, changing nothing, when (subscriber, kind, period) exists.

        :raises ValueError: `data` is None but `paper_ids` is not empty.
        :raises LedgerConflict: a paper is already reserved for the subscriber by another
            message; nothing of this one is kept (inside a `batch`, the rest of it is).
        """
        ids = list(dict.fromkeys(paper_ids))
        if data is None and ids:
            raise ValueError("an empty outbox row (data=None) cannot carry papers")
        key, stamp = _email_key(subscriber), _ts(at)
        with self._write() as db:
            # Not RETURNING: it doubles the cost of this insert (~25 µs, the most of any here).
            cursor = db.execute(
                """INSERT INTO outbox (subscriber, kind, period, message_id, sender, data, n_papers,
                                       state, attempts, next_attempt_at, created_at, updated_at,
                                       expires_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)
                   ON CONFLICT (subscriber, kind, period) DO NOTHING""",
                (key, kind, period, message_id, sender, None, len(ids),
                 "empty" if data is None else "queued", stamp, stamp, stamp, _opt_ts(expires_at)),
            )  # fmt: skip
            if cursor.rowcount != 1:
                return None
            outbox_id = cast(int, cursor.lastrowid)
            if data is not None:
                self._queue_body(db, outbox_id, data, compressed=compressed)
            reserved = db.executemany(
                "INSERT OR IGNORE INTO deliveries (subscriber, paper_id, outbox_id)"
                " VALUES (?, ?, ?)",
                ((key, paper_id, outbox_id) for paper_id in ids),
            ).rowcount
            if reserved != len(ids):
                # Another message carries one of them (e.g. a concurrent process composed from
                # an older snapshot): this one goes, with its body, parts and reservations (the
                # foreign keys cascade). Costs nothing when there is no conflict.
                db.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,))
                raise LedgerConflict("a paper of this message is already reserved by another")
        return outbox_id

    def _queue_body(
        self, db: sqlite3.Connection, outbox_id: int, data: bytes | Spliced, *, compressed: bool
    ) -> None:
        message = data if isinstance(data, Spliced) else Spliced(data)
        db.execute(
            "INSERT INTO outbox_bodies (outbox_id, data, zlib, canonical) VALUES (?, ?, ?, ?)",
            (outbox_id, message.own, int(compressed), int(message.canonical)),
        )
        for _, part in message.parts:
            self._insert_once(
                db, ("part", part.key),
                "INSERT OR IGNORE INTO message_parts (key, data) VALUES (?, ?)",
                (part.key, part.data),
            )  # fmt: skip
        db.executemany(
            "INSERT INTO outbox_parts (outbox_id, seq, at, part) VALUES (?, ?, ?, ?)",
            ((outbox_id, seq, at, part.key) for seq, (at, part) in enumerate(message.parts)),
        )

    def _insert_once(
        self, db: sqlite3.Connection, key: tuple[str, str], sql: str, params: Sequence[Any]
    ) -> None:
        """`sql` (an INSERT OR IGNORE of content-addressed bytes) once per transaction: binding
        ~40 KB for every message of a shape only to have it ignored is not free either."""
        if key not in self._written:
            db.execute(sql, params)
            self._written.add(key)

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
    ) -> bool:
        """Record a message that could not be built as failed, with `error` as its reply, so that
        `digestd status` shows it; it reserves no paper. False when (subscriber, kind, period)
        exists already."""
        stamp = _ts(at)
        with self._write() as db:
            cursor = db.execute(
                """INSERT INTO outbox (subscriber, kind, period, message_id, sender, data, n_papers,
                                       state, attempts, next_attempt_at, last_reply, created_at,
                                       updated_at)
                   VALUES (?, ?, ?, ?, ?, NULL, 0, 'failed', 0, ?, ?, ?, ?)
                   ON CONFLICT (subscriber, kind, period) DO NOTHING""",
                (_email_key(subscriber), kind, period, message_id, sender, stamp, error[:500],
                 stamp, stamp),
            )  # fmt: skip
        return cursor.rowcount == 1

    # -- alerts owed -----------------------------------------------------------------------

    def owe_alerts(self, poll_id: int, paper_ids: Sequence[str], *, at: datetime) -> None:
        """Note that poll `poll_id`'s new papers still owe their alerts (join the poll's batch)."""
        with self._write() as db:
            db.execute(
                "INSERT INTO alerts_owed (poll_id, at, paper_ids) VALUES (?, ?, ?)",
                (poll_id, _ts(at), json.dumps(list(paper_ids))),
            )

    def owed_alerts(self) -> list[OwedAlerts]:
        """Every poll whose alerts are still owed, oldest first."""
        rows = self._db.execute("SELECT poll_id, at, paper_ids FROM alerts_owed ORDER BY poll_id")
        return [OwedAlerts(r[0], _dt(r[1]), tuple(json.loads(r[2]))) for r in rows]

    def settle_alerts(self, poll_id: int) -> None:
        """The poll's alerts are queued (or expired): join the batch that queued them."""
        with self._write() as db:
            db.execute("DELETE FROM alerts_owed WHERE poll_id = ?", (poll_id,))

    def reserved_among(
        self, subscribers: Iterable[str], paper_ids: Sequence[str]
    ) -> set[tuple[str, str]]:
        """(subscriber, paper id) for each of these papers already reserved for these subscribers
        (a primary-key lookup per pair, whatever the size of the ledger)."""
        keys = list(dict.fromkeys(_email_key(s) for s in subscribers))
        papers = json.dumps(list(paper_ids))
        found: set[tuple[str, str]] = set()
        for chunk in _chunks(keys):
            found.update(
                (row[0], row[1])
                for row in self._db.execute(
                    f"SELECT subscriber, paper_id FROM deliveries"
                    f" WHERE subscriber IN ({_marks(len(chunk))})"
                    " AND paper_id IN (SELECT value FROM json_each(?))",
                    (*chunk, papers),
                )
            )
        return found

    def last_digest_at(self, subscriber: str) -> datetime | None:
        """When the subscriber's latest digest (or empty period) was composed."""
        return _opt_dt(
            self._scalar(
                "SELECT MAX(created_at) FROM outbox WHERE subscriber = ? AND kind = 'digest'",
                (_email_key(subscriber),),
            )
        )

    def has_period(self, subscriber: str, kind: OutboxKind, period: str) -> bool:
        """Whether a message (or an empty marker) exists for this key, whatever its state."""
        row = self._db.execute(
            "SELECT 1 FROM outbox WHERE subscriber = ? AND kind = ? AND period = ?",
            (_email_key(subscriber), kind, period),
        ).fetchone()
        return row is not None

    def claim_due(self, *, now: datetime, limit: int = 100, bodies: bool = True) -> list[OutboxRow]:
        """Move due rows to 'sending' (attempts + 1) and return them, oldest due first, committed.

        Each row is claimed once: the selection and the update are one write transaction.
        `bodies=False`: the rows come with empty `data`, for `with_bodies` to fill in outside the
        write transaction (and on another connection, if the caller likes).
        """
        stamp = _ts(now)
        with self._write() as db:
            ids = self._due_ids(db, stamp, limit)
            rows = self._rows_by_id(db, ids)
            data = self._bodies(db, ids) if bodies else dict.fromkeys(ids, (b"", False))
            db.executemany(
                "UPDATE outbox SET state = 'sending', attempts = attempts + 1, updated_at = ?"
                " WHERE id = ?",
                ((stamp, row["id"]) for row in rows),
            )
            # A row without bytes raises here (KeyError), inside the claim: it stays queued.
            return [
                _outbox_from_row(row, attempts=row["attempts"] + 1, body=data[row["id"]])
                for row in rows
            ]

    @staticmethod
    def _due_ids(db: sqlite3.Connection, stamp: str, limit: int) -> list[int]:
        """Due ids from the (state, next_attempt_at) index alone, one ordered range per state.

        A single `state IN (...) ORDER BY` query sorts every due row and reads past each row's
        message bytes to do so; three index ranges merged here cost O(limit).
        """
        due: list[tuple[str, int]] = []
        for state in _CLAIMABLE:
            due += (
                (row[0], row[1])
                for row in db.execute(
                    "SELECT next_attempt_at, id FROM outbox INDEXED BY outbox_due"
                    " WHERE state = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, id"
                    " LIMIT ?",
                    (state, stamp, limit),
                )
            )
        return [row_id for _, row_id in sorted(due)[:limit]]

    @staticmethod
    def _rows_by_id(db: sqlite3.Connection, ids: Sequence[int]) -> list[sqlite3.Row]:
        if not ids:
            return []
        sql = (
            "SELECT o.id, o.subscriber, o.kind, o.period, o.message_id, o.sender, o.attempts,"
            " o.state,"
            " EXISTS (SELECT 1 FROM suppressions s WHERE s.email = o.subscriber) AS suppressed"
            f" FROM outbox o WHERE o.id IN ({_marks(len(ids))})"
        )
        found = {row["id"]: row for row in db.execute(sql, ids)}
        return [found[i] for i in ids]

    def with_bodies(self, rows: Sequence[OutboxRow]) -> list[OutboxRow]:
        """`rows` (claimed with `bodies=False`) with their message bytes, whole.

        :raises KeyError: a row has no bytes.
        """
        with self._read() as db:
            found = self._bodies(db, [row.id for row in rows])
        return [replace(row, data=found[row.id][0], canonical=found[row.id][1]) for row in rows]

    def _bodies(self, db: sqlite3.Connection, ids: Sequence[int]) -> dict[int, _Body]:
        """The message bytes of outbox rows `ids` that have any, their shared parts spliced in."""
        rows: list[sqlite3.Row] = []
        recipes: dict[int, list[tuple[int, str]]] = {}
        for chunk in _chunks(ids):
            marks = _marks(len(chunk))
            rows += db.execute(
                f"SELECT o.id, {_BODY_COLUMNS} FROM outbox o"
                " LEFT JOIN outbox_bodies b ON b.outbox_id = o.id"
                f" WHERE o.id IN ({marks}) AND COALESCE(b.data, o.data) IS NOT NULL",
                chunk,
            ).fetchall()
            for outbox_id, at, key in db.execute(
                "SELECT outbox_id, at, part FROM outbox_parts"
                f" WHERE outbox_id IN ({marks}) ORDER BY outbox_id, seq",
                chunk,
            ):
                recipes.setdefault(outbox_id, []).append((at, key))
        parts = self._parts(db, {key for recipe in recipes.values() for _, key in recipe})
        return {
            row[0]: _body(
                row[1], row[2], row[3], [(at, parts[k]) for at, k in recipes.get(row[0], ())]
            )
            for row in rows
        }

    def _parts(self, db: sqlite3.Connection, keys: set[str]) -> dict[str, Part]:
        """Shared parts by key, from a small cache: a run's claims name the same few over and
        over, and a part never changes (its key is its hash)."""
        found = {key: self._part_cache[key] for key in keys if key in self._part_cache}
        missing = [key for key in keys if key not in found]
        for chunk in _chunks(missing):
            sql = f"SELECT key, data FROM message_parts WHERE key IN ({_marks(len(chunk))})"
            found.update((key, Part(key, bytes(data))) for key, data in db.execute(sql, chunk))
        if len(self._part_cache) + len(missing) > _PART_CACHE:
            self._part_cache.clear()
        self._part_cache.update((key, found[key]) for key in missing if key in found)
        return found

    def unclaim(self, rows: Iterable[OutboxRow]) -> int:
        """Give claimed rows that were never handed to a mailer back their state and attempt."""
        with self._write() as db:
            cursor = db.executemany(
                "UPDATE outbox SET state = ?, attempts = attempts - 1"
                " WHERE id = ? AND state = 'sending'",
                ((row.state, row.id) for row in rows),
            )
        return cursor.rowcount

    def mark_sent(self, outbox_id: int, *, at: datetime, code: int | None, reply: str) -> None:
        """The relay accepted the message (250 after DATA).

        :raises ValueError: the row is not in 'sending'.
        """
        stamp = _ts(at)
        with self._write() as db:
            self._transition(
                db, outbox_id, ("sending",),
                "state = 'sent', sent_at = ?, last_code = ?, last_reply = ?, updated_at = ?",
                (stamp, code, reply, stamp),
            )  # fmt: skip
            # The ledger says "sent" in the very transaction that says the message was sent.
            db.execute("UPDATE deliveries SET sent_at = ? WHERE outbox_id = ?", (stamp, outbox_id))
            db.execute(
                "DELETE FROM suspensions WHERE suspended_at IS NULL AND email ="
                " (SELECT subscriber FROM outbox WHERE id = ?)",
                (outbox_id,),
            )

    def mark_deferred(
        self, outbox_id: int, *, at: datetime, retry_at: datetime, code: int | None, reply: str
    ) -> None:
        """A transient failure: try again at `retry_at`.

        :raises ValueError: the row is not in 'sending'.
        """
        self._retry_later(outbox_id, "deferred", at=at, retry_at=retry_at, code=code, reply=reply)

    def mark_in_doubt(
        self, outbox_id: int, *, at: datetime, retry_at: datetime, code: int | None, reply: str
    ) -> None:
        """The connection died after the final "." went out: the relay may have the message.

        It is retried at `retry_at` with the same bytes and Message-ID, and never expires.

        :raises ValueError: the row is not in 'sending'.
        """
        self._retry_later(outbox_id, "in_doubt", at=at, retry_at=retry_at, code=code, reply=reply)

    def _retry_later(
        self,
        outbox_id: int,
        state: Literal["deferred", "in_doubt"],
        *,
        at: datetime,
        retry_at: datetime,
        code: int | None,
        reply: str,
    ) -> None:
        with self._write() as db:
            self._transition(
                db, outbox_id, ("sending",),
                "state = ?, next_attempt_at = ?, last_code = ?, last_reply = ?, updated_at = ?",
                (state, _ts(retry_at), code, reply, _ts(at)),
            )  # fmt: skip

    def mark_failed(
        self,
        outbox_id: int,
        *,
        at: datetime,
        code: int | None,
        reply: str,
        suspend_after: int | None = None,
    ) -> bool:
        """A final failure; the papers are released for the subscriber's next message.

        With `suspend_after` the failure was the address's fault (a 5xx): it counts as a strike,
        and the address is suspended at `suspend_after` consecutive strikes (a sent message resets
        the count); its other pending messages then expire. Returns whether it is now suspended.

        :raises ValueError: the row is not in 'sending'.
        """
        stamp = _ts(at)
        with self._write() as db:
            self._transition(
                db, outbox_id, ("sending",),
                "state = 'failed', last_code = ?, last_reply = ?, updated_at = ?",
                (code, reply, stamp),
            )  # fmt: skip
            db.execute("DELETE FROM deliveries WHERE outbox_id = ?", (outbox_id,))
            if suspend_after is None:
                return False
            email = db.execute("SELECT subscriber FROM outbox WHERE id = ?", (outbox_id,))
            return self._strike(db, email.fetchone()[0], stamp, code, reply, suspend_after)

    @staticmethod
    def _strike(
        db: sqlite3.Connection,
        email: str,
        stamp: str,
        code: int | None,
        reply: str,
        suspend_after: int,
    ) -> bool:
        row = db.execute(
            """INSERT INTO suspensions (email, failures, last_code, last_reply, updated_at)
               VALUES (?, 1, ?, ?, ?)
               ON CONFLICT (email) DO UPDATE SET failures = failures + 1,
                   last_code = excluded.last_code, last_reply = excluded.last_reply,
                   updated_at = excluded.updated_at
               RETURNING failures, suspended_at""",
            (email, code, reply, stamp),
        ).fetchone()
        if row[1] is not None:
            return True
        if row[0] < suspend_after:
            return False
        db.execute("UPDATE suspensions SET suspended_at = ? WHERE email = ?", (stamp, email))
        Store._expire_pending_of(
            db, email, stamp, f"address suspended after {row[0]} hard failures"
        )
        return True

    @staticmethod
    def _expire_pending_of(db: sqlite3.Connection, email: str, stamp: str, reason: str) -> int:
        ids = [
            r[0]
            for r in db.execute(
                "SELECT id FROM outbox WHERE subscriber = ? AND state IN ('queued', 'deferred',"
                " 'in_doubt')",
                (email,),
            )
        ]
        db.executemany(
            "UPDATE outbox SET state = 'expired', last_reply = ?, updated_at = ? WHERE id = ?",
            ((reason, stamp, i) for i in ids),
        )
        db.executemany("DELETE FROM deliveries WHERE outbox_id = ?", ((i,) for i in ids))
        return len(ids)

    # -- suspensions -----------------------------------------------------------------------

    def suspended(self) -> set[str]:
        """The suspended addresses (lowercased): composing skips them."""
        rows = self._db.execute("SELECT email FROM suspensions WHERE suspended_at IS NOT NULL")
        return {row[0] for row in rows}

    def suspensions(self) -> list[Suspension]:
        """Every address with strikes, suspended ones first, most recent first."""
        rows = self._db.execute(
            "SELECT * FROM suspensions ORDER BY suspended_at IS NULL, updated_at DESC, email"
        )
        return [_suspension_from_row(row) for row in rows]

    def unsuspend(self, email: str) -> Suspension | None:
        """Lift a suspension (and forget the strikes); returns what was lifted, None if nothing."""
        with self._write() as db:
            row = db.execute(
                "DELETE FROM suspensions WHERE email = ? RETURNING *", (_email_key(email),)
            ).fetchone()
        return None if row is None else _suspension_from_row(row)

    def mark_expired(self, outbox_id: int, *, at: datetime, reason: str) -> None:
        """Give up on a row not yet final; the papers are released.

        :raises ValueError: the row is already final (sent, failed, expired, empty) or unknown.
        """
        with self._write() as db:
            self._transition(
                db, outbox_id, _EXPIRABLE,
                "state = 'expired', last_reply = ?, updated_at = ?",
                (reason, _ts(at)),
            )  # fmt: skip
            db.execute("DELETE FROM deliveries WHERE outbox_id = ?", (outbox_id,))

    @staticmethod
    def _transition(
        db: sqlite3.Connection,
        outbox_id: int,
        from_states: Sequence[str],
        assignments: str,
        params: Sequence[Any],
    ) -> None:
        cursor = db.execute(
            f"UPDATE outbox SET {assignments}"
            f" WHERE id = ? AND state IN ({_marks(len(from_states))})",
            (*params, outbox_id, *from_states),
        )
        if cursor.rowcount != 1:
            row = db.execute("SELECT state FROM outbox WHERE id = ?", (outbox_id,)).fetchone()
            found = "no such row" if row is None else f"state {row[0]!r}"
            raise ValueError(f"outbox row {outbox_id}: expected {'/'.join(from_states)}, {found}")

    def release_stale(self, *, now: datetime) -> int:
        """Expire queued/deferred rows past their expires_at, releasing their papers; returns count.

        In-doubt rows are left alone: they may already have been delivered.
        """
        stamp = _ts(now)
        with self._write() as db:
            ids = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM outbox WHERE state IN ('queued', 'deferred')"
                    " AND expires_at IS NOT NULL AND expires_at <= ?",
                    (stamp,),
                )
            ]
            # The last error is kept in the reason: "why was it never sent" has one answer.
            db.executemany(
                "UPDATE outbox SET state = 'expired', updated_at = ?, last_reply ="
                " 'expired: its next period began before it could be delivered; papers go into"
                " the next digest' || COALESCE('; last error: ' || COALESCE(last_code || ' ', '')"
                " || last_reply, '') WHERE id = ?",
                ((stamp, i) for i in ids),
            )
            db.executemany("DELETE FROM deliveries WHERE outbox_id = ?", ((i,) for i in ids))
        return len(ids)

    def recover(self, *, now: datetime) -> int:
        """At start-up: rows left in 'sending' were interrupted mid-send and become 'in_doubt'.

        They are due at once and will be re-sent with the same Message-ID and bytes.
        """
        stamp = _ts(now)
        with self._write() as db:
            cursor = db.execute(
                "UPDATE outbox SET state = 'in_doubt', next_attempt_at = ?, updated_at = ?"
                " WHERE state = 'sending'",
                (stamp, stamp),
            )
        return cursor.rowcount

    def due_count(self, *, now: datetime) -> int:
        """Rows `claim_due` would hand out now (for a progress bar's total)."""
        return cast(
            int,
            self._scalar(
                f"SELECT COUNT(*) FROM outbox WHERE state IN ({_marks(len(_CLAIMABLE))})"
                " AND next_attempt_at <= ?",
                (*_CLAIMABLE, _ts(now)),
            ),
        )

    def expire_except(self, keep: Iterable[str], *, at: datetime, reason: str) -> int:
        """Expire unsent rows of subscribers not in `keep` (removed from the file); returns count.

        In-doubt rows go too: a removed subscriber must get nothing more, not even a re-send.
        """
        kept = {_email_key(e) for e in keep}
        stamp = _ts(at)
        with self._write() as db:
            ids = [
                row[0]
                for row in db.execute(
                    "SELECT id, subscriber FROM outbox"
                    " WHERE state IN ('queued', 'deferred', 'in_doubt')"
                )
                if row[1] not in kept
            ]
            db.executemany(
                "UPDATE outbox SET state = 'expired', last_reply = ?, updated_at = ? WHERE id = ?",
                ((reason, stamp, i) for i in ids),
            )
            db.executemany("DELETE FROM deliveries WHERE outbox_id = ?", ((i,) for i in ids))
        return len(ids)

    def last_sent_at(self) -> datetime | None:
        """When the relay last accepted a message."""
        return _opt_dt(self._scalar("SELECT MAX(sent_at) FROM outbox WHERE state = 'sent'"))

    def source_down_since(self, source: str | None = None) -> datetime | None:
        """The first failed poll after the last good one, if the latest poll failed; else None."""
        where, params = self._poll_filter(source, ok_only=True)
        last_ok = self._scalar(f"SELECT MAX(at) FROM polls {where}", params)
        fail_where, fail_params = self._poll_filter(source)
        fail_where += (" AND " if fail_where else "WHERE ") + "ok = 0 AND at > ?"
        return _opt_dt(
            self._scalar(f"SELECT MIN(at) FROM polls {fail_where}", (*fail_params, last_ok or ""))
        )

    def poll_counts(self) -> dict[bool, int]:
        """Polls recorded, by success."""
        rows = self._db.execute("SELECT ok, COUNT(*) FROM polls GROUP BY ok")
        return {bool(ok): n for ok, n in rows}

    def alert_state(self, name: str) -> AlertState:
        row = self._db.execute("SELECT * FROM admin_alerts WHERE name = ?", (name,)).fetchone()
        if row is None:
            return AlertState(name)
        return AlertState(
            name=name,
            firing=bool(row["firing"]),
            notified=bool(row["notified"]),
            streak=row["streak"],
            since=_opt_dt(row["since"]),
            detail=row["detail"],
        )

    def save_alert_state(self, state: AlertState, *, at: datetime) -> None:
        with self._write() as db:
            db.execute(
                """INSERT INTO admin_alerts (name, firing, notified, streak, since, detail,
                                             updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (name) DO UPDATE SET firing = excluded.firing,
                       notified = excluded.notified, streak = excluded.streak,
                       since = excluded.since, detail = excluded.detail,
                       updated_at = excluded.updated_at""",
                (state.name, int(state.firing), int(state.notified), state.streak,
                 _opt_ts(state.since), state.detail, _ts(at)),
            )  # fmt: skip

    def pending_count(self) -> int:
        """Rows not final yet: queued, sending, deferred, in_doubt."""
        return cast(
            int,
            self._scalar(
                f"SELECT COUNT(*) FROM outbox WHERE state IN ({_marks(len(_PENDING))})", _PENDING
            ),
        )

    def prune(self, *, before: datetime, limit: int = _PRUNE_ROWS) -> int:
        """Drop the bytes of messages that ended (sent, failed, expired) before `before`, and
        the shared parts no message names any more; rows stay for the ledger and status.

        Rows are visited in id order from where the last prune had to stop (the first row then
        still pending or too recent; `meta.pruned_through`) up to the first row queued since
        `before`, at most `limit` of them (a long backlog goes over several calls, none holding
        the write lock for long), so a prune reads a few rows however long the outbox has grown.
        Returns how many messages lost their bytes.
        """
        stamp = _ts(before)
        with self._write() as db:
            start = int(self._meta(db, "pruned_through") or 0)
            ended: list[int] = []
            through = stalled = None
            for row_id, state, created, updated in db.execute(
                "SELECT id, state, created_at, updated_at FROM outbox WHERE id > ? ORDER BY id"
                " LIMIT ?",
                (start, limit),
            ):
                if created >= stamp:
                    break
                if state in _ENDED and updated < stamp:
                    ended.append(row_id)
                elif stalled is None:
                    stalled = row_id
                through = row_id
            dropped = sum(self._drop_bodies(db, chunk) for chunk in _chunks(ended))
            if ended:
                db.execute(
                    "DELETE FROM message_parts WHERE NOT EXISTS"
                    " (SELECT 1 FROM outbox_parts r WHERE r.part = message_parts.key)"
                )
            mark = stalled - 1 if stalled is not None else through
            if mark is not None and mark > start:
                self._set_meta(db, "pruned_through", str(mark))
        return dropped

    @staticmethod
    def _drop_bodies(db: sqlite3.Connection, ids: Sequence[int]) -> int:
        marks = _marks(len(ids))
        inline = db.execute(
            f"UPDATE outbox SET data = NULL WHERE data IS NOT NULL AND id IN ({marks})", ids
        )
        bodies = db.execute(f"DELETE FROM outbox_bodies WHERE outbox_id IN ({marks})", ids)
        db.execute(f"DELETE FROM outbox_parts WHERE outbox_id IN ({marks})", ids)
        return inline.rowcount + bodies.rowcount

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- status ----------------------------------------------------------------------------

    def status(self) -> StoreStatus:
        """A snapshot for `digestd status`."""
        with self._read():
            counts = dict.fromkeys(STATES, 0)
            for state, n in self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
                counts[state] = n
            problems = self._db.execute(
                f"""SELECT * FROM outbox WHERE state IN ({_marks(len(_PROBLEMS))})
                    ORDER BY updated_at DESC, id DESC LIMIT ?""",
                (*_PROBLEMS, _STATUS_PROBLEMS),
            )
            return StoreStatus(
                papers=self.paper_count(),
                last_poll=self.last_poll(),
                last_success_at=self.last_success_at(),
                outbox=cast(dict[str, int], counts),
                subscribers=self.subscriber_count(),
                problems=[_problem_from_row(row) for row in problems],
                suspended=[s for s in self.suspensions() if s.suspended_at is not None],
                sources=self.source_status(),
            )

    # -- unsubscribe and web copies --------------------------------------------------------

    def subscriber_id(self, email: str) -> int:
        """The address's stable id for unsubscribe tokens, created on first use."""
        key = _email_key(email)
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO subscriber_ids (email) VALUES (?)", (key,))
            row = db.execute("SELECT id FROM subscriber_ids WHERE email = ?", (key,)).fetchone()
        return cast(int, row[0])

    def subscriber_ids(self, emails: Iterable[str]) -> dict[str, int]:
        """`subscriber_id` of many addresses at once (keys lowercased): one transaction a batch."""
        keys = list(dict.fromkeys(_email_key(e) for e in emails))
        found: dict[str, int] = {}
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO subscriber_ids (email) VALUES (?)", ((k,) for k in keys)
            )
            for chunk in _chunks(keys):
                sql = f"SELECT email, id FROM subscriber_ids WHERE email IN ({_marks(len(chunk))})"
                found.update(db.execute(sql, chunk).fetchall())
        return found

    def subscriber_email(self, subscriber_id: int) -> str | None:
        return cast(
            "str | None",
            self._scalar("SELECT email FROM subscriber_ids WHERE id = ?", (subscriber_id,)),
        )

    def suppress(self, email: str, *, at: datetime, via: str) -> bool:
        """Record that `email` gets nothing more; committed before returning. False if it was already."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO suppressions (email, at, via) VALUES (?, ?, ?)",
                (_email_key(email), _ts(at), via),
            )
        return cursor.rowcount == 1

    def unsuppress(self, email: str, *, at: datetime) -> bool:
        """Lift a suppression; False when there was none.

        The address's id is retired with it, so that the unsubscribe links of the mails before
        (one of which was used to leave) cannot unsubscribe it again; see `_migration_10`.
        """
        key = _email_key(email)
        with self._write() as db:
            cursor = db.execute("DELETE FROM suppressions WHERE email = ?", (key,))
            if cursor.rowcount == 1:
                db.execute(
                    "INSERT INTO retired_subscriber_ids (id, email, retired_at)"
                    " SELECT id, email, ? FROM subscriber_ids WHERE email = ?",
                    (_ts(at), key),
                )
                db.execute("DELETE FROM subscriber_ids WHERE email = ?", (key,))
        return cursor.rowcount == 1

    def retired_email(self, subscriber_id: int) -> str | None:
        """The address a retired id (`unsuppress`) was made for, or None."""
        return cast(
            "str | None",
            self._scalar("SELECT email FROM retired_subscriber_ids WHERE id = ?", (subscriber_id,)),
        )

    def is_suppressed(self, email: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM suppressions WHERE email = ?", (_email_key(email),)
        ).fetchone()
        return row is not None

    def suppressed_among(self, emails: Iterable[str]) -> set[str]:
        """Which of `emails` (lowercased) are suppressed: `is_suppressed` for a batch, one query."""
        keys = list(dict.fromkeys(_email_key(e) for e in emails))
        found: set[str] = set()
        for chunk in _chunks(keys):
            sql = f"SELECT email FROM suppressions WHERE email IN ({_marks(len(chunk))})"
            found.update(row[0] for row in self._db.execute(sql, chunk))
        return found

    def suppressions(self) -> list[Suppression]:
        """Every suppressed address, most recent first."""
        rows = self._db.execute("SELECT email, at, via FROM suppressions ORDER BY at DESC, email")
        return [Suppression(row[0], _dt(row[1]), row[2]) for row in rows]

    def save_web_copy(
        self, token: str, *, subscriber: str, html: bytes, at: datetime, expires_at: datetime
    ) -> None:
        """Keep a message's HTML (compressed by the caller) until `expires_at`; first write wins."""
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO web_copies (token, subscriber, html, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (token, _email_key(subscriber), html, _ts(at), _ts(expires_at)),
            )

    def save_web_copy_fills(
        self,
        token: str,
        *,
        subscriber: str,
        body: WebBody,
        fills: Mapping[str, str],
        at: datetime,
        expires_at: datetime,
    ) -> None:
        """Keep a copy as a shared body plus this subscriber's values; first write wins.

        The body is written with the copy (not once per process) so a rolled-back batch can never
        leave a copy pointing at nothing; on conflict it is ignored, which costs microseconds.
        """
        with self._write() as db:
            self._insert_once(
                db, ("web", body.hash),
                "INSERT OR IGNORE INTO web_bodies (hash, html, slots) VALUES (?, ?, ?)",
                (body.hash, body.html, body.slots),
            )  # fmt: skip
            db.execute(
                "INSERT OR IGNORE INTO web_copies"
                " (token, subscriber, html, created_at, expires_at, body, fills)"
                " VALUES (?, ?, x'', ?, ?, ?, ?)",
                (
                    token,
                    _email_key(subscriber),
                    _ts(at),
                    _ts(expires_at),
                    body.hash,
                    json.dumps(dict(fills), separators=(",", ":")),
                ),
            )

    def web_copy(self, token: str, *, now: datetime) -> bytes | None:
        """The stored HTML for `token`, compressed, or None when unknown or expired."""
        page = self.web_page(token, now=now)
        if page is None or isinstance(page, bytes):
            return page
        return zlib.compress(page.encode("utf-8"), 1)

    def web_page(self, token: str, *, now: datetime) -> str | bytes | None:
        """The page for `token` (str), its compressed bytes for a whole stored copy, or None."""
        row = self._db.execute(
            "SELECT c.html, c.fills, b.html, b.slots FROM web_copies c"
            " LEFT JOIN web_bodies b ON b.hash = c.body"
            " WHERE c.token = ? AND c.expires_at > ?",
            (token, _ts(now)),
        ).fetchone()
        if row is None:
            return None
        whole, fills, body, slots = row
        if fills is None:
            return bytes(whole)
        if body is None:
            return None  # unreachable: bodies are pruned only when no copy names them
        return fill_page(
            zlib.decompress(body).decode("utf-8"), json.loads(slots), json.loads(fills)
        )

    def prune_web_copies(self, *, now: datetime) -> int:
        with self._write() as db:
            cursor = db.execute("DELETE FROM web_copies WHERE expires_at <= ?", (_ts(now),))
            if cursor.rowcount:
                db.execute(
                    "DELETE FROM web_bodies WHERE hash NOT IN"
                    " (SELECT body FROM web_copies WHERE body IS NOT NULL)"
                )
        return cursor.rowcount
