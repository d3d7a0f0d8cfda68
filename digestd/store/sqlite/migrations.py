"""The schema's history: migration N brings the database from version N-1 to N. Append, never edit."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from digestd.core.model import Authority

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

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
    """Message bytes shared by many messages (`model.Part`: a run of a shape's template) stored
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


def _migration_12(db: sqlite3.Connection) -> None:
    """Readers who subscribe themselves (issue 15): their chosen rules (`spec`, a JSON subscriber
    entry), pauses of any address (the YAML's readers' too), and when each address was last sent
    a confirmation mail (the per-address rate limit outlives a removed row on purpose).
    IF NOT EXISTS: tests make "older" files by dropping later migrations' tables.
    """
    db.execute(
        """CREATE TABLE IF NOT EXISTS readers (
            email TEXT PRIMARY KEY,
            name TEXT,
            spec TEXT NOT NULL,
            created_at TEXT NOT NULL,
            confirmed_at TEXT,
            updated_at TEXT NOT NULL,
            version INTEGER NOT NULL DEFAULT 1
        )"""
    )
    db.execute(
        "CREATE INDEX IF NOT EXISTS readers_pending ON readers(created_at) WHERE confirmed_at IS NULL"
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS pauses (
            email TEXT PRIMARY KEY,
            since TEXT NOT NULL,
            until TEXT NOT NULL,
            catch_up INTEGER NOT NULL DEFAULT 0,
            resumed_at TEXT
        )"""
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS confirm_sends (email TEXT PRIMARY KEY, at TEXT NOT NULL)"
    )


def _migration_13(db: sqlite3.Connection) -> None:
    """Bounces and complaints read from the bounce mailbox (issue 15), one row per message read:
    `digest` (SHA-256 of its bytes) makes a message read twice count once. `kind`: permanent,
    temporary, complaint or ignored (`detail` says why). A permanent bounce also strikes the
    address; `suspensions.bounces` counts those strikes, which an accepted send does not reset
    (the relay's 250 came before the bounce; it says nothing about the mailbox).
    """
    db.execute(
        """CREATE TABLE bounces (
            id INTEGER PRIMARY KEY,
            digest TEXT NOT NULL UNIQUE,
            at TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('permanent', 'temporary', 'complaint', 'ignored')),
            outbox_id INTEGER,
            email TEXT,
            status TEXT,
            detail TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX bounces_outbox ON bounces(outbox_id) WHERE outbox_id IS NOT NULL")
    db.execute("ALTER TABLE suspensions ADD COLUMN bounces INTEGER NOT NULL DEFAULT 0")


def _migration_14(db: sqlite3.Connection) -> None:
    """Ratings (issue #16): per reader (address_key) and paper, +1 or -1, the latest click wins.
    No foreign key to papers: an imported like may name a paper fetched later."""
    db.execute(
        """CREATE TABLE ratings (
            reader TEXT NOT NULL,
            paper_id TEXT NOT NULL,
            value INTEGER NOT NULL CHECK (value IN (-1, 1)),
            origin TEXT NOT NULL DEFAULT 'click',
            at TEXT NOT NULL,
            PRIMARY KEY (reader, paper_id)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX ratings_at ON ratings(at)")


_KINDS_BEFORE = "CHECK (kind IN ('digest', 'alert'))"
_KINDS_AFTER = "CHECK (kind IN ('digest', 'alert', 'notice'))"


def _migration_15(db: sqlite3.Connection) -> None:
    """The outbox kind 'notice' (issue 15 polish): the mails a reader's own action on the web
    pages asks for (confirmation, "you are subscribed") were 'alert' rows with period
    'signup-…', and counted as alerts. Those rows become notices.

    SQLite cannot alter a CHECK; rebuilding the outbox would cascade-delete its deliveries and
    parts (foreign keys are on, and cannot be turned off inside this transaction). Widening the
    CHECK invalidates no row, so the table's stored SQL is edited in place, the documented way
    for loosening a constraint (sqlite.org/lang_altertable.html, "writable_schema"), with the
    schema version bumped so every connection reloads it.
    """
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outbox'")
    table = str(sql.fetchone()[0])
    if _KINDS_AFTER not in table:  # (tests make "older" files by lowering schema_version only)
        if _KINDS_BEFORE not in table:
            raise sqlite3.DatabaseError("the outbox table's kind CHECK is not the one expected")
        version = db.execute("PRAGMA schema_version").fetchone()[0]
        db.execute("PRAGMA writable_schema = ON")
        try:
            db.execute(
                "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'outbox'",
                (table.replace(_KINDS_BEFORE, _KINDS_AFTER),),
            )
            db.execute(f"PRAGMA schema_version = {int(version) + 1}")
        finally:
            db.execute("PRAGMA writable_schema = OFF")
    db.execute("UPDATE outbox SET kind = 'notice' WHERE kind = 'alert' AND period LIKE 'signup-%'")


def _migration_16(db: sqlite3.Connection) -> None:
    """Several instances on one state (issue 18): a claimed row names its claimant and how long
    the claim holds (`lease_until`, renewed by the claimant's heartbeat); a row in 'sending' whose
    lease passed belonged to an instance that died and is re-sent by another, same Message-ID.
    `instances`: each running daemon's heartbeat and the sources it leads (status, metrics).
    SQLite has one daemon per file, but the columns mean the same as in PostgreSQL.
    """
    db.execute("ALTER TABLE outbox ADD COLUMN claimed_by TEXT")
    db.execute("ALTER TABLE outbox ADD COLUMN lease_until TEXT")
    db.execute("CREATE INDEX outbox_leases ON outbox(lease_until) WHERE state = 'sending'")
    db.execute(
        """CREATE TABLE instances (
            name TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            leads TEXT NOT NULL DEFAULT '[]'
        )"""
    )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
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
    _migration_12,  # issue 15: readers, pauses, confirm_sends
    _migration_13,  # issue 15: bounces and complaints
    _migration_14,  # issue 16: ratings
    _migration_15,  # issue 15: the outbox kind 'notice'
    _migration_16,  # issue 18: leases and instances
)
SCHEMA_VERSION = len(MIGRATIONS)
