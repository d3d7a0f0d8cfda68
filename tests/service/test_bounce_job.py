"""The daemon's bounce job: scheduled every `bounces.check_every` when an inbox is configured, run
under the work lock; an inbox that cannot be read is logged and the others are still read."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from scenes import file_smtp_scene

from digestd.service import wiring as app
from digestd.service.bounces import BounceReader
from digestd.service.clock import utcnow
from digestd.service.daemon import Daemon
from digestd.service.metrics import Metrics
from digestd.service.reload import load_config
from digestd.store.protocols import BounceEvent
from digestd.store.sqlite import Store

SUBSCRIBERS = "subscribers:\n  - email: ada@example.org\n"


def scene(tmp_path: Path, bounces: str) -> Path:
    config = file_smtp_scene(
        tmp_path, 2525, SUBSCRIBERS, delivery="  timeout: 5s\n  verp: bounces@lab.example.org\n"
    )
    with config.open("a") as file:
        file.write(bounces)
    return config


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_job_is_scheduled_and_reads_every_inbox_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "pw").write_text("imap-secret-pw\n")
    config = load_config(
        scene(
            tmp_path,
            "bounces:\n  maildir: bounces\n  check_every: 2m\n  imap:\n    host: 127.0.0.1\n"
            f"    port: {closed_port()}\n    username: u\n    password_file: pw\n    timeout: 2s\n",
        )
    )
    deps = app.open_deps(config.settings, now=utcnow(), subscribers=config.subscribers)
    try:
        daemon = Daemon(deps, poll_every=timedelta(minutes=30), config=config)
        daemon._schedule()
        job = daemon.schedule.scheduler.get_job("bounces")
        assert job is not None and job.trigger.interval == timedelta(minutes=2)

        new = tmp_path / "bounces" / "new"
        new.mkdir(parents=True)
        (new / "1").write_bytes(
            b"From: x@example.org\r\nSubject: out of office\r\n\r\nback soon\r\n"
        )
        caplog.set_level(logging.INFO, logger="digestd")
        await job.func()  # the job as the scheduler runs it: under the work lock
        assert deps.store.bounces.counts()["ignored"] == 1
        assert "bounces not read" in caplog.text and "ConnectionRefusedError" in caplog.text
        assert "imap-secret-pw" not in caplog.text and "Traceback" not in caplog.text
    finally:
        await app.close(deps)


async def test_no_inbox_no_job(tmp_path: Path) -> None:
    config = load_config(scene(tmp_path, ""))
    deps = app.open_deps(config.settings, now=utcnow(), subscribers=config.subscribers)
    try:
        daemon = Daemon(deps, poll_every=timedelta(minutes=30), config=config)
        daemon._schedule()
        assert daemon.schedule.scheduler.get_job("bounces") is None
    finally:
        await app.close(deps)


def test_the_reader_never_shows_the_password(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("imap-secret-pw\n")
    config = load_config(
        scene(tmp_path, "bounces:\n  imap:\n    host: imap.example.org\n    username: u\n"
              "    password_file: pw\n")
    )  # fmt: skip
    reader = BounceReader(config.settings)
    assert "imap-secret-pw" not in repr(reader.inboxes) and "imap-secret-pw" not in str(
        vars(reader)
    )


def test_metrics_count_bounces_by_kind(tmp_path: Path) -> None:
    with Store(tmp_path / "state.sqlite3") as store:
        store.bounces.record(
            BounceEvent("p0", "temporary", detail="4.4.1"), at=utcnow(), suspend=None
        )
        store.bounces.record(BounceEvent("i0", "ignored", detail="x"), at=utcnow(), suspend=None)
        text = Metrics(store).render().decode()
    assert 'digestd_bounces{kind="temporary"} 1.0' in text
    assert 'digestd_bounces{kind="ignored"} 1.0' in text
    assert 'digestd_bounces{kind="complaint"} 0.0' in text
