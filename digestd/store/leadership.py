"""Poll leadership: which instance polls a source, one at a time, held by a database session.

`SoleLeader` serves a SQLite file: its run lock already allows one daemon, which leads every
source. `AdvisoryLeader` serves PostgreSQL: `pg_try_advisory_lock` on a connection of its own,
one lock per source, keyed by the database, the schema and the source's name. The server drops
the locks with the session, so when a leader dies (or its connection does) another instance's
next `try_lead` wins, within one poll interval. A leader that finds its connection dead has lost
its locks: it reconnects and competes again like anyone else.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

__all__ = ["AdvisoryLeader", "SoleLeader", "lock_key"]

log = logging.getLogger(__name__)


class SoleLeader:
    """One daemon per state file: it leads everything it asks for."""

    def __init__(self) -> None:
        self._leads: set[str] = set()

    def try_lead(self, source: str) -> bool:
        self._leads.add(source)
        return True

    def release(self, source: str) -> None:
        self._leads.discard(source)

    def leading(self) -> frozenset[str]:
        return frozenset(self._leads)

    def close(self) -> None:
        self._leads.clear()


def lock_key(namespace: str, source: str) -> int:
    """A signed 64-bit advisory-lock key for `source` within `namespace` (database and schema),
    so two digestd on two schemas of one server never contend."""
    digest = hashlib.blake2b(f"digestd poll\0{namespace}\0{source}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


class AdvisoryLeader:
    """Leadership as PostgreSQL session advisory locks on a dedicated autocommit connection.

    `conninfo` is what the store connects with (its password included, never logged); a failure
    to reach the server reads as "not the leader" (the caller skips its poll and tries again).
    """

    def __init__(self, conninfo: str, *, connect_timeout: float = 5.0, name: str = "") -> None:
        self._conninfo = conninfo
        # Shown in pg_stat_activity: who holds which lock (pg_locks) is one join away.
        self._application = f"digestd leader {name}".strip()
        self._timeout = connect_timeout
        self._conn: Any = None  # psycopg.Connection, imported lazily: SQLite users need no driver
        self._namespace = ""
        self._leads: set[str] = set()

    def try_lead(self, source: str) -> bool:
        try:
            conn = self._connection()
            if source in self._leads:
                conn.execute("SELECT 1")  # still our session: the lock is still ours
                return True
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s)", (lock_key(self._namespace, source),)
            ).fetchone()
        except Exception as exc:  # psycopg.Error, OSError: the session (and its locks) is gone
            self._lost(exc)
            return False
        if row is not None and row[0]:
            self._leads.add(source)
            return True
        return False

    def release(self, source: str) -> None:
        if source not in self._leads:
            return
        self._leads.discard(source)
        try:
            self._connection().execute(
                "SELECT pg_advisory_unlock(%s)", (lock_key(self._namespace, source),)
            )
        except Exception as exc:
            self._lost(exc)

    def leading(self) -> frozenset[str]:
        return frozenset(self._leads)

    def close(self) -> None:
        """Ends the session: every lock goes with it (the others take over at their next poll)."""
        self._leads.clear()
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            import psycopg

            self._leads.clear()  # a new session holds nothing yet
            self._conn = psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=max(1, int(self._timeout)),
                application_name=self._application,
            )  # fmt: skip
            row = self._conn.execute("SELECT current_database(), current_schema()").fetchone()
            self._namespace = f"{row[0]}/{row[1]}"
        return self._conn

    def _lost(self, exc: BaseException) -> None:
        if self._leads:
            log.warning(
                "poll leadership lost sources=%s error=%s",
                ",".join(sorted(self._leads)),
                type(exc).__name__,
            )
        self._leads.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing more to release
                log.debug("closing a broken leadership connection failed", exc_info=True)
