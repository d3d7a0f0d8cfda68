"""Admin alert state on PostgreSQL: whether each alert fires, was notified, and since when."""

from __future__ import annotations

from datetime import datetime

from digestd.store.postgres.database import PgDatabase
from digestd.store.protocols import AlertState
from digestd.store.sqlite.values import opt_dt, opt_ts, ts

__all__ = ["PgAlerts"]


class PgAlerts:
    """The admin_alerts table."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def state(self, name: str) -> AlertState:
        """The alert's row; a missing row reads as all zero."""
        row = self._db.conn.execute(
            "SELECT firing, notified, streak, since, detail FROM admin_alerts WHERE name = %s",
            (name,),
        ).fetchone()
        if row is None:
            return AlertState(name)
        firing, notified, streak, since, detail = row
        return AlertState(name, bool(firing), bool(notified), streak, opt_dt(since), detail)

    def save(self, state: AlertState, *, at: datetime) -> None:
        with self._db.write() as db:
            db.execute(
                """INSERT INTO admin_alerts (name, firing, notified, streak, since, detail,
                                             updated_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (name) DO UPDATE SET firing = excluded.firing,
                       notified = excluded.notified, streak = excluded.streak,
                       since = excluded.since, detail = excluded.detail,
                       updated_at = excluded.updated_at""",
                (state.name, int(state.firing), int(state.notified), state.streak,
                 opt_ts(state.since), state.detail, ts(at)),
            )  # fmt: skip
