"""The one handle on a PostgreSQL state: a pooled connection, transactions, batching, metadata.

Every repository writes through `write()` (its own short transaction, or the `batch()` it is
called in) and reads through `conn` or `read()`, as with SQLite. Not thread-safe: one per thread
(`side()` takes another connection from the same pool). Times are stored as the same fixed-width
UTC text as in SQLite (`store/sqlite/values.py`), so a migrated row is the same bytes on both and
text order is time order (the database collation must order ASCII bytewise: C or C.UTF-8 —
`_check_collation`).
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool

from digestd.core.redact import MASK, redact
from digestd.store.postgres.migrations import MIGRATIONS
from digestd.store.protocols import SchemaError
from digestd.store.sqlite.migrations import SCHEMA_VERSION

__all__ = ["PgDatabase", "conninfo", "pg_explain", "pg_label", "pg_probe"]

_PASSWORD_PARAM = re.compile(r"(?i)([?&]password=)[^&#]*")

_CONNECT_TIMEOUT = 10  # s: an unreachable server is an error, not a hang
_RECONNECT_WAIT = 2.0  # s a use waits for a new connection after the server dropped ours
_POOL_MAX = 8  # connections per process: the daemon's thread plus the drain's side connections
_MIGRATION_LOCK = 0x64696765  # advisory lock key ("dige"): one instance migrates at a time


def pg_label(url: str) -> str:
    """The URL with its password (in the userinfo or a `password=` parameter) masked and the
    rest, user name included, as written: what `check`, `status` and `migrate` print."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return redact(url)
    if password:
        url = urlunsplit(
            parts._replace(netloc=parts.netloc.replace(f":{password}@", f":{MASK}@", 1))
        )
    return _PASSWORD_PARAM.sub(rf"\1{MASK}", url)


def pg_explain(url: str, exc: BaseException) -> str:
    """One line for a person: what is wrong with the database at `url`, password never shown."""
    text = " ".join(str(exc).split())
    return redact(f"the state database {url}: {text}", known=_passwords(url))


def _passwords(url: str) -> set[str]:
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        return set()
    return {str(password)} if password else set()


def conninfo(url: str, password: str | None) -> str:
    """libpq parameters: the URL's, a connect timeout, and the password kept out of the URL."""
    extra: dict[str, Any] = {"connect_timeout": _CONNECT_TIMEOUT, "application_name": "digestd"}
    if password is not None:
        extra["password"] = password  # a kwarg: never part of the URL that messages show
    return psycopg.conninfo.make_conninfo(url, **extra)


