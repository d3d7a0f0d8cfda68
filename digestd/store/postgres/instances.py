"""The running instances' heartbeats (PostgreSQL; see `store/sqlite/instances.py`)."""

from __future__ import annotations

import json

from digestd.store.postgres.database import PgDatabase
from digestd.store.protocols import InstanceInfo
from digestd.store.sqlite.values import dt, ts

__all__ = ["PgInstances"]


class PgInstances:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def beat(self, me: InstanceInfo) -> None:
        with self._db.write() as db:
            db.execute(
                """INSERT INTO instances (name, host, pid, started_at, last_seen, leads)
                   VALUES (%s, %s, %s, %s, %s, %s)
                   ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid,
                       started_at = excluded.started_at, last_seen = excluded.last_seen,
                       leads = excluded.leads""",
                (me.name, me.host, me.pid, ts(me.started_at), ts(me.last_seen),
                 json.dumps(sorted(me.leads))),
            )  # fmt: skip

    def forget(self, name: str) -> None:
        with self._db.write() as db:
            db.execute("DELETE FROM instances WHERE name = %s", (name,))

    def all(self) -> list[InstanceInfo]:
        with self._db.read() as db:
            rows = db.execute(
                "SELECT name, host, pid, started_at, last_seen, leads FROM instances ORDER BY name"
            ).fetchall()
        return [
            InstanceInfo(r[0], r[1], r[2], dt(r[3]), dt(r[4]), tuple(json.loads(r[5])))
            for r in rows
        ]
