"""Fault suite: the state file under attack — two runs on it, swapped or deleted under the daemon,
read-only, full. The real CLI and daemon as subprocesses against aiosmtpd; outcomes per recipient."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from smtpserver import SMTPTestServer

from digestd.runlock import EXIT_LOCKED

pytestmark = pytest.mark.timeout(60)

FIXTURES = Path(__file__).parent / "fixtures"


def write_setup(tmp: Path, port: int, recipients: int, *, extra: str = "") -> Path:
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())[:3]
    (tmp / "papers.json").write_text(json.dumps(items))
    lines = ["defaults:\n  max_papers: 3\nsubscribers:"]
    lines += [f"  - email: r{i}@example.org" for i in range(recipients)]
    (tmp / "subscribers.yaml").write_text("\n".join(lines) + "\n")
    config = tmp / "digestd.yaml"
    config.write_text(
        f"""\
source: {{kind: file, url: papers.json}}
state: var/state.sqlite3
delivery:
  kind: smtp
  host: 127.0.0.1
  port: {port}
  security: none
  timeout: 5s
  from: "Paper Digest <digest@example.org>"
subscribers: subscribers.yaml
lookback: 3650d
{extra}"""
    )
    return config


def run_once(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "digestd", "--config", str(config), *args, "run", "--once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=50)
    return proc.returncode, out, err


def per_recipient(server: SMTPTestServer) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {}
    for received in server.received:
        (rcpt,) = received.rcpt_tos
        got.setdefault(rcpt, []).append(str(received.message["Message-ID"]))
    return got


def test_item8_two_run_once_at_the_same_time_send_each_digest_once(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    recipients = 150
    smtp_server.handler.stall_data = 0.01  # ~1.5 s of sending: the two runs overlap for sure
    config = write_setup(tmp_path, smtp_server.port, recipients)
    first, second = run_once(config), run_once(config)
    results = [finish(p) for p in (first, second)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, EXIT_LOCKED], results
    _, _, refused = next(r for r in results if r[0] == EXIT_LOCKED)
    assert "in use by another digestd run (pid " in refused, refused
    assert "Traceback" not in refused
    got = per_recipient(smtp_server)
    assert len(got) == recipients, "lost digests"
    assert Counter(len(ids) for ids in got.values()) == {1: recipients}, "duplicates"
    # The lock went with its holder: the next run takes it and finds nothing more to send.
    again = finish(run_once(config))
    assert again[0] == 0, again
    assert len(smtp_server.received) == recipients
