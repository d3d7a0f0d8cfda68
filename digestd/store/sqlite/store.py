"""The SQLite state file: one `Database` handle and a repository per entity over it.

`Store(path)` opens (creating and migrating) the file and builds the repositories: `papers`,
`polls`, `subscribers`, `outbox`, `webcopies`, `alerts`, `bounces`, `readers`, `ratings`; `db` is
the handle itself (transactions, batching, metadata). Not thread-safe: another thread opens its own with `side()`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from digestd.store.leadership import SoleLeader
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
    StoreStatus,
    SubscriberRepository,
    WebCopyRepository,
)
from digestd.store.sqlite.alerts import SqliteAlerts
from digestd.store.sqlite.bounces import SqliteBounces
from digestd.store.sqlite.database import Database, explain, probe
from digestd.store.sqlite.instances import SqliteInstances
from digestd.store.sqlite.migrations import SCHEMA_VERSION
from digestd.store.sqlite.outbox import SqliteOutbox
from digestd.store.sqlite.papers import SqlitePapers
from digestd.store.sqlite.polls import SqlitePolls
from digestd.store.sqlite.ratings import SqliteRatings
from digestd.store.sqlite.readers import SqliteReaders
from digestd.store.sqlite.status import store_status
from digestd.store.sqlite.subscribers import SqliteSubscribers
from digestd.store.sqlite.webcopies import SqliteWebCopies

__all__ = ["SCHEMA_VERSION", "Database", "Store", "explain", "probe"]


class Store:
    """The state file: its database handle and one repository per entity over it."""

    # One daemon per file (its run lock): nobody else's claims to respect at start-up.
    shared = False

    def __init__(self, path: str | Path, *, db: Database | None = None) -> None:
        """Open (and create) the database at `path`, or use `db`, already open."""
        self.db = db if db is not None else Database(path)
        self.path = self.db.path
        # Callers see the protocols: another backend builds its own repositories, same names.
        self.papers: PaperRepository = SqlitePapers(self.db)
        self.polls: PollRepository = SqlitePolls(self.db)
        self.subscribers: SubscriberRepository = SqliteSubscribers(self.db)
        self.outbox: OutboxRepository = SqliteOutbox(self.db)
        self.webcopies: WebCopyRepository = SqliteWebCopies(self.db)
        self.alerts: AlertRepository = SqliteAlerts(self.db)
        self.bounces: BounceRepository = SqliteBounces(self.db)
        self.readers: ReaderRepository = SqliteReaders(self.db)
        self.ratings: RatingRepository = SqliteRatings(self.db)
        self.instances: InstanceRepository = SqliteInstances(self.db)

    def side(self) -> Store:
        """Another connection to this very file, for another thread; never a new empty file.

        :raises StateFileMoved: another file (or none) now has the name.
        """
        return Store(self.path, db=self.db.side())

    def batch(self, *, sync: bool = True) -> AbstractContextManager[None]:
        """`Database.batch`: one transaction for several writes of any repositories."""
        return self.db.batch(sync=sync)

    def status(self) -> StoreStatus:
        """A snapshot for `digestd status`."""
        return store_status(self.db, self.papers, self.polls, self.subscribers, self.instances)

    def leadership(self, name: str = "") -> Leadership:
        """Poll leadership for one daemon: a file has one daemon (its run lock), the leader."""
        return SoleLeader()

    def secret(self) -> bytes:
        """The server secret (32 random bytes), created on first use and kept forever."""
        return self.db.secret()

    def moved(self) -> str | None:
        """Why the name no longer leads to this file (deleted, replaced), or None."""
        return self.db.moved()

    def rescue(self, at: datetime) -> Path:
        """A consistent copy of the database next to its old name (`Database.rescue`)."""
        return self.db.rescue(at)

    def ping(self) -> None:
        """A cheap query, for the systemd watchdog: raises if the database is unusable."""
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
