"""The one handle on the SQLite file: connection, pragmas, transactions, batching, metadata.

Every repository writes through `write()` (its own short transaction, or the `batch()` it is
called in) and reads through `conn` or `read()`. Not thread-safe: one per thread (`side()`).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from digestd.store.protocols import SchemaError, StateFileMoved
from digestd.store.sqlite.migrations import MIGRATIONS, SCHEMA_VERSION

__all__ = ["Database", "explain", "probe"]

# How long (ms) to wait for another connection's write lock before "database is locked".
_BUSY_TIMEOUT_MS = 5000
_PROBE_WAIT = 0.5  # s `probe` waits for another writer before calling the file in use


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


class Database:
    """One connection to the digestd database, migrated to the current schema."""

    def __init__(self, path: str | Path, *, same_as: Database | None = None) -> None:
        """Open (and create, unless `same_as`) the database at `path`.

        `same_as`: a second connection to the very file `same_as` has open; never creates one.
        :raises StateFileMoved: with `same_as`, another file (or none) now has the name.
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the sqlite3 module must not open transactions behind our back;
        # `write` issues BEGIN IMMEDIATE so the write lock is taken up front (no upgrade deadlock).
        self.conn = self._connect(same_as)
        # Which file this is: a file deleted or replaced under a running daemon keeps being
        # written through the open descriptor while new connections get another (`moved`).
        self.identity = _identity(self.path)
        if same_as is not None and self.identity != same_as.identity:
            self.conn.close()
            raise StateFileMoved(same_as.moved() or f"the state file {self.path} was replaced")
        self.conn.row_factory = sqlite3.Row
        self._secret: bytes | None = None
        self._batching = False
        self._written: set[tuple[str, str]] = set()  # shared bytes inserted in this transaction
        try:
            self._configure()
            self._migrate()
        except BaseException:
            self.conn.close()
            raise

    def side(self) -> Database:
        """A second connection to this very file, for another thread; never a new empty file.

        :raises StateFileMoved: another file (or none) now has the name.
        """
        return Database(self.path, same_as=self)

    # -- lifecycle -------------------------------------------------------------------------

    def _connect(self, same_as: Database | None) -> sqlite3.Connection:
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
            self.conn.backup(copy)
        finally:
            copy.close()
        return target

    def _configure(self) -> None:
        self.conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        # New files only (an existing one keeps its size): a ~40 KB message then spans 3 pages,
        # not 11, and composing 20,000 writes ~10 % faster. 64 KiB pages were slower again.
        self.conn.execute("PRAGMA page_size = 16384")
        mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL (got {mode!r})")
        # FULL: under WAL, NORMAL may lose the last commits on power loss; "sent" must stay sent.
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        with self.write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.path} has schema version {version};"
                f" this digestd knows up to {SCHEMA_VERSION}"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with self.write() as db:
                MIGRATIONS[number - 1](db)
                self.set_meta("schema_version", str(number))

    def schema_version(self) -> int:
        return int(self.meta("schema_version") or 0)

    def close(self) -> None:
        self.conn.close()

    def ping(self) -> None:
        """A cheap query, for the systemd watchdog: raises if the database is unusable."""
        self.conn.execute("SELECT 1").fetchone()

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def batch(self, *, sync: bool = True) -> Iterator[None]:
        """One transaction for several writes (each `write` inside joins it): one commit, not N.

        Only for work that is redone when lost, like composing: nothing in it is final until the
        batch commits, so a crash inside the batch leaves none of it.

        `sync=False` commits without waiting for the disk (WAL, synchronous=NORMAL): still atomic
        and safe from a crash of the process, and made durable by the next FULL commit, which
        syncs the whole WAL. For composing: a queued message is sent only after its `sending`
        mark is committed FULL, so nothing leaves the host that a power cut could forget.
        A batch inside a batch joins it.
        """
        if self._batching:
            yield
            return
        if not sync:
            self.conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with self.write():
                self._batching = True
                try:
                    yield
                finally:
                    self._batching = False
        finally:
            if not sync:
                self.conn.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE), or the batch it is called in."""
        if self._batching:
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._written.clear()
        try:
            yield self.conn
        except BaseException:
            # A full disk or an I/O error may have rolled it back already; a failing ROLLBACK
            # would hide the error that says why.
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A deferred transaction: several SELECTs see one snapshot."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def insert_once(self, key: tuple[str, str], sql: str, params: Sequence[Any]) -> None:
        """`sql` (an INSERT OR IGNORE of content-addressed bytes) once per transaction: binding
        ~40 KB for every message of a shape only to have it ignored is not free either."""
        if key not in self._written:
            self.conn.execute(sql, params)
            self._written.add(key)

    # -- meta ------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Inside a `write`."""
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def secret(self) -> bytes:
        """The server secret (32 random bytes), created on first use and kept forever."""
        if self._secret is not None:  # read once: every Message-ID needs it
            return self._secret
        with self.write() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('secret', ?)",
                (secrets.token_bytes(32).hex(),),
            )
            row = db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
        self._secret = bytes.fromhex(row[0])
        return self._secret
