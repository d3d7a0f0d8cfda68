"""The pipeline against a real store, a real file source and a real Maildir: schedules, caps, at-most-once."""

from __future__ import annotations

import email
import email.policy
import json
import mailbox
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from test_message import is_canonical

from digestd import pipeline
from digestd.core.model import Outcome
from digestd.deliver.drain import backoff
from digestd.deliver.transports.maildir import MaildirMailer
from digestd.mail.render import make_environments
from digestd.pipeline import Audience, Deps, Options
from digestd.rules.subscribers import load_subscribers
from digestd.sources import FileSource
from digestd.store.sqlite import Store

FIXTURES = Path(__file__).parents[1] / "fixtures"
MON_0600 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)  # a Monday

SUBSCRIBERS = """\
defaults:
  schedule: "0 7 * * *"
  timezone: UTC
  max_papers: 3
subscribers:
  - email: alice@example.org
    name: Alice
    rules:
      - any: ["kv cache", "attention"]
  - email: bob@example.org
"""


def papers_json(tmp_path: Path, count: int | None = None, *, offset: int = 0) -> Path:
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())
    items = items[offset : offset + count if count is not None else None]
    path = tmp_path / "papers.json"
    path.write_text(json.dumps(items))
    return path


def make_deps(tmp_path: Path, subscribers: str = SUBSCRIBERS, *, now: datetime) -> Deps:
    deps = Deps(
        store=Store(tmp_path / "state.sqlite3"),
        source=FileSource(papers_json(tmp_path)),
        mailer=MaildirMailer(tmp_path / "mail"),
        audience=Audience.of(load_subscribers(subscribers, file="subscribers.yaml")),
        envs=make_environments(),
        options=Options(sender="Paper Digest <digest@example.org>"),
    )
    pipeline.register(deps, now=now)
    return deps


def inbox(tmp_path: Path) -> list[EmailMessage]:
    box = mailbox.Maildir(tmp_path / "mail", create=False)
    return [
        email.message_from_bytes(box.get_bytes(k), policy=email.policy.default)  # type: ignore[misc]
        for k in sorted(box.keys())
    ]


async def cycle(deps: Deps, now: datetime) -> pipeline.DeliverReport:
    pipeline.compose(deps, now=now)
    return await pipeline.deliver_due(deps, now=now, clock=lambda: now)


async def test_first_digest_waits_for_the_next_slot(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, now=MON_0600)
    await pipeline.ingest(deps, now=MON_0600)
    # Sunday's 07:00 slot was before Alice and Bob existed: nothing is due yet.
    assert (await cycle(deps, MON_0600 + timedelta(minutes=30))).sent == 0
    assert (await cycle(deps, MON_0600 + timedelta(hours=1))).sent == 2
    assert (await cycle(deps, MON_0600 + timedelta(hours=1, minutes=30))).sent == 0


async def test_downtime_sends_one_digest_not_one_per_missed_period(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, now=MON_0600)
    await pipeline.ingest(deps, now=MON_0600)
    # The daemon was down from Monday 06:00 to Thursday 09:00: three slots passed.
    thursday = MON_0600 + timedelta(days=3, hours=3)
    assert (await cycle(deps, thursday)).sent == 2
    assert (await cycle(deps, thursday + timedelta(minutes=5))).sent == 0


async def test_cap_counts_the_rest_as_delivered(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, now=MON_0600)
    await pipeline.ingest(deps, now=MON_0600)
    pipeline.compose(deps, now=MON_0600, once=True)
    await pipeline.deliver_due(deps, now=MON_0600, clock=lambda: MON_0600)
    bob = next(m for m in inbox(tmp_path) if "bob@" in str(m["To"]))
    text = bob.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "51 more" in text  # 54 papers, 3 shown
    # Nothing comes back: over-the-cap papers were reserved with the shown ones.
    later = MON_0600 + timedelta(minutes=1)
    assert pipeline.compose(deps, now=later, once=True).n_queued == 0


async def test_alert_then_digest_never_repeat_a_paper(tmp_path: Path) -> None:
    subs = SUBSCRIBERS.replace(
        '      - any: ["kv cache", "attention"]',
        '      - any: ["kv cache"]\n        alert: true\n      - any: ["attention"]',
    )
    deps = make_deps(tmp_path, subs, now=MON_0600)
    report = await pipeline.ingest(deps, now=MON_0600)
    assert report.n_alerts == 1
    await pipeline.deliver_due(deps, now=MON_0600, clock=lambda: MON_0600)
    pipeline.compose(deps, now=MON_0600, once=True)
    await pipeline.deliver_due(deps, now=MON_0600, clock=lambda: MON_0600)
    ids_by_message = [
        {line.rsplit("/", 1)[1] for line in _links(m)}
        for m in inbox(tmp_path)
        if "alice@" in str(m["To"])
    ]
    assert len(ids_by_message) == 2
    assert not ids_by_message[0] & ids_by_message[1]


