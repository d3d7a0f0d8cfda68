"""kill -9 at random points of a real `digestd run --once` to 2,000 recipients, restarted until done.

The relay is aiosmtpd in this process. Afterwards, per recipient: at least one copy (nothing lost);
more than one only with one and the same Message-ID, and no more duplicates in all than messages that
could have been in a relay's hands at a kill (one per connection per kill).

DIGESTD_CRASH_KILLS sets the number of kills (default 5 in CI; run with 20 or more for the full test).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from smtpserver import SMTPTestServer

FIXTURES = Path(__file__).parent / "fixtures"
RECIPIENTS = 2000
CONNECTIONS = 2
KILLS = int(os.environ.get("DIGESTD_CRASH_KILLS", "5"))


def setup(tmp_path: Path, port: int, recipients: int = RECIPIENTS) -> Path:
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())[:3]
    (tmp_path / "papers.json").write_text(json.dumps(items))
    lines = ["defaults:\n  max_papers: 3\nsubscribers:"]
    lines += [f"  - email: c{i}@example.org" for i in range(recipients)]
    (tmp_path / "subscribers.yaml").write_text("\n".join(lines) + "\n")
    config = tmp_path / "digestd.yaml"
    config.write_text(
        f"""\
source: {{kind: file, url: papers.json}}
state: state.sqlite3
delivery:
  kind: smtp
  host: 127.0.0.1
  port: {port}
  security: none
  timeout: 5s
  connections: {CONNECTIONS}
  from: "Paper Digest <digest@example.org>"
subscribers: subscribers.yaml
lookback: 3650d
"""
    )
    return config


def start(config: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "digestd", "--log-level", "warning", "--config", str(config)]
    with (config.parent / "digestd.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen([*cmd, "run", "--once"], stdout=subprocess.DEVNULL, stderr=log)


def kill_somewhere(
    proc: subprocess.Popen[bytes], server: SMTPTestServer, rng: random.Random
) -> bool:
    """SIGKILL while composing (by time) or while delivering (after some messages); False if it ended."""
    if rng.random() < 0.25:
        deadline = time.monotonic() + rng.uniform(0.2, 1.5)
        target = None
    else:
        deadline = time.monotonic() + 30
        target = len(server.received) + rng.randint(1, RECIPIENTS // (KILLS + 1))
    while proc.poll() is None:
        if time.monotonic() >= deadline or (target and len(server.received) >= target):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    return False


def sent_rows(state: Path) -> dict[str, int]:
    with sqlite3.connect(state) as db:
        return dict(db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())


@pytest.mark.timeout(300)
def test_kill_9_anywhere_loses_nothing_and_duplicates_only_in_doubt(tmp_path: Path) -> None:
    server = SMTPTestServer().start()
    try:
        config = setup(tmp_path, server.port)
        rng = random.Random(int(os.environ.get("DIGESTD_CRASH_SEED", "4")))
        kills = 0
        for _ in range(KILLS * 3):  # a run may finish before its kill lands
            if kills >= KILLS:
                break
            proc = start(config)
            if kill_somewhere(proc, server, rng):
                kills += 1
            else:
                assert proc.returncode == 0, (tmp_path / "digestd.log").read_text()
        final = start(config)
        assert final.wait(timeout=120) == 0, (tmp_path / "digestd.log").read_text()
    finally:
        server.stop()
    by_rcpt: dict[str, list[str]] = {}
    for got in server.received:
        (rcpt,) = got.rcpt_tos
        by_rcpt.setdefault(rcpt, []).append(str(got.message["Message-ID"]))
    assert len(by_rcpt) == RECIPIENTS, "lost digests"
    duplicated = {r: ids for r, ids in by_rcpt.items() if len(ids) > 1}
    assert all(len(set(ids)) == 1 for ids in duplicated.values()), "a resend changed Message-ID"
    extra = sum(len(ids) - 1 for ids in duplicated.values())
    assert extra <= kills * CONNECTIONS
    states = sent_rows(tmp_path / "state.sqlite3")
    assert states.get("sent") == RECIPIENTS
    assert not {"queued", "sending", "deferred", "in_doubt", "failed"} & set(states)
    print(f"kills={kills} duplicates={extra} received={len(server.received)}")
