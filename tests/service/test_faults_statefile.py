"""Fault suite: the state file under attack — two runs on it, swapped or deleted under the daemon,
read-only, full. The real CLI and daemon as subprocesses against aiosmtpd; outcomes per recipient."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from daemonproc import daemon, http_get, http_port, item, wait_for
from httpserver import LocalHTTPServer
from smtpserver import SMTPTestServer
from test_crash import setup
from test_delivery_faults import per_recipient
from test_service import Listing, to, write_config

from digestd.cli import main as cli
from digestd.store.runlock import EXIT_LOCKED
from digestd.store.sqlite import Database, Store

pytestmark = pytest.mark.timeout(60)


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


def test_item8_two_run_once_at_the_same_time_send_each_digest_once(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    recipients = 150
    smtp_server.handler.stall_data = 0.01  # ~1.5 s of sending: the two runs overlap for sure
    config = setup(tmp_path, smtp_server.port, recipients=recipients)
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


# -- item 7: the state file deleted or replaced under the running daemon ----------------------

OPS = "ops@example.org"
READERS = ("alice@example.org", "bob@example.org")


def scene(tmp: Path, http_server: LocalHTTPServer, smtp_port: int) -> tuple[Listing, Path, Path]:
    """The source lists paper 1 (both readers want alerts); (listing, config, daemon log)."""
    listing = Listing(http_server, [item("2611.00001", "KV cache tricks")])
    extra = f"http:\n  listen: 127.0.0.1:0\nadmins: [{OPS}]\n"
    config = write_config(tmp, source=http_server.url, smtp_port=smtp_port, extra=extra)
    return listing, config, tmp / "daemon.log"


def first_alerts_then_lose_the_file(
    tmp: Path, server: SMTPTestServer, log: Path, lose: Callable[[Path], None]
) -> int:
    """The daemon alerted both readers of paper 1; `lose` the file; /healthz says so within a
    tick. Returns the HTTP port."""
    port = http_port(log)
    wait_for(lambda: all(to(server, r) for r in READERS), what="for the first alerts")
    wait_for(lambda: http_get(port, "/healthz")[0] == 200, what="for health")
    lose(tmp / "var" / "digestd.sqlite3")
    wait_for(lambda: http_get(port, "/healthz")[0] == 503, timeout=5, what="for 503")
    return port


def nothing_more_is_done(log: Path, http_server: LocalHTTPServer, server: SMTPTestServer) -> None:
    """Several poll ticks go by refused: no poll reaches the source, no reader gets mail."""
    polls = len(http_server.requests_to("/api/daily_papers"))
    skipped = log.read_text().count("job skipped")
    wait_for(lambda: log.read_text().count("job skipped") >= skipped + 3, what="for 3 ticks")
    assert len(http_server.requests_to("/api/daily_papers")) == polls
    assert all(len(to(server, r)) == 1 for r in READERS)


def each_paper_once(server: SMTPTestServer) -> None:
    for reader in READERS:
        got = to(server, reader)
        assert len(got) == 2, (reader, [m["Subject"] for m in got])
        assert len({str(m["Message-ID"]) for m in got}) == 2


def test_item7_deleted_state_file_stops_work_alerts_and_is_rescued(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    listing, config, log = scene(tmp_path, http_server, smtp_server.port)
    with daemon(config, log, args=("--log-level", "debug")) as proc:
        port = first_alerts_then_lose_the_file(tmp_path, smtp_server, log, Path.unlink)
        reasons = json.loads(http_get(port, "/healthz")[1])["reasons"]
        assert "was deleted" in reasons[0], reasons
        wait_for(lambda: to(smtp_server, OPS), what="for the admin alert")
        listing.items.append(item("2611.00002", "More KV cache tricks"))
        nothing_more_is_done(log, http_server, smtp_server)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    (alert,) = to(smtp_server, OPS)
    assert "PROBLEM: the state file" in str(alert["Subject"])
    assert "was deleted" in alert.get_body(("plain",)).get_content()
    # The daemon saved what it had; put back, the next start goes on where it stopped.
    (rescued,) = (tmp_path / "var").glob("digestd.sqlite3.rescued-*")
    rescued.rename(tmp_path / "var" / "digestd.sqlite3")
    with daemon(config, log) as proc:
        wait_for(lambda: all(len(to(smtp_server, r)) == 2 for r in READERS), what="paper 2")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    each_paper_once(smtp_server)
    assert len(to(smtp_server, OPS)) == 1


def test_item7_replaced_state_file_stops_work_until_the_original_is_back(
    tmp_path: Path, http_server: LocalHTTPServer, smtp_server: SMTPTestServer
) -> None:
    listing, config, log = scene(tmp_path, http_server, smtp_server.port)
    aside = tmp_path / "var" / "moved-away.sqlite3"

    def replace(state: Path) -> None:
        state.rename(aside)
        sqlite3.connect(state).close()  # an empty database under the old name

    with daemon(config, log, args=("--log-level", "debug")) as proc:
        port = first_alerts_then_lose_the_file(tmp_path, smtp_server, log, replace)
        reasons = json.loads(http_get(port, "/healthz")[1])["reasons"]
        assert "was replaced" in reasons[0], reasons
        listing.items.append(item("2611.00002", "More KV cache tricks"))
        nothing_more_is_done(log, http_server, smtp_server)
        wait_for(lambda: to(smtp_server, OPS), what="for the admin alert")
        aside.rename(tmp_path / "var" / "digestd.sqlite3")  # the original is back: work resumes
        wait_for(lambda: all(len(to(smtp_server, r)) == 2 for r in READERS), what="paper 2")
        wait_for(lambda: http_get(port, "/healthz")[0] == 200, what="for health")
        wait_for(lambda: len(to(smtp_server, OPS)) == 2, what="for the recovery mail")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    each_paper_once(smtp_server)
    problem, recovered = to(smtp_server, OPS)
    assert "was replaced" in problem.get_body(("plain",)).get_content()
    assert "RECOVERED" in str(recovered["Subject"])


# -- item 11: a read-only state file, a full disk ----------------------------------------------


def as_unprivileged(cmd: list[str]) -> list[str]:
    """`cmd` without root's power to write any file (CAP_DAC_OVERRIDE), when run as root."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only file is writable")
    return ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", *cmd]


