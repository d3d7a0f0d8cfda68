"""Issue 18: three `digestd run` on one PostgreSQL database, one relay, SIGKILL at random.

The relay is aiosmtpd in this process; the state is a schema of its own on the machine's
PostgreSQL (tests/pgstate.py). Every recipient is owed two alerts (one per wave of new papers; the
second wave arrives while the kills go on, so a leader elected after a kill must poll it). Every
few seconds one instance is SIGKILLed (every other kill: the poll leader) and restarted under its
name. Afterwards, per recipient: exactly the Message-IDs the outbox holds for them (nothing lost,
nothing invented; a duplicate has the same Message-ID), every row sent; and the poll leadership
moved to a live instance within one poll interval of each leader's death.

DIGESTD_MULTI_RECIPIENTS sets the size (default 2,000 in CI; the full test: 20,000) and
DIGESTD_MULTI_KILLS the number of kills (default 8; the full test: 30).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from daemonproc import item
from pgstate import pg_schema
from scenes import file_smtp_scene
from smtpserver import SMTPTestServer

from digestd.store.leadership import lock_key

RECIPIENTS = int(os.environ.get("DIGESTD_MULTI_RECIPIENTS", "2000"))
# Then the fleet finishes undisturbed: a restart costs seconds of start-up, so kills set the pace.
KILLS = int(os.environ.get("DIGESTD_MULTI_KILLS", "8"))
NAMES = ("i0", "i1", "i2")
POLL_EVERY = 2.0  # seconds: leadership must move within one
LEASE = "3s"
SOURCE = "file"


def scene(tmp_path: Path, port: int, url: str) -> Path:
    lines = ["defaults:\n  rules:\n    - min_upvotes: 0\n      alert: true\nsubscribers:"]
    lines += [f"  - email: r{i}@example.org" for i in range(RECIPIENTS)]
    config = file_smtp_scene(
        tmp_path, port, "\n".join(lines) + "\n",
        source=f", poll_every: {POLL_EVERY:g}s", delivery="  timeout: 5s\n  connections: 2\n",
    )  # fmt: skip
    text = config.read_text().replace("state: state.sqlite3", f'state: "{url}"')
    config.write_text(text + f"lease: {LEASE}\n")
    return config


class Fleet:
    """The three daemons: started, killed and restarted under their names, logs appended."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        cmd = [sys.executable, "-m", "digestd", "--config", str(self.config), "run"]
        with (self.config.parent / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=log,
                env={**os.environ, "DIGESTD_INSTANCE": name},
            )  # fmt: skip

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def wait_up(self, db: psycopg.Connection[tuple[object, ...]]) -> None:
        """Until each running daemon has written its row (it is past its start-up)."""
        deadline = time.monotonic() + 60
        while True:
            pids = {int(str(r[0])) for r in db.execute("SELECT pid FROM instances").fetchall()}
            if all(p.pid in pids for p in self.procs.values()) or time.monotonic() > deadline:
                return
            time.sleep(0.1)

    def stop_all(self) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes

    def logs(self) -> str:
        return "\n".join(
            f"== {n}\n" + (self.config.parent / f"{n}.log").read_text()[-3000:] for n in NAMES
        )


@contextmanager
def fleet(config: Path) -> Iterator[Fleet]:
    ships = Fleet(config)
    try:
        yield ships
    finally:
        for proc in ships.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def leader(db: psycopg.Connection[tuple[object, ...]]) -> str | None:
    """The instance holding the source's advisory lock now (its leadership connection names
    it in pg_stat_activity), or None."""
    schema = str(db.execute("SELECT current_schema()").fetchone()[0])  # type: ignore[index]
    database = str(db.execute("SELECT current_database()").fetchone()[0])  # type: ignore[index]
    key = lock_key(f"{database}/{schema}", SOURCE) & 0xFFFFFFFFFFFFFFFF
    row = db.execute(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s"
        " AND l.objsubid = 1",
        (key >> 32, key & 0xFFFFFFFF),
    ).fetchone()
    return None if row is None else str(row[0]).removeprefix("digestd leader ")


def current_leader(db: psycopg.Connection[tuple[object, ...]]) -> str | None:
    """The leader, waited for a while (one may be being elected)."""
    deadline = time.time() + 3 * POLL_EVERY
    while time.time() < deadline:
        if (name := leader(db)) is not None:
            return name
        time.sleep(0.05)
    return None


