"""A relay that lies or babbles (issue 12, items 4 and 5): `digestd run --once` and the daemon.

The relay is `scriptedsmtp.ScriptedRelay`, with and without PIPELINING, so both command exchanges
of `SmtpMailer` meet every fault. The rule under test: nothing is marked sent unless the relay
said 250 after the body; after the final "." any unclear reply is `in_doubt` (re-sent later with
the same Message-ID); before it, an unexpected reply is a transient protocol error.
Per recipient: nothing lost, and any duplicate carries the same Message-ID.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonproc import daemon, wait_for
from scenes import file_smtp_scene
from scriptedsmtp import TEN_MB_LINE, Fault, ScriptedRelay

FIXTURES = Path(__file__).parents[1] / "fixtures"
EMAILS = [f"r{i}@example.org" for i in range(6)]


@pytest.fixture(params=["lockstep", "pipelining"])
def relay(request: pytest.FixtureRequest) -> Iterator[ScriptedRelay]:
    server = ScriptedRelay(pipelining=request.param == "pipelining").start()
    try:
        yield server
    finally:
        server.stop()


def setup(tmp_path: Path, port: int, emails: list[str], *, alerts: bool = False) -> Path:
    rule = '\n    rules: [{any: ["accelerator"], alert: true}]' if alerts else ""
    lines = ["defaults:\n  max_papers: 3\nsubscribers:"]
    lines += [f"  - email: {e}{rule}" for e in emails]
    delivery = "  timeout: 2s\n  data_timeout: 3s\n"
    return file_smtp_scene(
        tmp_path, port, "\n".join(lines) + "\n", source=", poll_every: 1h", delivery=delivery
    )


def run_once(config: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "digestd", "--config", str(config), "run", "--once"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=50)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def rows(config: Path) -> dict[str, tuple[str, str]]:
    """(state, Message-ID) of each recipient's one message."""
    with sqlite3.connect(config.parent / "state.sqlite3") as db:
        found = db.execute(
            "SELECT subscriber, state, message_id FROM outbox WHERE state != 'empty'"
        ).fetchall()
    assert len(found) == len({s for s, _, _ in found}), found
    return {subscriber: (state, mid) for subscriber, state, mid in found}


def make_due(config: Path) -> None:
    """The backoff has passed: what waits for a retry is due now (the clock cannot move here)."""
    with sqlite3.connect(config.parent / "state.sqlite3") as db:
        db.execute(
            "UPDATE outbox SET next_attempt_at = '2000-01-01T00:00:00.000000+00:00' "
            "WHERE state IN ('deferred', 'in_doubt')"
        )


def assert_each_once_or_same_id(relay: ScriptedRelay, config: Path, emails: list[str]) -> None:
    got = relay.message_ids()
    assert sorted(got) == sorted(emails), got
    state = rows(config)
    for email in emails:
        assert state[email][0] == "sent", state[email]
        assert set(got[email]) == {state[email][1]}, (email, got[email])  # duplicates: same id


def test_item4_data_250_is_not_sent(tmp_path: Path, relay: ScriptedRelay) -> None:
    config = setup(tmp_path, relay.port, EMAILS[:3])
    relay.fail("r1@example.org", Fault("data", b"250 2.0.0 Ok: queued as NOTHING\r\n"))
    run_once(config)
    state = rows(config)
    assert state["r1@example.org"][0] == "deferred", state  # a protocol error: try again later
    assert "r1@example.org" not in relay.message_ids()  # the body never went out
    assert state["r0@example.org"][0] == state["r2@example.org"][0] == "sent"  # the rest goes on
    make_due(config)
    run_once(config)
    assert_each_once_or_same_id(relay, config, EMAILS[:3])
    assert len(relay.message_ids()["r1@example.org"]) == 1


# Replies to the final "." that say neither yes nor no; each recipient meets one of them.
UNCLEAR_AFTER_DOT = {
    "garbage": b"\x00\xffgarbage, no code\r\n",
    "ten-mb-line": TEN_MB_LINE,
    "go-ahead-again": b"354 go ahead, again\r\n",
    "torn-multiline": b"250-queued as X\r\n",
    "glued-250": b"2500 queued\r\n",  # int(line[:3]) would read 250
    "mixed-codes": b"550-5.7.1 no\r\n250 ok\r\n",  # RFC 5321 §4.2: one code per reply
}


def test_item5_unreadable_reply_to_the_dot_is_in_doubt(
    tmp_path: Path, relay: ScriptedRelay
) -> None:
    faulty = [f"{name}@example.org" for name in UNCLEAR_AFTER_DOT]
    emails = [*faulty, "healthy@example.org"]
    config = setup(tmp_path, relay.port, emails)
    for email, reply in zip(faulty, UNCLEAR_AFTER_DOT.values(), strict=True):
        relay.fail(email, Fault("end", reply, close=True, kept=True))
    run_once(config)
    state, got = rows(config), relay.message_ids()
    for email in faulty:
        assert state[email][0] == "in_doubt", (email, state[email])
        assert got[email] == [state[email][1]], email  # the relay may well have it
    assert state["healthy@example.org"][0] == "sent"
    make_due(config)
    run_once(config)  # the relay is healthy now
    assert_each_once_or_same_id(relay, config, emails)
    got = relay.message_ids()
    assert all(len(got[email]) == 2 for email in faulty), got  # re-sent, same Message-ID


