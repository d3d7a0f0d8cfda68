"""The running instances' heartbeats: name, host, pid, start, last beat and the sources each leads."""

from __future__ import annotations

import json

from digestd.store.protocols import InstanceInfo
from digestd.store.sqlite.database import Database
from digestd.store.sqlite.values import dt, ts

__all__ = ["SqliteInstances"]


class SqliteInstances:
    def __init__(self, db: Database) -> None:
        self._db = db

    def beat(self, me: InstanceInfo) -> None:
        """Write (or refresh) this instance's row."""
        with self._db.write() as db:
            db.execute(
                """INSERT INTO instances (name, host, pid, started_at, last_seen, leads)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid,
                       started_at = excluded.started_at, last_seen = excluded.last_seen,
                       leads = excluded.leads""",
                (me.name, me.host, me.pid, ts(me.started_at), ts(me.last_seen),
                 json.dumps(sorted(me.leads))),
            )  # fmt: skip

    def forget(self, name: str) -> None:
        """A clean stop: the instance is gone, not silent."""
        with self._db.write() as db:
            db.execute("DELETE FROM instances WHERE name = ?", (name,))

    def all(self) -> list[InstanceInfo]:
        """Every instance that has beaten and not stopped cleanly, by name."""
        rows = self._db.conn.execute(
            "SELECT name, host, pid, started_at, last_seen, leads FROM instances ORDER BY name"
        ).fetchall()
        return [
            InstanceInfo(r[0], r[1], r[2], dt(r[3]), dt(r[4]), tuple(json.loads(r[5])))
            for r in rows
        ]
