"""`digestd migrate --to postgresql://…` end to end: a state file with something in every table
copied into an empty database (a schema of its own), verified, then used as the state; a
non-empty target refused; the password never printed."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgstate import pg_schema

from digestd.cli.main import main
from digestd.core.model import Paper, Validators
from digestd.mail.parts import Part, Spliced
from digestd.mail.webcopy import WebBody
from digestd.store import open_store, transfer
from digestd.store.protocols import AlertState
from digestd.store.sqlite import Store

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SHARED = Part("shared-key", b"<style>the same for everyone</style>\r\n" * 30)


@pytest.fixture
def target() -> Iterator[str]:
    with pg_schema() as url:
        yield url


def settings_file(tmp_path: Path) -> Path:
    path = tmp_path / "digestd.yaml"
    path.write_text("state: var/digestd.sqlite3\n")
    return path


def seed(state: Path) -> tuple[bytes, dict[str, int]]:
    """Something in every table; returns the secret and the link ids given out."""
    with Store(state) as store:
        secret = store.secret()
        papers = [
            Paper(id=f"2603.{i:05}", title=f"T{i}", abstract="A", authors=("Ada",))
            for i in range(30)
        ]
        store.papers.save(papers, seen_at=T0)
        poll = store.polls.record("hf", at=T0, ok=True, n_items=30, n_new=30)
        store.polls.owe_alerts(poll, ["2603.00001"], at=T0)
        store.polls.record("feed", at=T0, ok=False, error="HTTP 500")
        store.polls.save_validators([Validators("https://h.example/f", '"e1"', None)], at=T0)
        store.subscribers.register(["alice@example.org", "bob@example.org"], at=T0)
        ids = store.subscribers.ids_of(
            ["alice@example.org", "bob@example.org", "carol@example.org"]
        )
        store.subscribers.suppress("carol@example.org", at=T0, via="one-click")
        store.subscribers.unsuppress("carol@example.org", at=T0)  # carol's id is retired
        store.subscribers.suppress("dave@example.org", at=T0, via="admin")
        for n, who in enumerate(("alice@example.org", "bob@example.org", "eve@example.org")):
            store.outbox.enqueue(
                subscriber=who, kind="digest", period="2026-03-02", message_id=f"<{n}@x>",
                sender="d@example.org", data=Spliced(b"To: " + who.encode() + b"\r\n\r\n", ((0, SHARED),)),
                paper_ids=[p.id for p in papers[n * 10 : n * 10 + 10]], at=T0,
            )  # fmt: skip
        first, second, third = store.outbox.claim_due(now=T0, limit=3)
        store.outbox.mark_sent(first.id, at=T0, code=250, reply="ok")
        store.outbox.mark_failed(
            third.id, at=T0, code=550, reply="no such user", suspend=lambda n: "gone"
        )
        store.outbox.mark_deferred(second.id, at=T0, retry_at=T0, code=451, reply="later")
        store.webcopies.save(
            "tok1",
            subscriber="alice@example.org",
            html=zlib.compress(b"<p>hi</p>"),
            at=T0,
            expires_at=T0 + timedelta(days=30),
        )
        body = WebBody(hash="h1", html=zlib.compress(b"<p>{name}</p>"), slots='{"name":"X"}')
        store.webcopies.save_fills(
            "tok2",
            subscriber="bob@example.org",
            body=body,
            fills={"name": "Bob"},
            at=T0,
            expires_at=T0 + timedelta(days=30),
        )
        store.alerts.save(
            AlertState("delivery", firing=True, notified=True, streak=3, since=T0, detail="x"),
            at=T0,
        )
    return secret, ids


def test_migrate_copies_every_table_verifies_and_the_database_works_as_the_state(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = settings_file(tmp_path)
    state = tmp_path / "var" / "digestd.sqlite3"
    secret, ids = seed(state)
    assert main(["migrate", "--config", str(config), "--to", target]) == 0
    out = capsys.readouterr().out
    assert "counts and checksums match" in out and "outbox_parts" in out
    with Store(state) as lite, open_store(target) as pg:
        assert pg.secret() == secret  # old links and Message-IDs keep verifying
        assert pg.status() == lite.status()
        assert pg.subscribers.suppressions() == lite.subscribers.suppressions()
        assert pg.subscribers.suspensions() == lite.subscribers.suspensions()
        assert pg.subscribers.retired_email(ids["carol@example.org"]) == "carol@example.org"
        assert pg.polls.owed_alerts() == lite.polls.owed_alerts()
        assert pg.polls.get_validators("https://h.example/f") == Validators(
            "https://h.example/f", '"e1"', None
        )
        assert pg.webcopies.find("tok2", now=T0) == lite.webcopies.find("tok2", now=T0)
        assert pg.alerts.state("delivery") == lite.alerts.state("delivery")
        since = T0 - timedelta(days=1)
        assert pg.papers.candidates("alice@example.org", since=since) == lite.papers.candidates(
            "alice@example.org", since=since
        )
        # The deferred message goes out from the database with its bytes, parts spliced back.
        (row,) = pg.outbox.claim_due(now=T0)
        (same,) = lite.outbox.claim_due(now=T0)
        assert (row.id, row.message_id, row.data) == (same.id, same.message_id, same.data)
        # New ids continue after every id the file ever gave (carol's retired one included).
        assert pg.subscribers.id_of("frank@example.org") > max(ids.values())
        new = pg.outbox.enqueue(
            subscriber="frank@example.org",
            kind="digest",
            period="p",
            message_id="<f@x>",
            sender="d@example.org",
            data=b"x",
            paper_ids=[],
            at=T0,
        )
        assert new is not None and new > row.id


def test_migrate_refuses_a_target_that_is_not_empty(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = settings_file(tmp_path)
    seed(tmp_path / "var" / "digestd.sqlite3")
    assert main(["migrate", "--config", str(config), "--to", target]) == 0
    capsys.readouterr()
    assert main(["migrate", "--config", str(config), "--to", target]) != 0
    err = capsys.readouterr().err
    assert "is not empty" in err and "papers" in err and "Traceback" not in err


def test_migrate_refuses_a_schema_holding_other_tables(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = settings_file(tmp_path)
    seed(tmp_path / "var" / "digestd.sqlite3")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id int)")
    assert main(["migrate", "--config", str(config), "--to", target]) != 0
    assert "not digestd's (invoices)" in capsys.readouterr().err
    with psycopg.connect(target, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    assert tables == [("invoices",)]  # nothing created beside it


def test_migrate_never_prints_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = settings_file(tmp_path)
    seed(tmp_path / "var" / "digestd.sqlite3")
    url = "postgresql://digestd:hunter2-pw@127.0.0.1:1/nowhere"
    assert main(["migrate", "--config", str(config), "--to", url]) != 0
    err = capsys.readouterr().err
    assert "hunter2-pw" not in err and "***@127.0.0.1" in err and "Traceback" not in err


def test_a_copy_that_does_not_verify_keeps_nothing(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = settings_file(tmp_path)
    seed(tmp_path / "var" / "digestd.sqlite3")
    real = transfer._checksum
    calls: list[int] = []

    def tampered(rows: Iterable[tuple[Any, ...]]) -> tuple[int, str]:
        n, digest = real(rows)
        calls.append(n)
        return (n, "differs") if len(calls) == 4 else (n, digest)  # the 2nd table's copy

    monkeypatch.setattr(transfer, "_checksum", tampered)
    assert main(["migrate", "--config", str(config), "--to", target]) == 1
    assert "does not verify" in capsys.readouterr().err
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM papers").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM admin_alerts").fetchone() == (0,)
    monkeypatch.setattr(transfer, "_checksum", real)
    assert main(["migrate", "--config", str(config), "--to", target]) == 0  # and can be redone
