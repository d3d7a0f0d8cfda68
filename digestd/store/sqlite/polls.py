"""Polls of the sources, their HTTP validators and the alerts a poll still owes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from digestd.core.model import Validators
from digestd.core.redact import safe_text
from digestd.store.protocols import OwedAlerts, PollInfo, SourceStatus
from digestd.store.sqlite.database import Database
from digestd.store.sqlite.values import dt, opt_dt, ts

__all__ = ["SqlitePolls"]


def _poll_from_row(row: sqlite3.Row) -> PollInfo:
    return PollInfo(
        at=dt(row["at"]),
        ok=bool(row["ok"]),
        n_items=row["n_items"],
        n_new=row["n_new"],
        error=row["error"],
        source=row["source"],
    )


def _poll_filter(source: str | None, *, ok_only: bool = False) -> tuple[str, list[Any]]:
    clauses = ["ok = 1"] if ok_only else []
    params: list[Any] = []
    if source is not None:
        clauses.append("source = ?")
        params.append(source)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


class SqlitePolls:
    """The polls, http_validators and alerts_owed tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
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
        with self._db.write() as db:
            cursor = db.execute(
                "INSERT INTO polls (source, at, ok, n_items, n_new, error)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (source, ts(at), int(ok), n_items, n_new, cleaned),
            )
        return cast(int, cursor.lastrowid)

    def last(self, source: str | None = None) -> PollInfo | None:
        """The latest poll of `source` (of any source when None)."""
        where, params = _poll_filter(source)
        row = self._db.conn.execute(
            f"SELECT * FROM polls {where} ORDER BY at DESC, id DESC LIMIT 1", params
        ).fetchone()
        return None if row is None else _poll_from_row(row)

    def last_success_at(self, source: str | None = None) -> datetime | None:
        """When `source` (any source when None) was last polled successfully."""
        where, params = _poll_filter(source, ok_only=True)
        return opt_dt(self._db.scalar(f"SELECT MAX(at) FROM polls {where}", params))

    def down_since(self, source: str | None = None) -> datetime | None:
        """The first failed poll after the last good one, if the latest poll failed; else None."""
        where, params = _poll_filter(source, ok_only=True)
        last_ok = self._db.scalar(f"SELECT MAX(at) FROM polls {where}", params)
        fail_where, fail_params = _poll_filter(source)
        fail_where += (" AND " if fail_where else "WHERE ") + "ok = 0 AND at > ?"
        return opt_dt(
            self._db.scalar(
                f"SELECT MIN(at) FROM polls {fail_where}", (*fail_params, last_ok or "")
            )
        )

    def source_status(
        self, names: Iterable[str] = (), *, since: datetime | None = None
    ) -> list[SourceStatus]:
        """Per source (the `names` given, then any other that was polled): its recent history.

        `new_since` counts the new papers its polls stored at or after `since` (all time if None).
        """
        polled = [row[0] for row in self._db.conn.execute("SELECT DISTINCT source FROM polls")]
        order = list(dict.fromkeys([*names, *sorted(polled)]))
        return [self._one_source(name, since) for name in order]

    def _one_source(self, name: str, since: datetime | None) -> SourceStatus:
        last = self.last(name)
        last_new = self._db.scalar(
            "SELECT MAX(at) FROM polls WHERE source = ? AND n_new > 0", (name,)
        )
        new_since = self._db.scalar(
            "SELECT COALESCE(SUM(n_new), 0) FROM polls WHERE source = ? AND at >= ?",
            (name, ts(since) if since else ""),
        )
        return SourceStatus(
            source=name,
            last_poll_at=last.at if last else None,
            last_success_at=self.last_success_at(name),
            last_new_at=opt_dt(last_new),
            error=last.error if last is not None and not last.ok else None,
            new_since=cast(int, new_since),
        )

    # -- HTTP validators -------------------------------------------------------------------

    def get_validators(self, url: str) -> Validators | None:
        """The ETag / Last-Modified last seen for `url`, for a conditional GET."""
        row = self._db.conn.execute(
            "SELECT etag, last_modified FROM http_validators WHERE url = ?", (url,)
        ).fetchone()
        return None if row is None else Validators(url, row["etag"], row["last_modified"])

    def save_validators(self, validators: Iterable[Validators], *, at: datetime) -> None:
        with self._db.write() as db:
            db.executemany(
                "INSERT INTO http_validators (url, etag, last_modified, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (url) DO UPDATE SET etag = excluded.etag,"
                " last_modified = excluded.last_modified, updated_at = excluded.updated_at",
                ((v.url, v.etag, v.last_modified, ts(at)) for v in validators),
            )

    # -- alerts owed -----------------------------------------------------------------------

    def owe_alerts(self, poll_id: int, paper_ids: Sequence[str], *, at: datetime) -> None:
        """Note that poll `poll_id`'s new papers still owe their alerts (join the poll's batch)."""
        with self._db.write() as db:
            db.execute(
                "INSERT INTO alerts_owed (poll_id, at, paper_ids) VALUES (?, ?, ?)",
                (poll_id, ts(at), json.dumps(list(paper_ids))),
            )

    def owed_alerts(self) -> list[OwedAlerts]:
        """Every poll whose alerts are still owed, oldest first."""
        rows = self._db.conn.execute(
            "SELECT poll_id, at, paper_ids FROM alerts_owed ORDER BY poll_id"
        )
        return [OwedAlerts(r[0], dt(r[1]), tuple(json.loads(r[2]))) for r in rows]

    def settle_alerts(self, poll_id: int) -> None:
        """The poll's alerts are queued (or expired): join the batch that queued them."""
        with self._db.write() as db:
            db.execute("DELETE FROM alerts_owed WHERE poll_id = ?", (poll_id,))
