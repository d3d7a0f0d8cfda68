"""Delivery under faults: the real pipeline, a real SQLite store and a real aiosmtpd relay that misbehaves.

Every test counts what the relay received per recipient: nothing lost, nothing twice unless the
message was in the relay's hands when the connection died, and then with the same Message-ID.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from smtpserver import SMTPTestServer

from digestd import pipeline
from digestd.cli.main import main as cli_main
from digestd.core.model import Outcome
from digestd.deliver.drain import DeliverReport, _Claimer, _Committer, suspend_after
from digestd.deliver.transports.pool import MailerPool, RateLimiter
from digestd.deliver.transports.smtp import SmtpMailer
from digestd.mail.render import make_environments
from digestd.pipeline import Audience, Deps, Options
from digestd.rules.subscribers import load_subscribers
from digestd.sources import FileSource
from digestd.store.sqlite import Store
from digestd.store.sqlite.outbox import SqliteOutbox

FIXTURES = Path(__file__).parents[1] / "fixtures"
T0 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)  # a Monday
LATER = T0 + timedelta(days=1)  # past any backoff
# The claimant's name and lease, what a drain's options carry (issue 18).
CLAIMANT = SimpleNamespace(instance="one", lease=timedelta(minutes=2))


@pytest.fixture
def smtp_server(smtp_server_modes: SMTPTestServer) -> SMTPTestServer:
    """Every test here runs against a server with and without PIPELINING (conftest.py)."""
    return smtp_server_modes


def subscribers_yaml(emails: list[str], schedule: str = "0 7 * * *") -> str:
    lines = [f'defaults:\n  schedule: "{schedule}"\n  max_papers: 3\nsubscribers:']
    lines += [f"  - email: {e}" for e in emails]
    return "\n".join(lines) + "\n"


def make_deps(
    tmp_path: Path,
    server: SMTPTestServer,
    emails: list[str],
    *,
    connections: int = 1,
    schedule: str = "0 7 * * *",
    **smtp: float,
) -> Deps:
    papers = tmp_path / "papers.json"
    papers.write_text((FIXTURES / "hf_daily_papers_seed.json").read_text())
    options: dict[str, float] = {"timeout": 2.0, "data_timeout": 5.0}
    options.update(smtp)
    mailers = [
        SmtpMailer(server.host, server.port, security="none", local_hostname="t", **options)  # type: ignore[arg-type]
        for _ in range(connections)
    ]
    deps = Deps(
        store=Store(tmp_path / "state.sqlite3"),
        source=FileSource(papers),
        mailer=MailerPool(mailers) if connections > 1 else mailers[0],
        audience=Audience.of(load_subscribers(subscribers_yaml(emails, schedule), file="s.yaml")),
        envs=make_environments(),
        options=Options(sender="Paper Digest <digest@example.org>", connections=connections),
    )
    pipeline.register(deps, now=T0 - timedelta(days=30))
    return deps


@pytest.fixture
def deps_factory(tmp_path: Path) -> Iterator[list[Deps]]:
    made: list[Deps] = []
    yield made
    for deps in made:
        deps.store.close()


async def run_once(deps: Deps, now: datetime) -> pipeline.DeliverReport:
    await pipeline.ingest(deps, now=now)
    pipeline.compose(deps, now=now, once=True)
    return await pipeline.deliver_due(deps, now=now, clock=lambda: now)


def per_recipient(server: SMTPTestServer) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for got in server.received:
        (rcpt,) = got.rcpt_tos
        ids.setdefault(rcpt, []).append(str(got.message["Message-ID"]))
    return ids


def states(deps: Deps) -> dict[str, int]:
    return {k: v for k, v in deps.store.status().outbox.items() if v}


EMAILS = [f"r{i}@example.org" for i in range(10)]


async def test_421_mid_batch_reconnects_and_goes_on(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.handler.hangup_after = 3  # every connection dies with 421 after 3 messages
    deps = make_deps(tmp_path, smtp_server, EMAILS)
    first = await run_once(deps, T0)
    # 3 sent, the 4th hit 421 (deferred), reconnect, 3 more… every message but the 421'd ones.
    assert first.sent == 8 and first.deferred == 2
    assert smtp_server.handler.connections == 3  # 3 + 421, 3 + 421, then the last 2
    smtp_server.handler.hangup_after = None
    await pipeline.deliver_due(deps, now=LATER, clock=lambda: LATER)
    got = per_recipient(smtp_server)
    assert sorted(got) == sorted(EMAILS) and all(len(v) == 1 for v in got.values())
    assert states(deps) == {"sent": 10}
    await deps.mailer.aclose()


async def test_drop_after_data_is_in_doubt_and_resent_with_the_same_message_id(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.handler.drop_after_data = True
    smtp_server.handler.drops_left = 1
    deps = make_deps(tmp_path, smtp_server, EMAILS[:3])
    report = await run_once(deps, T0)
    assert (report.sent, report.deferred) == (2, 1)
    (problem,) = deps.store.status().problems
    assert problem.state == "in_doubt" and "end_of_data" in (problem.last_reply or "")
    await pipeline.deliver_due(deps, now=LATER, clock=lambda: LATER)
    got = per_recipient(smtp_server)
    dup = [ids for ids in got.values() if len(ids) > 1]
    assert len(dup) == 1 and len(set(dup[0])) == 1 and len(dup[0]) == 2  # same Message-ID
    assert states(deps) == {"sent": 3}
    await deps.mailer.aclose()


async def test_per_recipient_replies(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    replies = {
        "r1@example.org": "451 4.3.0 try again later",
        "r2@example.org": "452 4.2.2 mailbox full",
        "r3@example.org": "550 5.1.1 <r3@example.org>: no such user",
        "r4@example.org": "552 5.3.4 too many recipients",  # transient on RCPT (RFC 5321)
    }
    smtp_server.handler.rcpt_replies.update(replies)
    deps = make_deps(tmp_path, smtp_server, EMAILS[:5])
    report = await run_once(deps, T0)
    assert (report.sent, report.deferred, report.failed) == (1, 3, 1)
    problems = {p.subscriber: p for p in deps.store.status().problems}
    assert problems["r3@example.org"].state == "failed"
    assert problems["r3@example.org"].last_code == 550
    assert "no such user" in (problems["r3@example.org"].last_reply or "")
    for rcpt in ("r1@example.org", "r2@example.org", "r4@example.org"):
        assert problems[rcpt].state == "deferred", rcpt
    smtp_server.handler.rcpt_replies.clear()
    await pipeline.deliver_due(deps, now=LATER, clock=lambda: LATER)
    assert sorted(per_recipient(smtp_server)) == [f"r{i}@example.org" for i in (0, 1, 2, 4)]
    await deps.mailer.aclose()


async def test_stall_beyond_the_data_timeout_is_in_doubt(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.handler.stall_data = 1.0
    deps = make_deps(tmp_path, smtp_server, EMAILS[:1], data_timeout=0.3)
    report = await run_once(deps, T0)
    assert report.deferred == 1 and len(smtp_server.received) == 1  # the relay has it
    assert states(deps) == {"in_doubt": 1}
    smtp_server.handler.stall_data = 0
    await pipeline.deliver_due(deps, now=LATER, clock=lambda: LATER)
    (ids,) = per_recipient(smtp_server).values()
    assert len(ids) == 2 and ids[0] == ids[1]
    await deps.mailer.aclose()


async def test_stall_before_data_is_transient_and_sends_nothing(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.handler.stall_mail = 1.0
    deps = make_deps(tmp_path, smtp_server, EMAILS[:1], timeout=0.3)
    report = await run_once(deps, T0)
    assert report.deferred == 1 and states(deps) == {"deferred": 1}
    (problem,) = deps.store.status().problems
    assert "mail" in (problem.last_reply or "") and "Timeout" in (problem.last_reply or "")
    smtp_server.handler.stall_mail = 0
    await pipeline.deliver_due(deps, now=LATER, clock=lambda: LATER)
    assert len(smtp_server.received) == 1
    await deps.mailer.aclose()


async def test_deferred_digest_expires_when_its_next_period_comes(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.handler.rcpt_replies["r0@example.org"] = "451 4.7.1 greylisted"
    deps = make_deps(tmp_path, smtp_server, EMAILS[:1])
    slot = T0 + timedelta(hours=1)  # Monday 07:00
    await pipeline.ingest(deps, now=T0)
    pipeline.compose(deps, now=slot)
    assert (await pipeline.deliver_due(deps, now=slot, clock=lambda: slot)).deferred == 1
    reserved = deps.store.papers.candidates("r0@example.org", since=T0 - timedelta(days=30))
    assert reserved == []
    tuesday = slot + timedelta(days=1)  # the next period began: no stale Monday digest
    smtp_server.handler.rcpt_replies.clear()
    pipeline.compose(deps, now=tuesday)
    await pipeline.deliver_due(deps, now=tuesday, clock=lambda: tuesday)
    expired = [p for p in deps.store.status().problems if p.state == "expired"]
    assert len(expired) == 1 and expired[0].period.startswith("2026-11-23")
    reason = expired[0].last_reply or ""
    assert "next period" in reason and "451" in reason and "greylisted" in reason
    # Its papers were released; they went into Tuesday's digest, which was sent.
    (message,) = [r.message for r in smtp_server.received]
    assert "Paper digest: 54 new papers" in str(message["Subject"])
    await deps.mailer.aclose()


async def test_hard_failures_suspend_the_address_until_lifted(
    tmp_path: Path, smtp_server: SMTPTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    smtp_server.handler.rcpt_replies["r1@example.org"] = "550 5.1.1 user unknown"
    deps = make_deps(tmp_path, smtp_server, EMAILS[:2])
    deps.options = Options(sender=deps.options.sender, suspend_after=3)
    await pipeline.ingest(deps, now=T0)
    for day in range(3):
        now = T0 + timedelta(days=day, hours=1)
        (deps.source.path).write_text(json.dumps(_papers(day)))  # type: ignore[attr-defined]
        await pipeline.ingest(deps, now=now)
        pipeline.compose(deps, now=now)
        report = await pipeline.deliver_due(deps, now=now, clock=lambda now=now: now)
        assert report.failed == 1
    (suspension,) = deps.store.status().suspended
    assert suspension.email == "r1@example.org" and suspension.failures == 3
    assert suspension.last_code == 550 and "user unknown" in (suspension.last_reply or "")
    # Suspended: no more digests composed for it, while r0 keeps getting theirs.
    now = T0 + timedelta(days=3, hours=1)
    assert pipeline.compose(deps, now=now).n_due == 1
    deps.store.close()
    config = tmp_path / "digestd.yaml"
    config.write_text(f"state: {tmp_path / 'state.sqlite3'}\nsubscribers: s.yaml\n")
    assert cli_main(["--config", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert "suspended:" in out and "email=r1@example.org" in out and "user unknown" in out
    assert cli_main(["--config", str(config), "unsuspend", "R1@example.org"]) == 0
    assert "lifted" in capsys.readouterr().out
    assert cli_main(["--config", str(config), "unsuspend", "r1@example.org"]) == 1
    assert "not suspended" in capsys.readouterr().err
    with Store(tmp_path / "state.sqlite3") as store:
        assert store.subscribers.suspended() == set()
    await deps.mailer.aclose()


def _papers(day: int) -> list[object]:
    items: list[object] = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())
    return items[day * 5 : day * 5 + 5]


async def test_a_success_resets_the_strikes(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite3") as store:
        for period, outcome in enumerate(["fail", "fail", "sent", "fail", "fail"]):
            store.outbox.enqueue(
                subscriber="a@example.org", kind="digest", period=str(period),
                message_id=f"<{period}@x>", sender="d@example.org", data=b"m",
                paper_ids=[], at=T0,
            )  # fmt: skip
            (row,) = store.outbox.claim_due(now=T0)
            if outcome == "sent":
                store.outbox.mark_sent(row.id, at=T0, code=250, reply="ok")
            else:
                store.outbox.mark_failed(
                    row.id, at=T0, code=550, reply="no", suspend=suspend_after(3)
                )
        assert store.subscribers.suspended() == set()
        assert [s.failures for s in store.subscribers.suspensions()] == [2]


async def test_parallel_connections_send_each_message_once(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    emails = [f"p{i}@example.org" for i in range(40)]
    deps = make_deps(tmp_path, smtp_server, emails, connections=3)
    report = await run_once(deps, T0)
    assert report.sent == 40
    got = per_recipient(smtp_server)
    assert sorted(got) == sorted(emails) and all(len(v) == 1 for v in got.values())
    assert smtp_server.handler.connections == 3
    await deps.mailer.aclose()


async def test_stop_finishes_in_flight_and_gives_unsent_claims_back(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    deps = make_deps(tmp_path, smtp_server, EMAILS, connections=2)
    await pipeline.ingest(deps, now=T0)
    pipeline.compose(deps, now=T0, once=True)
    sent: list[int] = []
    deps.stopping = lambda: len(smtp_server.received) >= 3 or bool(sent)
    report = await pipeline.deliver_due(deps, now=T0, clock=lambda: T0)
    sent.append(report.sent)
    assert report.sent == len(smtp_server.received) >= 3
    assert states(deps) == {"sent": report.sent, "queued": 10 - report.sent}
    rows = deps.store.db.conn.execute("SELECT attempts FROM outbox WHERE state = 'queued'")
    assert {r[0] for r in rows} == {0}  # never tried: the claim was given back
    await deps.mailer.aclose()


def queue_plain(store: Store, n: int) -> None:
    """`n` tiny messages due at T0, to u0@… u{n-1}@example.org."""
    for i in range(n):
        store.outbox.enqueue(
            subscriber=f"u{i}@example.org", kind="digest", period="p",
            message_id=f"<{i}@x>", sender="d@example.org", data=b"m", paper_ids=[], at=T0,
        )  # fmt: skip


async def test_claimer_hands_each_row_out_once(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite3") as store:
        queue_plain(store, 25)
        deps: Any = SimpleNamespace(store=store, options=CLAIMANT)
        committer = _Committer(deps, DeliverReport())  # claims in its thread, on its connection
        claimer = _Claimer(committer, now=T0, batch=8)

        async def take(n: int) -> list[int]:
            ids = []
            while len(ids) < n and (row := await claimer.next()) is not None:
                ids.append(row.id)
            return ids

        # Three takers at once, as the workers do, while the next batch is claimed ahead.
        firsts = await asyncio.gather(take(5), take(5), take(5))
        seen = [i for ids in firsts for i in ids]
        await claimer.aclose(store)  # what was claimed ahead goes back, untried
        assert +Counter(store.status().outbox) == Counter(sending=15, queued=10)
        claimer = _Claimer(committer, now=T0, batch=8)
        seen += await take(100)
        await claimer.aclose(store)
        await committer.aclose()
        assert len(seen) == len(set(seen)) == 25
        assert Counter(store.status().outbox)["sending"] == 25


async def test_rate_limiter_spaces_sends() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        await limiter.wait()
    assert now[0] == pytest.approx(1.0)  # 5 starts at 4/s: the last one at t = 1 s
    with pytest.raises(ValueError):
        RateLimiter(-1)


async def test_pool_uses_every_mailer_concurrently() -> None:
    class Slow:
        def __init__(self) -> None:
            self.active = 0
            self.peak = 0

        async def send(
            self, sender: str, recipient: str, data: bytes, *, canonical: bool = False
        ) -> Outcome:
            import asyncio

            self.active += 1
            self.peak = max(self.peak, self.active)
            await asyncio.sleep(0.01)
            self.active -= 1
            return Outcome("sent", 250, "ok")

        async def aclose(self) -> None:
            pass

    import asyncio

    mailers = [Slow(), Slow()]
    pool = MailerPool(mailers)
    await asyncio.gather(*(pool.send("a@x.org", "b@x.org", b"m") for _ in range(6)))
    assert [m.peak for m in mailers] == [1, 1]  # one message at a time per connection
    with pytest.raises(ValueError):
        MailerPool([])


async def test_rows_whose_bytes_cannot_be_read_go_back_to_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(tmp_path / "s.sqlite3") as store:
        queue_plain(store, 3)

        def unreadable(self: SqliteOutbox, rows: object) -> None:
            raise OSError("disk I/O error")

        monkeypatch.setattr(SqliteOutbox, "with_bodies", unreadable)
        deps: Any = SimpleNamespace(store=store, options=CLAIMANT)
        committer = _Committer(deps, DeliverReport())
        claimer = _Claimer(committer, now=T0, batch=8)
        with pytest.raises(OSError, match="disk I/O"):
            await claimer.next()  # never a row without its bytes
        await claimer.aclose(store)
        await committer.aclose()
        assert +Counter(store.status().outbox) == Counter(queued=3)
