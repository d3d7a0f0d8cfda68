"""The state: SQLite (a file, the default) or PostgreSQL (`state: postgresql://…`) with papers,
polls, subscribers, the outbox and its ledger, web copies and admin alert state, behind the
`StateStore` protocol; `open_store` picks the backend. And the lock that admits one running
pipeline per state file."""

from digestd.store.factory import (
    explain_error,
    is_postgres,
    open_store,
    operational_errors,
    probe_state,
    state_label,
    store_errors,
)
from digestd.store.protocols import StateStore

__all__ = [
    "StateStore",
    "explain_error",
    "is_postgres",
    "open_store",
    "operational_errors",
    "probe_state",
    "state_label",
    "store_errors",
]
