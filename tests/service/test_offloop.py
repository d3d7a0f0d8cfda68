"""Heavy steps run off the event loop (`service/offloop.py`): the loop answers HTTP while a compose
is under way, and a stop ends a compose at a commit, losing and duplicating nothing.

Deterministic, not timed: the compose is held at a gate that only the loop can open, by answering
a request; had the compose run on the loop, the gate would never open (it fails after 10 s).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Literal

import httpx
import pytest
from daemonproc import daemon, wait_for
from scenes import file_smtp_scene
from smtpserver import SMTPTestServer

from digestd import pipeline
from digestd.core.addresses import address_key
from digestd.core.observer import Phase
from digestd.mail import linktokens
from digestd.service import health
from digestd.service import wiring as app
from digestd.service.clock import utcnow
from digestd.service.daemon import Daemon
from digestd.service.metrics import Metrics
from digestd.service.offloop import ON_LOOP_ENV, OffLoop
from digestd.service.reload import load_config
from digestd.service.web import WebServer
from digestd.store.sqlite import Store


class Gate:
    """An observer that holds the compose at its start until `opened`, noting the thread."""

    def __init__(self, *, hold_at: Phase = "match") -> None:
        self.opened = threading.Event()
        self.threads: set[int] = set()
        self.hold_at = hold_at

    def begin(self, phase: Phase, total: int | None = None) -> None:
        if phase == self.hold_at:
            self.threads.add(threading.get_ident())
            assert self.opened.wait(10), "the loop did not answer while the compose ran"

    def advance(self, phase: Phase, n: int = 1) -> None:
        pass

    def matched(self, kind: Literal["digest", "alert"], n_papers: int) -> None:
        pass

    def end(self, phase: Phase, summary: str) -> None:
        pass


def scene(tmp_path: Path, port: int, n: int) -> Path:
    """`n` subscribers registered two days ago: today's digest is owed to every one of them."""
    readers = "".join(f"  - email: reader{i}@example.org\n" for i in range(n))
    config = file_smtp_scene(
        tmp_path, port, f'defaults:\n  schedule: "0 7 * * *"\nsubscribers:\n{readers}'
    )
    with Store(tmp_path / "state.sqlite3") as store:
        emails = (f"reader{i}@example.org" for i in range(n))
        store.subscribers.register(emails, at=utcnow() - timedelta(days=2))
    return config


async def test_healthz_answers_while_a_compose_runs_in_its_own_thread(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    config = load_config(scene(tmp_path, smtp_server.port, 3))
    deps = app.open_deps(config.settings, now=utcnow(), subscribers=config.subscribers)
    daemon = Daemon(deps, poll_every=timedelta(minutes=30), config=config)
    pipeline.record_poll(deps, "file", await deps.source.fetch(now=utcnow()), now=utcnow())
    probe = health.HealthProbe(
        store=deps.store, clock=utcnow, started_at=utcnow(),
        poll_every=lambda: timedelta(minutes=30), running=lambda: True,
    )  # fmt: skip
    web = WebServer("127.0.0.1:0", health.routes(probe, daemon.metrics))
    await web.start()
    gate = Gate()
    deps.observer = gate
    try:
        job = asyncio.create_task(daemon.work_lock.run(daemon.jobs.digests))
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{web.port}/healthz", timeout=5)
        gate.opened.set()
        await job
        assert reply.status_code == 200, reply.text
        assert gate.threads and threading.get_ident() not in gate.threads
        assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == [
            f"reader{i}@example.org" for i in range(3)
        ]
    finally:
        gate.opened.set()
        await web.stop()
        await daemon.jobs.aclose()
        await app.close(deps)


async def test_a_stop_ends_the_compose_at_a_commit_and_the_next_one_finishes_it(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """Stopped while its first batch is written, the compose commits that batch (and the one
    rendered beside it), queues no more; the next compose queues the rest, none twice."""
    n = 450  # three batches of 200
    config = load_config(scene(tmp_path, smtp_server.port, n))
    deps = app.open_deps(config.settings, now=utcnow(), subscribers=config.subscribers)
    pipeline.record_poll(deps, "file", await deps.source.fetch(now=utcnow()), now=utcnow())
    stopping = False
    offloop = OffLoop(deps, stopping=lambda: stopping)
    gate = Gate(hold_at="poll")  # never held: the stop comes from the first advance instead

    def stop_at_first_write(phase: Phase, n: int = 1) -> None:
        nonlocal stopping
        stopping = True

    gate.advance = stop_at_first_write  # type: ignore[method-assign]
    deps.observer = gate
    try:
        now = utcnow()
        first = await offloop.run(lambda d: pipeline.compose(d, now=now))
        assert stopping and first.n_queued == 400
        stopping = False
        second = await offloop.run(lambda d: pipeline.compose(d, now=now))
        assert second.n_queued == n - 400
        rows = deps.store.db.conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT subscriber) FROM outbox WHERE kind = 'digest'"
        ).fetchone()
        assert tuple(rows) == (n, n)
    finally:
        await offloop.aclose()
        await app.close(deps)


