"""The PostgreSQL state: one `PgDatabase` handle and the repositories over it, the same names as
`store/sqlite/store.py`'s `Store` (callers see `digestd.store.StateStore`).

What only makes sense for a file has a neutral meaning here: a database cannot be deleted or
replaced under an open connection the way a file can, so `moved()` is always None and there is
nothing to `rescue`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from digestd.store.leadership import AdvisoryLeader
from digestd.store.postgres.alerts import PgAlerts
from digestd.store.postgres.bounces import PgBounces
from digestd.store.postgres.database import PgDatabase, pg_label
from digestd.store.postgres.instances import PgInstances
from digestd.store.postgres.outbox import PgOutbox
from digestd.store.postgres.papers import PgPapers
from digestd.store.postgres.polls import PgPolls
from digestd.store.postgres.ratings import PgRatings
from digestd.store.postgres.readers import PgReaders
from digestd.store.postgres.status import store_status
from digestd.store.postgres.subscribers import PgSubscribers
from digestd.store.postgres.webcopies import PgWebCopies
from digestd.store.protocols import (
    AlertRepository,
    BounceRepository,
    InstanceRepository,
    Leadership,
    OutboxRepository,
    PaperRepository,
    PollRepository,
    RatingRepository,
    ReaderRepository,
    StateFileMoved,
    StoreStatus,
    SubscriberRepository,
    WebCopyRepository,
)

__all__ = ["PgStore"]


class PgStore:
    """A PostgreSQL state: its database handle and one repository per entity over it."""

    # Several daemons may run on one database: the rows others claimed are theirs.
    shared = True

    def __init__(
        self, url: str, *, password: str | None = None, db: PgDatabase | None = None
    ) -> None:
        """Connect (and migrate) the database at `url`, or use `db`, already open.

        `password`: from `state_password_file` or the environment; never part of `url` as
        shown (`path` is the URL redacted, for messages and logs).
        """
        self.db = db if db is not None else PgDatabase(url, password=password)
        self.path = pg_label(url)
        self.papers: PaperRepository = PgPapers(self.db)
        self.polls: PollRepository = PgPolls(self.db)
        self.subscribers: SubscriberRepository = PgSubscribers(self.db)
        self.outbox: OutboxRepository = PgOutbox(self.db)
        self.webcopies: WebCopyRepository = PgWebCopies(self.db)
        self.alerts: AlertRepository = PgAlerts(self.db)
        self.bounces: BounceRepository = PgBounces(self.db)
        self.readers: ReaderRepository = PgReaders(self.db)
        self.ratings: RatingRepository = PgRatings(self.db)
        self.instances: InstanceRepository = PgInstances(self.db)

    def side(self) -> PgStore:
        """Another connection from the same pool, for another thread."""
        return PgStore(self.db.url, db=self.db.side())

    def batch(self, *, sync: bool = True) -> AbstractContextManager[None]:
        return self.db.batch(sync=sync)

    def status(self) -> StoreStatus:
        return store_status(self.db, self.papers, self.polls, self.subscribers, self.instances)

    def leadership(self, name: str = "") -> Leadership:
        """Advisory locks on a connection of their own (not the pool's: a lock lives as long
        as its session, and a pooled connection is handed to whoever asks next)."""
        return AdvisoryLeader(self.db.conninfo, name=name)

    def secret(self) -> bytes:
        return self.db.secret()

    def moved(self) -> str | None:
        """Always None: a database is not a file that can be deleted under us."""
        return None

    def rescue(self, at: datetime) -> Path:
        """Nothing to rescue (`moved` is never set); refuses, for a caller that asks anyway."""
        raise StateFileMoved(f"{self.path} is a database, not a file: nothing to rescue")

    def ping(self) -> None:
        self.db.ping()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
