"""A relay that lies or babbles (issue 12, items 4 and 5): `digestd run --once` and the daemon.

The relay is `scriptedsmtp.ScriptedRelay`, with and without PIPELINING, so both command exchanges
of `SmtpMailer` meet every fault. The rule under test: nothing is marked sent unless the relay
said 250 after the body; after the final "." any unclear reply is `in_doubt` (re-sent later with
the same Message-ID); before it, an unexpected reply is a transient protocol error.
Per recipient: nothing lost, and any duplicate carries the same Message-ID.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonproc import daemon, wait_for
from scriptedsmtp import TEN_MB_LINE, Fault, ScriptedRelay

FIXTURES = Path(__file__).parent / "fixtures"
EMAILS = [f"r{i}@example.org" for i in range(6)]


@pytest.fixture(params=["lockstep", "pipelining"])
def relay(request: pytest.FixtureRequest) -> Iterator[ScriptedRelay]:
    server = ScriptedRelay(pipelining=request.param == "pipelining").start()
    try:
        yield server
    finally:
        server.stop()


def setup(tmp_path: Path, port: int, emails: list[str], *, alerts: bool = False) -> Path:
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())[:3]
    (tmp_path / "papers.json").write_text(json.dumps(items))
    rule = '\n    rules: [{any: ["accelerator"], alert: true}]' if alerts else ""
    lines = ["defaults:\n  max_papers: 3\nsubscribers:"]
    lines += [f"  - email: {e}{rule}" for e in emails]
    (tmp_path / "subscribers.yaml").write_text("\n".join(lines) + "\n")
    config = tmp_path / "digestd.yaml"
    config.write_text(
        f"""\
source: {{kind: file, url: papers.json, poll_every: 1h}}
state: state.sqlite3
delivery:
  kind: smtp
  host: 127.0.0.1
  port: {port}
  security: none
  timeout: 2s
  data_timeout: 3s
  from: "Paper Digest <digest@example.org>"
subscribers: subscribers.yaml
lookback: 3650d
"""
    )
    return config


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


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b"\x00\xffgarbage, no code\r\n", id="garbage"),
        pytest.param(TEN_MB_LINE, id="10MB-line"),
        pytest.param(b"354 go ahead, again\r\n", id="354"),
        pytest.param(b"250-queued as X\r\n", id="torn-multiline"),
        pytest.param(b"2500 queued\r\n", id="250-glued"),
        pytest.param(b"550-5.7.1 no\r\n250 ok\r\n", id="mixed-codes"),
    ],
)
def test_item5_unreadable_reply_to_the_dot_is_in_doubt(
    tmp_path: Path, relay: ScriptedRelay, reply: bytes
) -> None:
    config = setup(tmp_path, relay.port, EMAILS[:3])
    relay.fail("r1@example.org", Fault("end", reply, close=True, kept=True))
    run_once(config)
    state = rows(config)
    assert state["r1@example.org"][0] == "in_doubt", state
    first = relay.message_ids()["r1@example.org"]
    assert first == [state["r1@example.org"][1]]  # the relay may well have it
    assert state["r0@example.org"][0] == state["r2@example.org"][0] == "sent"
    make_due(config)
    run_once(config)  # the relay is healthy now
    assert_each_once_or_same_id(relay, config, EMAILS[:3])
    assert len(relay.message_ids()["r1@example.org"]) == 2  # re-sent, with the same Message-ID


# Every other step: a reply that is not the go-ahead is never a success nor a definite failure.
STEP_FAULTS = {
    "mail-251": Fault("mail", b"251 2.1.0 ok but not the right ok\r\n"),
    "mail-354": Fault("mail", b"354 go ahead\r\n"),
    "mail-10MB": Fault("mail", TEN_MB_LINE, close=True),
    "rcpt-252": Fault("rcpt", b"252 2.1.5 cannot verify, will try\r\n"),
    "rcpt-garbage": Fault("rcpt", b"2x0 what\r\n", close=True),
    "rcpt-10MB": Fault("rcpt", TEN_MB_LINE, close=True),
    "rcpt-torn-550": Fault("rcpt", b"550-5.1.1 no such\r\n", close=True),
    "data-torn-354": Fault("data", b"354-go\r\n", close=True),
    "data-220": Fault("data", b"220 ready\r\n"),
    "data-garbage": Fault("data", b"\xffgarbage\r\n", close=True),
}


@pytest.mark.parametrize("name", list(STEP_FAULTS))
def test_item4_unexpected_reply_before_the_dot_is_deferred(
    tmp_path: Path, relay: ScriptedRelay, name: str
) -> None:
    config = setup(tmp_path, relay.port, EMAILS[:3])
    fault = STEP_FAULTS[name]
    if fault.step == "mail":
        relay.mail_faults.append(fault)  # the first MAIL: r0's
    else:
        relay.fail("r0@example.org", fault)
    run_once(config)
    state = rows(config)
    assert state["r0@example.org"][0] == "deferred", state
    assert "r0@example.org" not in relay.message_ids()
    assert state["r1@example.org"][0] == state["r2@example.org"][0] == "sent"
    make_due(config)
    run_once(config)
    assert_each_once_or_same_id(relay, config, EMAILS[:3])


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
