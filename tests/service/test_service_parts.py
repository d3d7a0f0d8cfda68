"""The service's parts in-process: sd_notify framing, the alert state machine on a real store,
health and status text, progress output, reload diffs and the settings they validate."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from digestd.cli.progress import PlainProgress, RichProgress, make_progress
from digestd.config.settings import load_settings
from digestd.core.errors import ConfigError
from digestd.core.model import Outcome
from digestd.service.admin_alerts import AdminAlerts, AlertPolicy
from digestd.service.health import HealthProbe, status_line
from digestd.service.reload import load_config
from digestd.service.sdnotify import Notifier
from digestd.store.protocols import AlertState
from digestd.store.sqlite import Store

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


class RecordingMailer:
    """A Mailer that records and answers with a scripted outcome."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []
        self.outcome = Outcome("sent", 250, "ok")

    async def send(
        self, sender: str, recipient: str, data: bytes, *, canonical: bool = False
    ) -> Outcome:
        self.sent.append((sender, recipient, data))
        return self.outcome

    async def aclose(self) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "s.db")


# sd_notify -----------------------------------------------------------------------------------


def test_notifier_is_a_no_op_without_a_socket() -> None:
    n = Notifier({})
    assert not n.enabled and not n.ready("x") and n.watchdog_interval() is None


def test_notifier_frames_fields_and_refuses_forged_lines(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        n = Notifier({"NOTIFY_SOCKET": str(path)})
        assert n.status("ok\nREADY=1")
        assert sock.recv(100) == b"STATUS=ok READY=1"
        assert n.reloading()
        fields = sock.recv(200).decode().splitlines()
        assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=")
        n.close()
    finally:
        sock.close()
    assert not Notifier({"NOTIFY_SOCKET": str(path)}).ready("gone")  # logged, not raised


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], expected: float | None
) -> None:
    assert Notifier(env).watchdog_interval() == expected


# admin alerts --------------------------------------------------------------------------------

POLICY = AlertPolicy(
    admins=("ops@example.org", "oncall@example.org"),
    source_down_after=timedelta(hours=2),
    delivery_failures=3,
    sender="Paper Digest <digest@example.org>",
)


async def test_source_alert_once_per_outage_and_once_on_recovery(store: Store) -> None:
    mailer = RecordingMailer()
    alerts = AdminAlerts(store, POLICY, lambda: T0)
    store.polls.record("hf", at=T0, ok=True)
    for minutes in range(30, 300, 30):  # fails from T0+30m on
        at = T0 + timedelta(minutes=minutes)
        store.polls.record("hf", at=at, ok=False, error="HTTP 500")
        await alerts.check(mailer, now=at)
    assert len(mailer.sent) == 2  # one mail, to each admin, once past 2 h
    assert b"PROBLEM: the paper source keeps failing" in mailer.sent[0][2]
    assert b"HTTP 500" in mailer.sent[0][2]
    store.polls.record("hf", at=T0 + timedelta(hours=5), ok=True)
    await alerts.check(mailer, now=T0 + timedelta(hours=5))
    await alerts.check(mailer, now=T0 + timedelta(hours=6))
    assert len(mailer.sent) == 4 and b"RECOVERED" in mailer.sent[-1][2]


async def test_a_lost_alert_is_retried_and_a_restart_remembers(store: Store) -> None:
    mailer = RecordingMailer()
    mailer.outcome = Outcome("transient", None, "connect: refused")
    store.polls.record("hf", at=T0, ok=False, error="timeout")
    now = T0 + timedelta(hours=3)
    await AdminAlerts(store, POLICY, lambda: now).check(mailer, now=now)
    assert store.alerts.state("source") == AlertState(
        "source", firing=True, notified=False, since=T0, detail="timeout"
    )
    mailer.outcome = Outcome("sent", 250, "ok")
    await AdminAlerts(store, POLICY, lambda: now).check(mailer, now=now)  # a new process
    await AdminAlerts(store, POLICY, lambda: now).check(mailer, now=now)
    assert len(mailer.sent) == 4  # 2 failed attempts, then 2 delivered, then nothing more
    assert store.alerts.state("source").notified


async def test_delivery_alert_after_a_streak_of_failures(store: Store) -> None:
    mailer = RecordingMailer()
    alerts = AdminAlerts(store, POLICY, lambda: T0)
    for _ in range(2):
        alerts.record(Outcome("transient", 421, "try later"))
    await alerts.check(mailer, now=T0)
    assert mailer.sent == []
    alerts.record(Outcome("permanent", 554, "rejected"))
    await alerts.check(mailer, now=T0)
    await alerts.check(mailer, now=T0)
    assert len(mailer.sent) == 2 and b"554 rejected" in mailer.sent[0][2]
    assert AdminAlerts(store, POLICY, lambda: T0)._streak == 3  # kept in the store
    alerts.record(Outcome("sent", 250, "ok"))
    await alerts.check(mailer, now=T0)
    assert (
        len(mailer.sent) == 4 and b"RECOVERED: the relay accepts mail again" in mailer.sent[-1][2]
    )


async def test_without_admins_nothing_is_sent_or_owed(store: Store) -> None:
    mailer = RecordingMailer()
    alerts = AdminAlerts(store, AlertPolicy(delivery_failures=1), lambda: T0)
    alerts.record(Outcome("transient", None, "refused"))
    await alerts.check(mailer, now=T0)
    assert mailer.sent == [] and store.alerts.state("delivery").notified


