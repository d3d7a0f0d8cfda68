"""Reading a Maildir of bounces into a real store: verified reports act, the rest is left alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from digestd.bounces.inbox import MaildirInbox, Processed
from digestd.bounces.verp import verp_sender
from digestd.pipeline.bounces import BounceTally, bounce_key, read_bounces
from digestd.store.sqlite import Store

FIXTURES = Path(__file__).parents[1] / "fixtures" / "bounces"
T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
BASE = "bounces@lab.example.org"
PLACEHOLDER = f"bounces+{'a' * 32}@lab.example.org".encode()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state.sqlite3") as s:
        yield s


def sent(store: Store, who: str, period: str = "d0") -> int:
    outbox_id = store.outbox.enqueue(
        subscriber=who, kind="digest", period=period, message_id=f"<{who}.{period}@t>",
        sender="d@example.org", data=b"bytes", paper_ids=(), at=T0,
    )  # fmt: skip
    assert outbox_id is not None
    (row,) = store.outbox.claim_due(now=T0)
    store.outbox.mark_sent(row.id, at=T0, code=250, reply="ok")
    return outbox_id


def key(store: Store) -> bytes:
    return bounce_key(store.secret())


def drop(maildir: Path, name: str, data: bytes) -> None:
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    (maildir / "new" / name).write_bytes(data)


def fixture_for(store: Store, fixture: str, outbox_id: int, who: str) -> bytes:
    """A fixture with the VERP address the message really went out with."""
    address = verp_sender(BASE, key(store), outbox_id, who).encode()
    return (FIXTURES / fixture).read_bytes().replace(PLACEHOLDER, address)


def read(store: Store, maildir: Path, processed: Processed = "flag", **kw: int) -> BounceTally:
    inbox = MaildirInbox(maildir, processed=processed, max_bytes=kw.pop("max_bytes", 2**21))
    return asyncio.run(
        read_bounces(store, inbox, verp=BASE, key=key(store), now=T0, suspend=kw.get("suspend", 3),
                     max_bytes=inbox.max_bytes)
    )  # fmt: skip


def files(maildir: Path, sub: str) -> list[str]:
    path = maildir / sub
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


@pytest.mark.parametrize(
    "fixture",
    ["postfix_user_unknown.eml", "exim_failed.eml", "gmail_no_such_user.eml",
     "outlook_recipient_not_found.eml"],
)  # fmt: skip
def test_three_permanent_bounces_suspend_the_address(
    store: Store, tmp_path: Path, fixture: str
) -> None:
    maildir = tmp_path / "bounces"
    for day in range(3):
        outbox_id = sent(store, "ada@example.org", f"d{day}")
        drop(maildir, f"m{day}", fixture_for(store, fixture, outbox_id, "ada@example.org"))
    tally = read(store, maildir)
    assert (tally.read, tally.permanent, tally.suspended) == (3, 3, 1)
    assert store.subscribers.suspended() == {"ada@example.org"}
    assert files(maildir, "new") == [] and files(maildir, "cur") == ["m0:2,S", "m1:2,S", "m2:2,S"]


def test_a_delay_is_recorded_and_a_complaint_suppresses(store: Store, tmp_path: Path) -> None:
    maildir = tmp_path / "bounces"
    grace, barbara = sent(store, "grace@example.net", "g"), sent(store, "barbara@example.org", "b")
    drop(maildir, "delay", fixture_for(store, "postfix_delayed.eml", grace, "grace@example.net"))
    drop(maildir, "arf", fixture_for(store, "arf_abuse.eml", barbara, "barbara@example.org"))
    tally = read(store, maildir)
    assert (tally.temporary, tally.complaint, tally.suppressed) == (1, 1, 1)
    assert [(s.email, s.via) for s in store.subscribers.suppressions()] == [
        ("barbara@example.org", "complaint")
    ]
    assert store.subscribers.suspensions() == []


@pytest.mark.parametrize("processed", ["move", "delete"])
def test_handled_mail_is_moved_or_deleted(store: Store, tmp_path: Path, processed: str) -> None:
    maildir = tmp_path / "bounces"
    outbox_id = sent(store, "ada@example.org")
    drop(maildir, "m0", fixture_for(store, "exim_failed.eml", outbox_id, "ada@example.org"))
    read(store, maildir, processed)  # type: ignore[arg-type]
    assert files(maildir, "new") == [] and files(maildir, "cur") == []
    moved = files(maildir / ".Processed", "cur")
    assert moved == (["m0:2,S"] if processed == "move" else [])


def test_forged_unknown_and_unreadable_mail_is_left_alone_and_counted_once(
    store: Store, tmp_path: Path
) -> None:
    maildir = tmp_path / "bounces"
    ada = sent(store, "ada@example.org")
    real = fixture_for(store, "postfix_user_unknown.eml", ada, "ada@example.org")
    token = verp_sender(BASE, key(store), ada, "ada@example.org").split("+")[1][:32]
    forged = real.replace(
        token.encode(), token[:-1].encode() + (b"b" if token[-1] == "a" else b"a")
    )
    other = fixture_for(store, "postfix_user_unknown.eml", ada, "eve@example.org")  # signed for eve
    unknown = fixture_for(
        store, "postfix_user_unknown.eml", ada + 999, "ada@example.org"
    )  # no such row
    drop(maildir, "forged", forged)
    drop(maildir, "unknown", unknown)
    drop(maildir, "other", other)
    drop(maildir, "plain", (FIXTURES / "exim_legacy_plain.eml").read_bytes())
    drop(maildir, "huge", real + b"x" * 5000)
    drop(maildir, "broken", b"Content-Type: multipart/report; boundary=\r\n\r\n--\x00\xff")
    tally = read(store, maildir, max_bytes=len(real) + 100)
    assert (tally.read, tally.ignored, tally.permanent) == (6, 6, 0)
    assert store.subscribers.suspensions() == []
    # Left alone: no longer new, not flagged seen, so the admin still sees them unread.
    assert files(maildir, "cur") == [
        "broken:2,",
        "forged:2,",
        "huge:2,",
        "other:2,",
        "plain:2,",
        "unknown:2,",
    ]
    # The same bytes delivered again count once.
    drop(maildir, "forged-again", forged)
    again = read(store, maildir)
    assert (again.read, again.duplicate, again.ignored) == (1, 1, 0)
    assert store.bounces.counts()["ignored"] == 6


def test_a_crash_before_the_mail_was_moved_does_not_strike_twice(
    store: Store, tmp_path: Path
) -> None:
    maildir = tmp_path / "bounces"
    outbox_id = sent(store, "ada@example.org")
    data = fixture_for(store, "gmail_no_such_user.eml", outbox_id, "ada@example.org")
    drop(maildir, "m0", data)
    read(store, maildir)
    drop(maildir, "m0", data)  # as if the move had not happened
    tally = read(store, maildir)
    assert (tally.duplicate, tally.permanent) == (1, 0)
    (suspension,) = store.subscribers.suspensions()
    assert suspension.failures == 1
    assert files(maildir, "cur") == ["m0:2,S"]


def test_a_missing_maildir_reads_nothing(store: Store, tmp_path: Path) -> None:
    assert read(store, tmp_path / "not-yet").read == 0


def test_what_is_not_a_message_file_is_skipped(store: Store, tmp_path: Path) -> None:
    maildir = tmp_path / "bounces"
    drop(maildir, "m0", (FIXTURES / "exim_legacy_plain.eml").read_bytes())
    (maildir / "new" / "a-directory").mkdir()
    (maildir / "new" / ".hidden").write_bytes(b"x")
    assert read(store, maildir).read == 1
    assert files(maildir, "new") == [".hidden", "a-directory"]