def _links(message: EmailMessage) -> list[str]:
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    return [w for w in text.split() if w.startswith("https://huggingface.co/papers/")]


async def test_new_subscriber_gets_only_the_last_week(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, now=MON_0600)
    deps.source = FileSource(papers_json(tmp_path, 10))
    await pipeline.ingest(deps, now=MON_0600)
    deps.source = FileSource(papers_json(tmp_path, 10, offset=10))
    ten_days_later = MON_0600 + timedelta(days=10)
    await pipeline.ingest(deps, now=ten_days_later)
    carol = SUBSCRIBERS + "  - email: carol@example.org\n    max_papers: 50\n"
    pipeline.swap_subscribers(
        deps, load_subscribers(carol, file="subscribers.yaml"), now=ten_days_later
    )
    pipeline.compose(deps, now=ten_days_later, once=True, only=["carol@example.org"])
    await pipeline.deliver_due(deps, now=ten_days_later, clock=lambda: ten_days_later)
    (carol_mail,) = [m for m in inbox(tmp_path) if "carol@" in str(m["To"])]
    assert len(_links(carol_mail)) == 10


async def test_failed_poll_stores_nothing(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, now=MON_0600)
    bad = tmp_path / "broken.json"
    bad.write_text('[{"paper": {"id": "2401.00001", "title": "x"')
    deps.source = FileSource(bad)
    report = await pipeline.ingest(deps, now=MON_0600)
    assert not report.ok and report.error
    assert deps.store.papers.count() == 0
    status = deps.store.status()
    assert status.last_poll is not None and not status.last_poll.ok


@pytest.mark.parametrize("attempts", [1, 3])
def test_backoff_grows_and_is_capped(attempts: int) -> None:
    options = Options(sender="x@example.org")
    delay = backoff(attempts, options.retry_base, options.retry_cap)
    ceiling = options.retry_base * 2 ** (attempts - 1)
    assert ceiling / 2 <= delay <= ceiling
    assert backoff(50, options.retry_base, options.retry_cap) <= options.retry_cap


async def test_sent_bytes_are_dropped_after_keep_days_and_the_ledger_stays(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, now=MON_0600)
    await pipeline.ingest(deps, now=MON_0600)
    assert (await cycle(deps, MON_0600 + timedelta(hours=1))).sent == 2
    db = deps.store.db.conn

    def count(table: str) -> int:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    assert count("outbox_bodies") == 2 and count("message_parts") > 0  # shared parts stored
    assert (await cycle(deps, MON_0600 + timedelta(days=6))).sent == 0
    assert count("outbox_bodies") == 2  # within keep_days (7)
    assert (await cycle(deps, MON_0600 + timedelta(days=8))).sent == 0
    assert count("outbox_bodies") == count("outbox_parts") == count("message_parts") == 0
    # The rows and the ledger stay: nothing is sent again.
    assert db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'sent'").fetchone()[0] == 2
    assert len(inbox(tmp_path)) == 2


class RecordingMailer:
    """A real Maildir mailer that notes how each message was handed to it."""

    def __init__(self, inner: MaildirMailer) -> None:
        self.inner = inner
        self.sent: list[tuple[bytes, bool]] = []

    async def send(
        self, sender: str, recipient: str, data: bytes, *, canonical: bool = False
    ) -> Outcome:
        self.sent.append((data, canonical))
        return await self.inner.send(sender, recipient, data, canonical=canonical)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_i14_the_outbox_hands_the_canonical_flag_to_the_transport(tmp_path: Path) -> None:
    """What the transport sends is plain bytes plus an explicit flag, read from the claimed row:
    the compose worker's check travels with the message, not as a `bytes` subclass."""
    deps = make_deps(tmp_path, now=MON_0600)
    recorder = deps.mailer = RecordingMailer(MaildirMailer(tmp_path / "mail"))
    await pipeline.ingest(deps, now=MON_0600)
    assert (await cycle(deps, MON_0600 + timedelta(hours=1))).sent == 2
    assert [canonical for _, canonical in recorder.sent] == [True, True]
    assert all(type(data) is bytes and is_canonical(data) for data, _ in recorder.sent)
    assert len(inbox(tmp_path)) == 2
