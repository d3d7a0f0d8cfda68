"""The SQLite state file: one `Database` handle and a repository per entity over it (see `store.py`)."""

from __future__ import annotations

from digestd.store.sqlite.database import Database, explain, probe
from digestd.store.sqlite.migrations import SCHEMA_VERSION
from digestd.store.sqlite.store import Store

__all__ = ["SCHEMA_VERSION", "Database", "Store", "explain", "probe"]