async def test_the_baseline_switch_keeps_steps_on_the_loop(
    tmp_path: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DIGESTD_COMPOSE_ON_LOOP=1 (bench/web.py's baseline) runs the step on the loop's thread."""
    monkeypatch.setenv(ON_LOOP_ENV, "1")
    config = load_config(scene(tmp_path, smtp_server.port, 1))
    deps = app.open_deps(config.settings, now=utcnow(), subscribers=config.subscribers)
    offloop = OffLoop(deps, stopping=lambda: False)
    try:
        assert not offloop.threaded
        await offloop.run(lambda d: pipeline.compose(d, now=utcnow()))
        assert offloop.thread_ids == {threading.get_ident()}
    finally:
        await offloop.aclose()
        await app.close(deps)


async def test_a_one_click_unsubscribe_waits_for_the_write_lock_off_the_loop(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """Another connection (a compose's batch) holds the write lock: the POST waits for it in a
    worker thread while the loop answers /healthz, then commits once the lock is free."""
    config = load_config(scene(tmp_path, smtp_server.port, 1))
    deps = app.open_deps(config.settings, now=utcnow(), subscribers=config.subscribers)
    email = address_key("reader0@example.org")
    key = linktokens.derive_key(deps.store.secret(), "unsubscribe")
    token = linktokens.unsubscribe_token(key, deps.store.subscribers.id_of(email), email)
    probe = health.HealthProbe(
        store=deps.store, clock=utcnow, started_at=utcnow(),
        poll_every=lambda: timedelta(minutes=30), running=lambda: True,
    )  # fmt: skip
    routes = app.web_routes(deps, clock=utcnow, health=health.routes(probe, Metrics(deps.store)))
    web = WebServer("127.0.0.1:0", routes)
    await web.start()
    blocker = Store(deps.store.path)
    try:
        blocker.db.conn.execute("BEGIN IMMEDIATE")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web.port}") as client:
            post = asyncio.create_task(client.post(f"/unsubscribe/{token}", timeout=10))
            for _ in range(3):  # the POST is waiting for the lock; the loop is not
                assert (await client.get("/healthz", timeout=5)).status_code in (200, 503)
            assert not post.done() and not deps.store.subscribers.is_suppressed(email)
            blocker.db.conn.execute("COMMIT")
            assert (await post).status_code == 200
        assert deps.store.subscribers.is_suppressed(email)
    finally:
        blocker.close()
        await web.stop()
        await app.close(deps)


def test_sigterm_during_a_compose_ends_in_time_and_the_restart_sends_each_digest_once(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """The real daemon, 600 readers owed today's digest: SIGTERM as the catch-up compose starts
    ends the process within delivery.timeout (5 s), without a traceback; the next start composes
    what is left, and every reader gets exactly one digest."""
    n = 600
    config = scene(tmp_path, smtp_server.port, n)
    log = tmp_path / "first.log"
    with daemon(config, log) as proc:
        wait_for(lambda: "catch-up sending late digests" in log.read_text(), what="the catch-up")
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
        assert time.monotonic() - start < 5 + 1.5, log.read_text()
    assert "Traceback" not in log.read_text()
    log = tmp_path / "again.log"
    with daemon(config, log) as proc:
        wait_for(lambda: len(smtp_server.received) >= n, 60, "every digest")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert "Traceback" not in log.read_text()
    to = sorted(r.rcpt_tos[0] for r in smtp_server.received)
    assert to == sorted(f"reader{i}@example.org" for i in range(n))
