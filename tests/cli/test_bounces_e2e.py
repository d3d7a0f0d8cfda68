"""End to end: `run --once` as a subprocess sends with VERP envelope senders to a real SMTP server;
DSNs and a complaint dropped into the bounce Maildir are read by the next run, which suspends and
suppresses; `digestd status` says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scenes import file_smtp_scene
from smtpserver import SMTPTestServer

from digestd.bounces.verp import verp_tokens
from digestd.mail import linktokens
from digestd.pipeline.bounces import bounce_key
from digestd.store.sqlite import Store

FIXTURES = Path(__file__).parents[1] / "fixtures" / "bounces"
BASE = "bounces@lab.example.org"
PLACEHOLDER = f"bounces+{'a' * 32}@lab.example.org".encode()
SUBSCRIBERS = """\
defaults: {schedule: "0 7 * * *", timezone: UTC}
subscribers:
  - email: ada@example.org
  - email: barbara@example.org
  - email: cyd@example.org
"""


def digestd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digestd", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )  # fmt: skip


def test_verp_bounces_and_complaints_through_run_once(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    config = file_smtp_scene(
        tmp_path, smtp_server.port, SUBSCRIBERS,
        delivery=f"  timeout: 5s\n  verp: {BASE}\n  suspend_after: 1\n",
    )  # fmt: skip
    with config.open("a") as file:
        file.write("bounces:\n  maildir: bounces\n")
    first = digestd(config, "run", "--once")
    assert first.returncode == 0, first.stderr
    assert "bounces: read 0" in first.stdout

    # Each message went out with its own envelope sender, naming it and its recipient.
    senders = {r.rcpt_tos[0]: r.mail_from for r in smtp_server.received}
    assert set(senders) == {"ada@example.org", "barbara@example.org", "cyd@example.org"}
    with Store(tmp_path / "state.sqlite3") as store:
        key = bounce_key(store.secret())
        for rcpt, sender in senders.items():
            (token,) = verp_tokens(BASE, sender)
            parsed = linktokens.parse_bounce(token)
            assert parsed is not None and parsed.verify(key, rcpt)
            assert store.bounces.recipient_of(parsed.outbox_id) == rcpt
        # The From header is the admin's address, not the VERP one.
        assert all(r.message["From"] == "Paper Digest <digest@example.org>"
                   for r in smtp_server.received)  # fmt: skip

    def bounce_of(fixture: str, rcpt: str) -> bytes:
        return (FIXTURES / fixture).read_bytes().replace(PLACEHOLDER, senders[rcpt].encode())

    new = tmp_path / "bounces" / "new"
    new.mkdir(parents=True)
    (new / "1.dsn").write_bytes(bounce_of("postfix_user_unknown.eml", "ada@example.org"))
    (new / "2.arf").write_bytes(bounce_of("arf_abuse.eml", "barbara@example.org"))
    # A Gmail-style DSN whose token is cyd's reversed: forged, so it is counted and left alone.
    forged_token = verp_tokens(BASE, senders["cyd@example.org"])[0]
    (new / "3.forged").write_bytes(
        (FIXTURES / "gmail_no_such_user.eml").read_bytes().replace(
            PLACEHOLDER, f"bounces+{forged_token[::-1]}@lab.example.org".encode()
        )
    )  # fmt: skip

    second = digestd(config, "run", "--once")
    assert second.returncode == 0, second.stderr
    assert "bounces: read 3 (1 permanent, 0 temporary, 1 complaints, 1 ignored)" in second.stdout
    assert "Traceback" not in second.stderr
    assert sorted(p.name for p in (tmp_path / "bounces" / "cur").iterdir()) == [
        "1.dsn:2,S", "2.arf:2,S", "3.forged:2,",
    ]  # fmt: skip
    with Store(tmp_path / "state.sqlite3") as store:
        assert store.subscribers.suspended() == {"ada@example.org"}
        assert [(s.email, s.via) for s in store.subscribers.suppressions()] == [
            ("barbara@example.org", "complaint")
        ]

    status = digestd(config, "status")
    assert status.returncode == 0, status.stderr
    assert "barbara@example.org since" in status.stdout and "via complaint" in status.stdout
    assert "suspended:   1" in status.stdout and "ada@example.org" in status.stdout
    assert "bounces:     1 permanent, 0 temporary, 1 complaints, 1 ignored" in status.stdout