def test_item11_read_only_state_file_gives_one_clear_line_and_fails(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    config = setup(tmp_path, smtp_server.port, recipients=3)
    state = tmp_path / "state.sqlite3"
    Store(state).close()
    state.chmod(0o444)
    digestd = as_unprivileged([sys.executable, "-m", "digestd", "--config", str(config)])
    for command in (["check"], ["run", "--once"], ["unsubscribe", "c1@example.org"]):
        done = subprocess.run([*digestd, *command], capture_output=True, text=True, timeout=30)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"digestd: the state file {state}: attempt to write a readonly"), (
            line
        )
        assert "writable by the user digestd runs as" in line
    assert smtp_server.received == []
    # Reading needs no write: `status` still shows what the file holds.
    done = subprocess.run([*digestd, "status"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "messages:    none" in done.stdout, done
    # A read-only directory: not even the run lock can be made there.
    state.chmod(0o644)
    Path(f"{state}.lock").unlink()  # left by the runs above
    tmp_path.chmod(0o555)
    try:
        done = subprocess.run([*digestd, "run", "--once"], capture_output=True, text=True)
    finally:
        tmp_path.chmod(0o755)
    assert done.returncode == 1, done
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"digestd: the run lock {state}.lock: Permission denied"), line


def test_item11_full_disk_gives_one_clear_line_and_loses_nothing(
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No peer fills the disk on cue: SQLite's own page limit gives the very error (SQLITE_FULL)."""
    config = setup(tmp_path, smtp_server.port, recipients=40)
    Store(tmp_path / "state.sqlite3").close()
    configure = Database._configure

    def small_disk(db: Database) -> None:
        configure(db)
        pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
        db.conn.execute(f"PRAGMA max_page_count = {pages + 1}")

    monkeypatch.setattr(Database, "_configure", small_disk)
    assert cli.main(["--config", str(config), "run", "--once"]) == 1
    err = capsys.readouterr().err
    assert "digestd: the state file" in err and "database or disk is full" in err, err
    assert "free space" in err and "Traceback" not in err
    monkeypatch.undo()
    again = finish(run_once(config))  # space again: every reader gets the digest, once
    assert again[0] == 0, again
    got = per_recipient(smtp_server)
    assert len(got) == 40 and all(len(ids) == 1 for ids in got.values())


def test_item8_a_killed_holder_leaves_no_stale_lock(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.handler.stall_data = 0.05  # the first run is still sending when it is killed
    config = setup(tmp_path, smtp_server.port, recipients=60)
    lock = tmp_path / "state.sqlite3.lock"
    first = run_once(config)
    wait_for(lambda: len(smtp_server.received) >= 5, what="for the first run to send")
    assert lock.read_text().strip() == str(first.pid)
    first.send_signal(signal.SIGKILL)
    finish(first)
    again = finish(run_once(config))
    assert again[0] == 0, again
    got = per_recipient(smtp_server)
    assert len(got) == 60 and all(len(set(ids)) == 1 for ids in got.values())


def test_item8_run_once_beside_the_daemon_is_refused(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    config = setup(tmp_path, smtp_server.port, recipients=2)
    log = tmp_path / "daemon.log"
    with daemon(config, log) as proc:
        wait_for(lambda: "started subscribers=" in log.read_text(), what="for the daemon")
        code, _, err = finish(run_once(config))
        assert code == EXIT_LOCKED and f"(pid {proc.pid})" in err, err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