# store additions -----------------------------------------------------------------------------


def test_expire_except_drops_unsent_mail_of_removed_subscribers(store: Store) -> None:
    for who in ("a@example.org", "b@example.org"):
        store.outbox.enqueue(
            subscriber=who, kind="digest", period="p", message_id=f"<{who}>",
            sender="d@example.org", data=b"x", paper_ids=["1"], at=T0,
        )  # fmt: skip
    assert store.outbox.expire_except(["A@example.org"], at=T0, reason="subscriber removed") == 1
    assert [r.subscriber for r in store.outbox.claim_due(now=T0)] == ["a@example.org"]
    assert store.papers.candidates("b@example.org", since=T0) == []  # no paper stored; ledger freed
    assert store.status().outbox["expired"] == 1


def test_source_down_since_is_the_first_failure_after_the_last_success(store: Store) -> None:
    assert store.polls.down_since() is None
    store.polls.record("hf", at=T0, ok=False, error="x")
    assert store.polls.down_since() == T0
    store.polls.record("hf", at=T0 + timedelta(hours=1), ok=True)
    assert store.polls.down_since() is None
    store.polls.record("hf", at=T0 + timedelta(hours=2), ok=False, error="x")
    store.polls.record("hf", at=T0 + timedelta(hours=3), ok=False, error="x")
    assert store.polls.down_since() == T0 + timedelta(hours=2)


# health and status ---------------------------------------------------------------------------


def test_status_line_and_health_reasons(store: Store) -> None:
    now = T0 + timedelta(minutes=2)
    assert status_line(store, now=now) == "not polled yet, 0 papers, 0 queued"
    store.polls.record("hf", at=T0, ok=True)
    assert status_line(store, now=now) == "polled 2 min ago, 0 papers, 0 queued"
    probe = HealthProbe(store, lambda: now, T0, lambda: timedelta(seconds=30), lambda: True)
    assert probe.problems() == ["last successful poll 2 min ago (limit 90 s)"]
    probe.poll_every = lambda: timedelta(minutes=30)
    assert probe.problems() == []
    probe.running = lambda: False
    assert "not running" in probe.problems()[0]
    store.polls.record("hf", at=now, ok=False, error="x")
    assert status_line(store, now=now).startswith("poll failing since 0 s ago")


# progress ------------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_on_a_terminal_and_lines_elsewhere() -> None:
    assert isinstance(make_progress(io.StringIO()), PlainProgress)
    out = FakeTerminal()
    bars = make_progress(out)
    assert isinstance(bars, RichProgress)
    bars.begin("send", 3)
    bars.advance("send", 3)
    bars.end("send", "sent 3, deferred 0, failed 0")
    bars.close()
    assert "sending" in out.getvalue() and "3/3" in out.getvalue()


def test_item1_sources_polled_side_by_side_each_end_their_own_bar() -> None:
    bars = RichProgress(FakeTerminal())
    bars.begin("poll")
    bars.begin("poll")  # the second source starts before the first is stored
    bars.end("poll", "10 papers, 2 new")
    bars.end("poll", "failed: deadline")
    assert [t.finished for t in bars.progress.tasks] == [True, True]
    assert [t.fields["summary"] for t in bars.progress.tasks] == [
        "10 papers, 2 new",
        "failed: deadline",
    ]
    bars.close()
    lines = PlainProgress(io.StringIO())
    lines.begin("poll")
    lines.begin("poll")
    lines.end("poll", "a")
    lines.end("poll", "b")
    assert lines.out.getvalue().count(" s\n") == 2  # each source's line has its time


# settings and reload -------------------------------------------------------------------------


def test_admins_and_alerts_are_validated_with_positions(tmp_path: Path) -> None:
    config = tmp_path / "d.yaml"
    config.write_text("admins:\n  - ops@example.org\n  - nope\nalerts:\n  delivery_failures: 0\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    text = [str(p) for p in caught.value.problems]
    assert any(":3:5: admins[1]:" in t and "not a valid email" in t for t in text), text
    assert any(":5:22: alerts.delivery_failures:" in t for t in text), text


def test_load_config_refuses_a_broken_subscribers_file(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").write_text("subscribers: s.yaml\n")
    (tmp_path / "s.yaml").write_text("subscribers:\n  - email: a@example.org\n    bogus: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "d.yaml")
    assert str(caught.value.problems[0]).startswith(f"{tmp_path / 's.yaml'}:3:5:")
    (tmp_path / "s.yaml").unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "d.yaml")


def test_idle_memory_bench_prints_one_json_line() -> None:
    bench = Path(__file__).resolve().parents[2] / "bench" / "idle_memory.py"
    result = subprocess.run(
        [sys.executable, str(bench), "--subscribers", "20", "--runs", "1", "--settle", "0.1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    figures = json.loads(line)
    assert figures["daemon_rss_mib"] > figures["baseline_rss_mib"] > 0


async def test_admin_alerts_are_signed_like_the_digests(store: Store) -> None:
    mailer = RecordingMailer()
    policy = replace(POLICY, sign=lambda data: b"DKIM-Signature: v=1; test\r\n" + data)
    store.polls.record("hf", at=T0, ok=False, error="HTTP 500")
    await AdminAlerts(store, policy, lambda: T0).check(mailer, now=T0 + timedelta(hours=3))
    assert len(mailer.sent) == 2
    assert all(data.startswith(b"DKIM-Signature: v=1; test\r\nFrom:") for *_, data in mailer.sent)
