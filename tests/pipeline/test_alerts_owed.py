"""Issue 12 item 6 and issue 13's address bullet: alerts owed after a poll commits are never lost,
and every address is checked by `digestd check` exactly as the mail builder will use it.

The real CLI as a subprocess (`check`, `run --once`) against a file source and aiosmtpd; the
pipeline in-process (real SQLite, real SMTP) only where an address must get past the loaders.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemonproc import daemon, wait_for
from scenes import file_smtp_scene
from smtpserver import SMTPTestServer

from digestd import pipeline
from digestd.core.model import Rule, Subscriber, SubscriberSet
from digestd.deliver.transports.smtp import SmtpMailer
from digestd.mail.render import make_environments
from digestd.pipeline import Audience, Deps, Options
from digestd.rules import matcher as index
from digestd.sources import FileSource
from digestd.store.sqlite import Store

FIXTURES = Path(__file__).parents[1] / "fixtures"
GOOD = ["alice@example.org", "bob@example.org", "carol@example.org"]
NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)

# A fault no peer can produce, injected after the poll's commit: matching alerts raises.
FAULT = """\
import runpy, sys
from digestd.rules import matcher as index
def boom(*args, **kwargs):
    raise RuntimeError("injected: the process dies after the poll's commit")
index.Matcher.match_all = boom
sys.argv = ["digestd", *sys.argv[1:]]
runpy.run_module("digestd", run_name="__main__")
"""


def write_files(
    tmp_path: Path, port: int, emails: list[str], *, sender: str = "Paper Digest <d@example.org>"
) -> Path:
    lines = ["defaults:\n  rules:\n    - min_upvotes: 0\n      alert: true\nsubscribers:"]
    lines += [f'  - email: "{e}"' for e in emails]
    return file_smtp_scene(tmp_path, port, "\n".join(lines) + "\n", sender=sender)


def digestd(config: Path, *args: str, fault: bool = False) -> subprocess.CompletedProcess[str]:
    head = ["-c", FAULT] if fault else ["-m", "digestd"]
    return subprocess.run(
        [sys.executable, *head, "--log-level", "warning", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def kinds_by_rcpt(server: SMTPTestServer) -> dict[str, list[str]]:
    """Per recipient, the Message-IDs received (`<alert.…>` or `<digest.…>`)."""
    got: dict[str, list[str]] = {}
    for message in server.received:
        (rcpt,) = message.rcpt_tos
        got.setdefault(rcpt, []).append(str(message.message["Message-ID"]))
    return got


@pytest.fixture
def smtp() -> Iterator[SMTPTestServer]:
    server = SMTPTestServer().start()
    yield server
    server.stop()


def test_item6_bad_from_is_refused_by_check_with_position(
    tmp_path: Path, smtp: SMTPTestServer
) -> None:
    bad = "Paper Digest digest@example.org"
    config = write_files(tmp_path, smtp.port, GOOD, sender=bad)
    result = digestd(config, "check")
    assert result.returncode == 2, result.stdout
    assert (
        f"{config}:9:9: delivery.from: {bad!r} is not a valid email address"
        " (expected one local@domain)"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    # `run --once` refuses the same file before it polls: nothing is recorded as seen.
    assert digestd(config, "run", "--once").returncode == 2
    assert not (tmp_path / "state.sqlite3").exists()
    assert smtp.received == []


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("\u0430lice@example.org", "is not ASCII; that needs SMTPUTF8, which digestd does not"),
        ("\u00e5@example.org", "is not ASCII; that needs SMTPUTF8, which digestd does not"),
        ("ali\u200bce@example.org", "it contains U+200B, an invisible or control character"),
    ],
)
def test_item6_non_ascii_subscriber_is_refused_by_check_with_position(
    tmp_path: Path, smtp: SMTPTestServer, address: str, why: str
) -> None:
    config = write_files(tmp_path, smtp.port, [*GOOD, address])
    result = digestd(config, "check")
    assert result.returncode == 2, result.stdout
    where = f"{tmp_path / 'subscribers.yaml'}:9:12: subscribers[3].email: {address!r}"
    (line,) = [x for x in result.stderr.splitlines() if x.startswith(where)]
    assert why in line
    assert "Traceback" not in result.stderr


def test_i13_idn_and_single_label_addresses_are_accepted_with_notes(
    tmp_path: Path, smtp: SMTPTestServer
) -> None:
    config = write_files(tmp_path, smtp.port, ["anna@bücher.de", "ops@mailhub", *GOOD])
    with config.open("a", encoding="utf-8") as f:
        f.write("admins: [root@localhost]\n")
    result = digestd(config, "check")
    assert result.returncode == 0, result.stderr
    subs = tmp_path / "subscribers.yaml"
    assert (
        f"{subs}:6:12: subscribers[0].email: sent as 'anna@xn--bcher-kva.de' (IDNA A-labels)"
    ) in result.stdout
    assert (
        f"{subs}:7:12: subscribers[1].email: warning: 'ops@mailhub' has a single-label domain:"
        " only a relay on your network can deliver it"
    ) in result.stdout
    assert f"{config}:12:10: admins[0]: warning: 'root@localhost'" in result.stdout
    # What check promised is what is sent: the IDN address as its A-labels, envelope and header.
    assert digestd(config, "run", "--once").returncode == 0
    got = kinds_by_rcpt(smtp)
    assert set(got) == {"anna@xn--bcher-kva.de", "ops@mailhub", *GOOD}
    (anna,) = [m for m in smtp.received if m.rcpt_tos == ["anna@xn--bcher-kva.de"]]
    assert anna.message["To"] == "anna@xn--bcher-kva.de"


def test_item6_exception_after_the_poll_commits_leaves_the_alerts_owed(
    tmp_path: Path, smtp: SMTPTestServer
) -> None:
    config = write_files(tmp_path, smtp.port, GOOD)
    crashed = digestd(config, "run", "--once", fault=True)
    assert crashed.returncode != 0 and "injected" in crashed.stderr
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM papers").fetchone() == (3,)  # seen, committed
    assert smtp.received == []
    again = digestd(config, "run", "--once")
    assert again.returncode == 0, again.stderr
    got = kinds_by_rcpt(smtp)
    assert set(got) == set(GOOD)
    for rcpt, ids in got.items():  # the alert, once; its papers in no digest besides
        assert len(ids) == 1 and ids[0].startswith("<alert.poll-"), (rcpt, ids)
    assert digestd(config, "run", "--once").returncode == 0
    assert len(smtp.received) == len(GOOD)


def test_item6_the_daemon_queues_owed_alerts_at_start_up(
    tmp_path: Path, smtp: SMTPTestServer
) -> None:
    config = write_files(tmp_path, smtp.port, GOOD)
    assert digestd(config, "run", "--once", fault=True).returncode != 0
    (tmp_path / "papers.json").unlink()  # the daemon's own polls fail: only start-up can send them
    log = tmp_path / "daemon.log"
    with daemon(config, log) as proc:
        wait_for(lambda: len(smtp.received) >= len(GOOD), what="the owed alerts")
        wait_for(lambda: "poll failed" in log.read_text(), what="the failed poll")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    got = kinds_by_rcpt(smtp)
    assert set(got) == set(GOOD)
    assert all(ids == [ids[0]] and ids[0].startswith("<alert.poll-1.") for ids in got.values())


def in_process(tmp_path: Path, server: SMTPTestServer, emails: list[str]) -> Deps:
    """Subscribers built directly, not loaded: the only way an address the loader refuses gets in."""
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())[:3]
    (tmp_path / "papers.json").write_text(json.dumps(items))
    rule = Rule(min_upvotes=0, alert=True)
    subs = tuple(Subscriber(email=e, rules=(rule,), schedule="0 7 * * *") for e in emails)
    return Deps(
        store=Store(tmp_path / "state.sqlite3"),
        source=FileSource(tmp_path / "papers.json"),
        mailer=SmtpMailer("127.0.0.1", server.port, security="none"),
        audience=Audience.of(SubscriberSet(subscribers=subs, file="built")),
        envs=make_environments(),
        options=Options(sender="Paper Digest <d@example.org>"),
    )


async def test_item6_one_unbuildable_address_is_its_own_recorded_error(
    tmp_path: Path, smtp: SMTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    bad = "\u0430lice@example.org"
    deps = in_process(tmp_path, smtp, [GOOD[0], bad, *GOOD[1:]])
    pipeline.register(deps, now=NOW)
    report = await pipeline.ingest(deps, now=NOW)
    assert report.ok and report.n_alerts == len(GOOD)
    later = NOW + timedelta(hours=1)
    composed = pipeline.compose(deps, now=later, once=True)
    await pipeline.deliver_due(deps, now=later, clock=lambda: later)
    got = kinds_by_rcpt(smtp)
    assert set(got) == set(GOOD)
    assert all(ids[0].startswith("<alert.") for ids in got.values())
    # Recorded where an admin looks: `digestd status` lists it as a failed message, with why.
    problems = [p for p in deps.store.status().problems if p.subscriber == bad]
    assert {(p.kind, p.state) for p in problems} == {("alert", "failed"), ("digest", "failed")}
    assert all("not ASCII" in (p.last_reply or "") for p in problems)
    assert composed.n_queued == 0
    # Its papers were not reserved: nothing is lost for it once the address is fixed.
    assert len(deps.store.papers.candidates(bad, since=NOW - timedelta(days=1))) == 3
    assert sum("cannot build" in r.message for r in caplog.records) == 2
    await deps.mailer.aclose()
    deps.store.close()


@pytest.fixture
async def owing(
    tmp_path: Path, smtp: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Deps]:
    """A store whose only poll committed its papers, then failed: its alerts are owed."""

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected after the poll's commit")

    deps = in_process(tmp_path, smtp, GOOD)
    pipeline.register(deps, now=NOW)
    with monkeypatch.context() as patch:
        patch.setattr(index.Matcher, "match_all", boom)
        with pytest.raises(RuntimeError, match="injected"):
            await pipeline.ingest(deps, now=NOW)
    assert [len(o.paper_ids) for o in deps.store.polls.owed_alerts()] == [3]
    yield deps
    await deps.mailer.aclose()
    deps.store.close()


async def test_item6_owed_alerts_expire_after_alert_ttl_into_the_digest(
    owing: Deps, smtp: SMTPTestServer
) -> None:
    late = NOW + owing.options.alert_ttl + timedelta(seconds=1)
    assert pipeline.queue_owed_alerts(owing, now=late) == 0
    assert owing.store.polls.owed_alerts() == []
    assert pipeline.compose(owing, now=late, once=True).n_queued == len(GOOD)
    await pipeline.deliver_due(owing, now=late, clock=lambda: late)
    got = kinds_by_rcpt(smtp)
    assert set(got) == set(GOOD) and all(ids[0].startswith("<digest.") for ids in got.values())


async def test_item6_owed_alerts_skip_papers_a_digest_reserved_first(
    owing: Deps, smtp: SMTPTestServer
) -> None:
    assert pipeline.compose(owing, now=NOW, once=True).n_queued == len(GOOD)
    assert pipeline.queue_owed_alerts(owing, now=NOW) == 0  # every paper went into a digest
    assert owing.store.polls.owed_alerts() == []
    await pipeline.deliver_due(owing, now=NOW, clock=lambda: NOW)
    assert sorted(r for m in smtp.received for r in m.rcpt_tos) == sorted(GOOD)


async def test_item6_owed_alerts_are_queued_once_however_often_asked(
    owing: Deps, smtp: SMTPTestServer
) -> None:
    assert pipeline.queue_owed_alerts(owing, now=NOW) == len(GOOD)
    assert pipeline.queue_owed_alerts(owing, now=NOW) == 0
    await pipeline.deliver_due(owing, now=NOW, clock=lambda: NOW)
    assert sorted(r for m in smtp.received for r in m.rcpt_tos) == sorted(GOOD)
    got = kinds_by_rcpt(smtp)
    assert all(ids[0].startswith("<alert.poll-1.") for ids in got.values())
