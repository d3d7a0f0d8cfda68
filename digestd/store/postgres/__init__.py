"""The PostgreSQL state: one `PgDatabase` handle (a pooled connection) and a repository per entity
over it (see `store.py`), the same shape and the same behaviour as `digestd.store.sqlite`."""

from __future__ import annotations

from digestd.store.postgres.database import PgDatabase, pg_probe
from digestd.store.postgres.store import PgStore

__all__ = ["PgDatabase", "PgStore", "pg_probe"]