def instances(db: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    try:
        return [str(r[0]) for r in db.execute("SELECT name FROM instances").fetchall()]
    except psycopg.errors.UndefinedTable:
        return []


def outbox(db: psycopg.Connection[tuple[object, ...]]) -> list[tuple[str, str, str]]:
    try:
        rows = db.execute("SELECT subscriber, message_id, state FROM outbox").fetchall()
    except psycopg.errors.UndefinedTable:
        return []
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def second_wave(tmp_path: Path) -> None:
    """Three papers no poll has seen: the next poll owes everyone a second alert."""
    items = json.loads((tmp_path / "papers.json").read_text())
    items += [item(f"2512.{90001 + i}", f"Second wave paper {i}") for i in range(3)]
    (tmp_path / "papers.json").write_text(json.dumps(items))


@pytest.mark.timeout(int(300 + RECIPIENTS * 0.08))
def test_three_daemons_killed_at_random_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("DIGESTD_MULTI_SEED", "18")))
    smtp = SMTPTestServer().start()
    takeovers: list[float] = []
    done_at = 0.0
    kills = leader_kills = 0
    try:
        with pg_schema("pgmulti") as url, fleet(scene(tmp_path, smtp.port, url)) as ships:
            db = psycopg.connect(url, autocommit=True)
            for name in NAMES:
                ships.start(name)
            up = time.monotonic() + 60
            while len(instances(db)) < len(NAMES):
                assert time.monotonic() < up, ships.logs()
                time.sleep(0.1)
            waved = False
            started = time.monotonic()
            deadline = time.monotonic() + 200 + RECIPIENTS * 0.06
            while time.monotonic() < deadline:
                time.sleep(rng.uniform(1.5, 3.0))
                rows = outbox(db)
                if not waved and (len(smtp.received) >= RECIPIENTS // 3 or kills >= KILLS // 2):
                    second_wave(tmp_path)
                    waved = True
                if waved and len(rows) >= 2 * RECIPIENTS and all(r[2] == "sent" for r in rows):
                    break
                if kills >= KILLS:
                    continue
                # The last one restarted is up again first: a dead leader always leaves a live
                # instance to take over (with 20,000 subscribers a start takes seconds).
                ships.wait_up(db)
                led = current_leader(db) if kills % 2 == 0 else leader(db)
                victim = led if led and kills % 2 == 0 else rng.choice(NAMES)
                killed_at = time.time()
                ships.kill(victim)
                kills += 1
                if victim == led:
                    leader_kills += 1
                    takeovers.append(took_over(db, victim, killed_at))
                time.sleep(rng.uniform(0.2, 1.0))
                ships.start(victim)
            else:
                pytest.fail(f"not all delivered in time: {len(outbox(db))} rows\n{ships.logs()}")
            rows = outbox(db)
            done_at = time.monotonic() - started
            ships.wait_up(db)  # a daemon still starting has no SIGTERM handler yet
            codes = ships.stop_all()
            db.close()
        assert all(code == 0 for code in codes.values()), (codes, ships.logs())
    finally:
        smtp.stop()
    got: dict[str, set[str]] = {}
    copies = 0
    for message in smtp.received:
        (rcpt,) = message.rcpt_tos
        got.setdefault(rcpt, set()).add(str(message.message["Message-ID"]))
        copies += 1
    owed: dict[str, set[str]] = {}
    for subscriber, message_id, _ in rows:
        owed.setdefault(subscriber, set()).add(message_id)
    assert len(owed) == RECIPIENTS and all(len(ids) == 2 for ids in owed.values())
    assert got == owed, "a message lost, or a resend with another Message-ID"
    assert leader_kills >= 2, (kills, leader_kills)
    assert max(takeovers) <= POLL_EVERY + 1.5, takeovers
    print(
        f"recipients={RECIPIENTS} seconds={done_at:.1f} kills={kills} leader_kills={leader_kills}"
        f" duplicates={copies - 2 * RECIPIENTS} takeovers={[round(t, 2) for t in takeovers]}"
    )


def took_over(db: psycopg.Connection[tuple[object, ...]], dead: str, killed_at: float) -> float:
    """Seconds from the leader's death until another instance holds the source's lock."""
    while time.time() < killed_at + 4 * POLL_EVERY:
        if leader(db) not in (None, dead):
            return time.time() - killed_at
        time.sleep(0.02)
    return float("inf")
