"""The outbox kind 'notice' (the reader pages' own mails) against a real SQLite file: the
migration that turns the earlier 'alert' rows of sign-ups into notices, and which suppressions
a notice passes at delivery."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from digestd.store.sqlite import SCHEMA_VERSION, Store
from digestd.store.sqlite.migrations import MIGRATIONS, _migration_15

T0 = datetime(2025, 3, 10, 7, 0, tzinfo=UTC)
OLD_CHECK = "CHECK (kind IN ('digest', 'alert'))"


def queue(store: Store, email: str, kind: str, period: str) -> None:
    store.outbox.enqueue(
        subscriber=email, kind=kind, period=period,  # type: ignore[arg-type]
        message_id=f"<{email}.{kind}.{period}@digestd.test>", sender="digestd@example.org",
        data=b"bytes", paper_ids=(), at=T0,
    )  # fmt: skip


def undo_leases(raw: sqlite3.Connection) -> None:
    """Take back what migration 16 (leases and instances, issue 18) added, to make an older file."""
    raw.execute("DROP TABLE instances")
    raw.execute("DROP INDEX outbox_leases")
    raw.execute("ALTER TABLE outbox DROP COLUMN claimed_by")
    raw.execute("ALTER TABLE outbox DROP COLUMN lease_until")


def make_older_file(path: Path) -> None:
    """A file as the release before wrote it: the outbox's old CHECK, sign-up mails as alerts."""
    with Store(path) as store:
        queue(store, "ann@example.org", "alert", "signup-confirm-20250310T070000000000")
        queue(store, "bob@example.org", "alert", "2025-03-10T07")
    raw = sqlite3.connect(path, isolation_level=None)
    version = raw.execute("PRAGMA schema_version").fetchone()[0]
    raw.execute("PRAGMA writable_schema = ON")
    raw.execute(
        "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE name = 'outbox'",
        ("CHECK (kind IN ('digest', 'alert', 'notice'))", OLD_CHECK),
    )
    raw.execute(f"PRAGMA schema_version = {version + 1}")
    raw.execute("PRAGMA writable_schema = OFF")
    undo_leases(raw)  # the migration after the notices' (issue 18)
    before = MIGRATIONS.index(_migration_15)
    raw.execute(f"UPDATE meta SET value = '{before}' WHERE key = 'schema_version'")
    raw.close()
    raw = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute(
            "INSERT INTO outbox (subscriber, kind, period, message_id, sender, n_papers, state,"
            " next_attempt_at, created_at, updated_at) VALUES ('x', 'notice', 'p', 'm', 's', 0,"
            " 'queued', '', '', '')"
        )
    raw.close()


def test_the_upgrade_makes_sign_up_alerts_notices_and_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    make_older_file(path)
    with Store(path) as store:
        assert store.db.schema_version() == SCHEMA_VERSION
        rows = store.db.conn.execute("SELECT subscriber, kind FROM outbox ORDER BY subscriber")
        assert [tuple(r) for r in rows] == [
            ("ann@example.org", "notice"),
            ("bob@example.org", "alert"),
        ]
        queue(store, "cy@example.org", "notice", "signup-known-1")
        assert store.db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        with pytest.raises(sqlite3.IntegrityError):
            queue(store, "cy@example.org", "other", "p")
    with Store(path) as store:  # opened again: nothing left to migrate
        assert store.db.schema_version() == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("via", "delivered"),
    [("one-click", True), ("preferences", True), ("complaint", False), ("admin", False)],
)
def test_a_notice_passes_only_a_suppression_by_the_readers_own_hand(
    tmp_path: Path, via: str, delivered: bool
) -> None:
    with Store(tmp_path / "state.sqlite3") as store:
        queue(store, "ann@example.org", "notice", "signup-confirm-1")
        queue(store, "ann@example.org", "digest", "2025-03-10")
        store.subscribers.suppress("ann@example.org", at=T0, via=via)
        rows = {r.kind: r.suppressed for r in store.outbox.claim_due(now=T0, limit=10)}
        assert rows == {"notice": not delivered, "digest": True}
