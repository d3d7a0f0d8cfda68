"""Polls of the sources, their HTTP validators and the alerts a poll still owes (PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from digestd.core.model import Validators
from digestd.core.redact import safe_text
from digestd.store.postgres.database import PgDatabase
from digestd.store.postgres.values import one_dict
from digestd.store.protocols import OwedAlerts, PollInfo, SourceStatus
from digestd.store.sqlite.polls import _poll_from_row  # same columns on both backends
from digestd.store.sqlite.values import dt, opt_dt, ts

__all__ = ["PgPolls"]


def _poll_filter(source: str | None, *, ok_only: bool = False) -> tuple[str, list[Any]]:
    clauses = ["ok = 1"] if ok_only else []
    params: list[Any] = []
    if source is not None:
        clauses.append("source = %s")
        params.append(source)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


class PgPolls:
    """The polls, http_validators and alerts_owed tables."""

    def __init__(self, db: PgDatabase) -> None:
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
        """Record one poll of `source` (its error redacted, controls stripped); returns its id."""
        cleaned = None if error is None else safe_text(error)
        with self._db.write() as db:
            row = db.execute(
                "INSERT INTO polls (source, at, ok, n_items, n_new, error)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (source, ts(at), int(ok), n_items, n_new, cleaned),
            ).fetchone()
        assert row is not None
        return cast(int, row[0])

    def last(self, source: str | None = None) -> PollInfo | None:
        where, params = _poll_filter(source)
        row = one_dict(
            self._db.conn, f"SELECT * FROM polls {where} ORDER BY at DESC, id DESC LIMIT 1", params
        )
        return None if row is None else _poll_from_row(row)  # type: ignore[arg-type]

    def last_success_at(self, source: str | None = None) -> datetime | None:
        where, params = _poll_filter(source, ok_only=True)
        return opt_dt(self._db.scalar(f"SELECT MAX(at) FROM polls {where}", params))

    def down_since(self, source: str | None = None) -> datetime | None:
        """The first failed poll after the last good one, if the latest poll failed; else None."""
        where, params = _poll_filter(source, ok_only=True)
        last_ok = self._db.scalar(f"SELECT MAX(at) FROM polls {where}", params)
        fail_where, fail_params = _poll_filter(source)
        fail_where += (" AND " if fail_where else "WHERE ") + "ok = 0 AND at > %s"
        return opt_dt(
            self._db.scalar(
                f"SELECT MIN(at) FROM polls {fail_where}", (*fail_params, last_ok or "")
            )
        )

    def source_status(
        self, names: Iterable[str] = (), *, since: datetime | None = None
    ) -> list[SourceStatus]:
        polled = [row[0] for row in self._db.conn.execute("SELECT DISTINCT source FROM polls")]
        order = list(dict.fromkeys([*names, *sorted(polled)]))
        return [self._one_source(name, since) for name in order]

    def _one_source(self, name: str, since: datetime | None) -> SourceStatus:
        last = self.last(name)
        last_new = self._db.scalar(
            "SELECT MAX(at) FROM polls WHERE source = %s AND n_new > 0", (name,)
        )
        new_since = self._db.scalar(
            "SELECT COALESCE(SUM(n_new), 0) FROM polls WHERE source = %s AND at >= %s",
            (name, ts(since) if since else ""),
        )
        return SourceStatus(
            source=name,
            last_poll_at=last.at if last else None,
            last_success_at=self.last_success_at(name),
            last_new_at=opt_dt(last_new),
            error=last.error if last is not None and not last.ok else None,
            new_since=int(new_since),
        )

    # -- HTTP validators -------------------------------------------------------------------

    def get_validators(self, url: str) -> Validators | None:
        row = self._db.conn.execute(
            "SELECT etag, last_modified FROM http_validators WHERE url = %s", (url,)
        ).fetchone()
        return None if row is None else Validators(url, row[0], row[1])

    def save_validators(self, validators: Iterable[Validators], *, at: datetime) -> None:
        rows = [(v.url, v.etag, v.last_modified, ts(at)) for v in validators]
        if not rows:
            return
        with self._db.write() as db:
            db.cursor().executemany(
                "INSERT INTO http_validators (url, etag, last_modified, updated_at)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (url) DO UPDATE SET etag = excluded.etag,"
                " last_modified = excluded.last_modified, updated_at = excluded.updated_at",
                rows,
            )

    # -- alerts owed -----------------------------------------------------------------------

    def owe_alerts(self, poll_id: int, paper_ids: Sequence[str], *, at: datetime) -> None:
        with self._db.write() as db:
            db.execute(
                "INSERT INTO alerts_owed (poll_id, at, paper_ids) VALUES (%s, %s, %s)",
                (poll_id, ts(at), json.dumps(list(paper_ids))),
            )

    def owed_alerts(self) -> list[OwedAlerts]:
        rows = self._db.conn.execute(
            "SELECT poll_id, at, paper_ids FROM alerts_owed ORDER BY poll_id"
        )
        return [OwedAlerts(r[0], dt(r[1]), tuple(json.loads(r[2]))) for r in rows]

    def settle_alerts(self, poll_id: int) -> None:
        with self._db.write() as db:
            db.execute("DELETE FROM alerts_owed WHERE poll_id = %s", (poll_id,))