# Every step before the body: a reply that is not the go-ahead is neither a success nor a
# definite failure. Each recipient meets one of them.
BEFORE_DOT = {
    "rcpt-252": Fault("rcpt", b"252 2.1.5 cannot verify, will try\r\n"),
    "rcpt-garbage": Fault("rcpt", b"2x0 what\r\n", close=True),
    "rcpt-ten-mb": Fault("rcpt", TEN_MB_LINE, close=True),
    "rcpt-torn-550": Fault("rcpt", b"550-5.1.1 no such\r\n", close=True),
    "data-torn-354": Fault("data", b"354-go\r\n", close=True),
    "data-220": Fault("data", b"220 ready\r\n"),
    "data-garbage": Fault("data", b"\xffgarbage\r\n", close=True),
    # A 250 that came before the body was sent answers nothing of ours.
    "data-354-and-250": Fault("data", b"354 go\r\n250 2.0.0 queued\r\n", close=True),
}


def test_item4_unexpected_reply_before_the_dot_is_deferred(
    tmp_path: Path, relay: ScriptedRelay
) -> None:
    faulty = [f"{name}@example.org" for name in BEFORE_DOT]
    emails = [*faulty, "healthy@example.org"]
    config = setup(tmp_path, relay.port, emails)
    for email, fault in zip(faulty, BEFORE_DOT.values(), strict=True):
        relay.fail(email, fault)
    run_once(config)
    state, got = rows(config), relay.message_ids()
    for email in faulty:
        assert state[email][0] == "deferred", (email, state[email])
        assert email not in got, email
    assert state["healthy@example.org"][0] == "sent"
    make_due(config)
    run_once(config)
    assert_each_once_or_same_id(relay, config, emails)
    assert all(len(ids) == 1 for ids in relay.message_ids().values())


def test_item4_unexpected_reply_to_mail_is_deferred(tmp_path: Path, relay: ScriptedRelay) -> None:
    config = setup(tmp_path, relay.port, EMAILS)
    relay.mail_faults.extend(  # the first three MAIL commands, whoever they are for
        [
            Fault("mail", b"251 2.1.0 ok but not the right ok\r\n"),
            Fault("mail", b"354 go ahead\r\n"),
            Fault("mail", TEN_MB_LINE, close=True),
        ]
    )
    run_once(config)
    state, got = rows(config), relay.message_ids()
    deferred = [email for email in EMAILS if state[email][0] == "deferred"]
    assert len(deferred) == 3 and not set(deferred) & set(got), (state, got)
    assert all(state[email][0] == "sent" for email in set(EMAILS) - set(deferred))
    make_due(config)
    run_once(config)
    assert_each_once_or_same_id(relay, config, EMAILS)
    assert all(len(ids) == 1 for ids in relay.message_ids().values())


def test_item4_item5_daemon_against_a_misbehaving_relay(
    tmp_path: Path, relay: ScriptedRelay
) -> None:
    """The real daemon, restarted once the backoff has passed, until the relay behaves."""
    emails = [f"d{i}@example.org" for i in range(8)]
    config = setup(tmp_path, relay.port, emails, alerts=True)
    relay.fail("d0@example.org", Fault("data", b"250 ok\r\n"), Fault("end", b"\x00junk\r\n"))
    relay.fail("d1@example.org", Fault("end", TEN_MB_LINE, close=True))
    relay.fail("d2@example.org", Fault("end", b"\x00junk\r\n"), Fault("data", b"250 ok\r\n"))
    relay.fail("d3@example.org", Fault("rcpt", TEN_MB_LINE, close=True))
    relay.fail("d4@example.org", Fault("end", b"250-half a reply\r\n", close=True))
    for attempt in range(3):  # two misbehaving passes, then a healthy one
        log = tmp_path / f"daemon{attempt}.log"
        with daemon(config, log) as proc:
            wait_for(lambda: _settled(config, emails), timeout=20, what="for every send")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
        make_due(config)
    assert_each_once_or_same_id(relay, config, emails)
    duplicates = {e: ids for e, ids in relay.message_ids().items() if len(ids) > 1}
    assert sorted(duplicates) == [
        "d0@example.org",
        "d1@example.org",
        "d2@example.org",
        "d4@example.org",
    ]


def _settled(config: Path, emails: list[str]) -> bool:
    """Every recipient's alert queued, tried, and none of them due any more: this pass is done."""
    try:
        with sqlite3.connect(config.parent / "state.sqlite3") as db:
            found = db.execute("SELECT state, next_attempt_at FROM outbox").fetchall()
    except sqlite3.OperationalError:
        return False  # the daemon is still creating the store
    return len(found) == len(emails) and all(
        state == "sent" or (state in ("deferred", "in_doubt") and not due.startswith("2000"))
        for state, due in found
    )
