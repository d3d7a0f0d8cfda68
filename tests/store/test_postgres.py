"""What only the PostgreSQL backend has: its migrations beside SQLite's, several connections
claiming at once, a schema from a newer digestd, the password kept out of messages."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from pgstate import pg_schema

from digestd.config.settings import load_settings
from digestd.store import explain_error, open_store, state_label
from digestd.store.postgres import PgStore, pg_probe
from digestd.store.postgres.migrations import MIGRATIONS as PG_MIGRATIONS
from digestd.store.protocols import LedgerConflict, SchemaError
from digestd.store.sqlite import SCHEMA_VERSION
from digestd.store.sqlite.migrations import MIGRATIONS as SQLITE_MIGRATIONS

T0 = datetime(2025, 3, 10, 7, 0, tzinfo=UTC)


@pytest.fixture
def url() -> Iterator[str]:
    with pg_schema() as state:
        yield state


def test_both_backends_have_every_migration() -> None:
    """A SQLite migration N needs its PostgreSQL counterpart N (store/postgres/migrations.py)."""
    assert len(PG_MIGRATIONS) == len(SQLITE_MIGRATIONS) == SCHEMA_VERSION


def test_a_new_database_reaches_the_schema_version_and_keeps_its_secret(url: str) -> None:
    assert pg_probe(url) == "reachable (PostgreSQL 15), schema version 0" or "schema version 0" in (
        pg_probe(url)
    )
    with open_store(url) as store:
        assert isinstance(store, PgStore)
        assert store.db.schema_version() == SCHEMA_VERSION
        secret = store.secret()
        assert store.moved() is None
    with open_store(url) as again:
        assert again.secret() == secret
    assert pg_probe(url).endswith(f"schema version {SCHEMA_VERSION}")


def test_a_newer_schema_is_refused(url: str) -> None:
    with open_store(url) as store:
        store.db.conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(SchemaError, match="999"):
        open_store(url)


def test_concurrent_claims_hand_out_each_row_once(url: str) -> None:
    """Four connections claiming at once (FOR UPDATE SKIP LOCKED): every row exactly once."""
    with open_store(url) as store:
        with store.batch():
            for i in range(200):
                store.outbox.enqueue(
                    subscriber=f"r{i}@example.org", kind="digest", period="p",
                    message_id=f"<{i}@x>", sender="d@example.org", data=b"x\r\n",
                    paper_ids=[f"p{i}"], at=T0,
                )  # fmt: skip
        claimed: list[int] = []
        lock = threading.Lock()

        def claimer() -> None:
            with store.side() as mine:
                while rows := mine.outbox.claim_due(now=T0, limit=7):
                    with lock:
                        claimed.extend(row.id for row in rows)

        threads = [threading.Thread(target=claimer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(claimed) == 200 and len(set(claimed)) == 200
        assert store.status().outbox["sending"] == 200


def test_two_instances_composing_one_period_queue_it_once(url: str) -> None:
    with open_store(url) as one, open_store(url) as two:
        first = one.outbox.enqueue(
            subscriber="a@example.org", kind="digest", period="p", message_id="<1@x>",
            sender="d@example.org", data=b"x", paper_ids=["p1"], at=T0,
        )  # fmt: skip
        second = two.outbox.enqueue(
            subscriber="a@example.org", kind="digest", period="p", message_id="<2@x>",
            sender="d@example.org", data=b"y", paper_ids=["p1"], at=T0,
        )  # fmt: skip
        assert first is not None and second is None


def test_the_password_never_shows_in_an_error() -> None:
    url = "postgresql://digestd:s3cret-pw@127.0.0.1:1/nowhere"
    with pytest.raises(psycopg.OperationalError) as caught:
        open_store(url)
    message = explain_error(url, caught.value)
    assert "s3cret-pw" not in message and "***@127.0.0.1" in message


def test_the_state_setting_takes_a_path_or_a_url_and_shows_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "digestd.yaml"
    config.write_text("state: var/x.sqlite3\n")
    assert load_settings(config).state == tmp_path / "var" / "x.sqlite3"
    config.write_text(
        "state: postgresql://digestd:in-url-pw@db.example/digestd\nstate_password_file: pw.txt\n"
    )
    (tmp_path / "pw.txt").write_text("from-file-pw\n")
    settings = load_settings(config)
    assert settings.state == "postgresql://digestd:in-url-pw@db.example/digestd"
    assert settings.state_secret() == "from-file-pw"
    shown = str(settings.redacted())
    assert "in-url-pw" not in shown and "from-file-pw" not in shown
    assert state_label(settings.state) == "postgresql://digestd:***@db.example/digestd"
    monkeypatch.setenv("DIGESTD_STATE_PASSWORD", "from-env-pw")
    assert load_settings(config).state_secret() == "from-env-pw"
    assert "from-env-pw" not in str(load_settings(config).redacted())


def test_a_connection_the_server_dropped_is_replaced_at_the_next_use(url: str) -> None:
    """A server restart or a cut: the operation in flight fails (a state error the jobs log),
    the next one runs on a fresh connection and finds everything committed before."""
    with open_store(url) as store:
        store.polls.record("hf", at=T0, ok=True)
        pid = store.db.conn.info.backend_pid
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):
            store.polls.last("hf")
        poll = store.polls.last("hf")
        assert poll is not None and poll.at == T0
        assert store.db.conn.info.backend_pid != pid
        store.ping()
        # The same inside a write transaction and a batch: the error is the server's, once.
        for write in (
            lambda: store.polls.record("hf", at=T0, ok=True),
            lambda: store.batch().__enter__(),
        ):
            pid = store.db.conn.info.backend_pid
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(psycopg.OperationalError):
                write()
            store.polls.record("feed", at=T0, ok=True)
        assert store.polls.last("feed") is not None


def test_a_reservation_racing_another_instances_aborts_when_that_one_commits(url: str) -> None:
    """Two instances compose for one subscriber at once from the same snapshot: the second's
    reservation of a paper waits for the first's transaction, then aborts its message
    (LedgerConflict), never queues the paper twice."""
    with open_store(url) as one, open_store(url) as two:
        started, outcome = threading.Event(), []

        def second() -> None:
            started.set()
            try:
                two.outbox.enqueue(
                    subscriber="a@example.org", kind="digest", period="p2", message_id="<2@x>",
                    sender="d@example.org", data=b"y", paper_ids=["paper"], at=T0,
                )  # fmt: skip
                outcome.append("queued")
            except LedgerConflict:
                outcome.append("conflict")

        with one.batch():
            one.outbox.enqueue(
                subscriber="a@example.org", kind="digest", period="p1", message_id="<1@x>",
                sender="d@example.org", data=b"x", paper_ids=["paper"], at=T0,
            )  # fmt: skip
            thread = threading.Thread(target=second)
            thread.start()
            started.wait()
            thread.join(0.5)
            assert thread.is_alive()  # waiting on the first's uncommitted reservation
        thread.join(10)
        assert outcome == ["conflict"]
        assert not two.outbox.has_period("a@example.org", "digest", "p2")
        assert one.outbox.pending_count() == 1