def pg_probe(url: str, password: str | None = None) -> str:
    """Whether digestd can run on the database at `url`, changing nothing: connects, reads the
    schema version. Returns what it found.

    :raises psycopg.Error: unreachable, refused, no such database…
    """
    with psycopg.connect(conninfo(url, password), autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
        version = "0"
        if found and found[0]:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = str(row[0]) if row else "0"
        server = conn.info.server_version
    return f"reachable (PostgreSQL {server // 10000}), schema version {version}"


class _Pool:
    """A connection pool shared by a store and its side stores; closed with the last of them."""

    def __init__(self, url: str, password: str | None) -> None:
        params = self.conninfo = conninfo(url, password)
        # One plain connection first: the pool would retry a refused or unreachable server in
        # the background until its timeout, and then say only "timed out"; this says why, now.
        psycopg.connect(params).close()
        self.pool = ConnectionPool(
            params,
            min_size=1,
            max_size=_POOL_MAX,
            kwargs={"autocommit": True},
            timeout=_CONNECT_TIMEOUT,
            open=True,
            name="digestd-state",
        )
        self.users = 0
        self.lock = threading.Lock()

    def take(self) -> psycopg.Connection[Any]:
        with self.lock:
            self.users += 1
        return self.pool.getconn()

    def give_back(self, conn: psycopg.Connection[Any]) -> None:
        """A broken connection returned while its user stays (the pool discards it)."""
        self.pool.putconn(conn)

    def take_again(self) -> psycopg.Connection[Any]:
        # Short: during an outage every use waits this long before failing (health, jobs), and
        # the pool keeps reconnecting in the background meanwhile.
        return self.pool.getconn(timeout=_RECONNECT_WAIT)

    def give(self, conn: psycopg.Connection[Any]) -> None:
        self.pool.putconn(conn)
        with self.lock:
            self.users -= 1
            last = self.users == 0
        if last:
            self.pool.close()


class PgDatabase:
    """One pooled connection to a PostgreSQL database, migrated to the current schema."""

    def __init__(
        self, url: str, *, password: str | None = None, same_as: PgDatabase | None = None
    ) -> None:
        """Connect (from `same_as`'s pool if given) and migrate.

        :raises psycopg.Error: the server cannot be reached or refuses us.
        :raises SchemaError: a newer digestd wrote the schema.
        """
        self.url = url
        self._pool: _Pool = same_as._pool if same_as is not None else _Pool(url, password)
        self._conn = self._pool.take()
        self._secret: bytes | None = same_as._secret if same_as is not None else None
        self._batching = False
        self._closed = False
        self._written: set[tuple[str, str]] = set()  # shared bytes inserted in this transaction
        if same_as is None:
            try:
                self._migrate()
            except BaseException:
                self.close()
                raise

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The connection; one the server dropped (a restart, a network cut) is replaced by a
        fresh one from the pool at the next use outside a transaction, so the daemon resumes
        when the server is back. Inside a transaction the broken one stays: its error tells
        the caller the transaction is lost.

        :raises psycopg_pool.PoolTimeout: the server is still unreachable (an OperationalError).
        """
        if self._conn.broken and not self._batching:
            self._pool.give_back(self._conn)
            self._conn = self._pool.take_again()
        return self._conn

    def side(self) -> PgDatabase:
        """Another connection to the same database, for another thread."""
        return PgDatabase(self.url, same_as=self)

    @property
    def conninfo(self) -> str:
        """What the pool connects with (the password included: never to be shown); the poll
        leadership's own connection uses it too."""
        return self._pool.conninfo

    # -- lifecycle -------------------------------------------------------------------------

    def _migrate(self) -> None:
        # Several instances may start at once: one migrates, the others wait and find it done.
        with self.write() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            version = self.schema_version()
            if version > SCHEMA_VERSION:
                raise SchemaError(
                    f"{redact(self.url)} has schema version {version};"
                    f" this digestd knows up to {SCHEMA_VERSION}"
                )
            # All steps in one transaction: PostgreSQL's DDL is transactional, so a failed step
            # leaves the version it started from.
            for number in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[number - 1](db)
                self.set_meta("schema_version", str(number))

    def schema_version(self) -> int:
        return int(self.meta("schema_version") or 0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self._conn.rollback()
        except psycopg.Error:
            pass  # a broken connection: the pool discards it
        self._pool.give(self._conn)

    def ping(self) -> None:
        """A cheap query, for the systemd watchdog: raises if the database is unusable."""
        self.conn.execute("SELECT 1").fetchone()

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def batch(self, *, sync: bool = True) -> Iterator[None]:
        """One transaction for several writes (each `write` inside joins it): one commit, not N.

        `sync=False` commits without waiting for the WAL flush (`synchronous_commit = off` for
        this transaction only): atomic, and lost only with the server's last few hundred ms, as
        SQLite's NORMAL; for composing, which is redone when lost. A batch inside a batch joins it.
        """
        if self._batching:
            yield
            return
        with self.write() as db:
            if not sync:
                db.execute("SET LOCAL synchronous_commit = off")
            self._batching = True
            try:
                yield
            finally:
                self._batching = False

    @contextmanager
    def write(self) -> Iterator[psycopg.Connection[Any]]:
        """A write transaction, or the batch it is called in."""
        if self._batching:
            yield self.conn
            return
        self._written.clear()
        with self.conn.transaction():
            yield self.conn

    @contextmanager
    def single(self) -> Iterator[psycopg.Connection[Any]]:
        """For a write that is ONE statement (atomic by itself, committed when it returns):
        no BEGIN and COMMIT round trips around it (the connection is in autocommit mode), or
        the batch it is called in."""
        yield self.conn

    @contextmanager
    def read(self) -> Iterator[psycopg.Connection[Any]]:
        """A read-only transaction: several SELECTs see one snapshot."""
        if self._batching or self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            yield self.conn  # inside a write: its snapshot is the one to read
            return
        with self.conn.transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield self.conn

    def scalar(self, query: str, params: Sequence[Any] = ()) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    def insert_once(self, key: tuple[str, str], query: str, params: Sequence[Any]) -> None:
        """`query` (an insert of content-addressed bytes, ON CONFLICT DO NOTHING) once per
        transaction: binding ~40 KB for every message of a shape only to skip it is not free."""
        if key not in self._written:
            self.conn.execute(query, params)
            self._written.add(key)

    # -- meta ------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Inside a `write`."""
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def secret(self) -> bytes:
        """The server secret (32 random bytes), created on first use and kept forever; every
        instance on the database reads the same one (the first insert wins)."""
        if self._secret is not None:
            return self._secret
        with self.write() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('secret', %s) ON CONFLICT DO NOTHING",
                (secrets.token_bytes(32).hex(),),
            )
            row = db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
        assert row is not None
        self._secret = bytes.fromhex(row[0])
        return self._secret

    def tables(self) -> list[str]:
        """The tables of the schema in use (`migrate` refuses a non-empty target)."""
        rows = self.conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() ORDER BY table_name"
        )
        return [str(row[0]) for row in rows]
