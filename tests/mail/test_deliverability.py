"""What receivers judge, on messages received by a real SMTP server: list headers, DKIM, tokens."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dkim
import pytest
from smtpserver import SMTPTestServer

from digestd import pipeline
from digestd.config.sections import DkimSettings
from digestd.config.settings import Settings
from digestd.core.errors import ConfigError
from digestd.deliver.transports.smtp import SmtpMailer
from digestd.mail import linktokens as tokens
from digestd.mail.dkim import check_notes, dkim_txt_record, load_signer
from digestd.mail.listheaders import default_list_id, list_headers, mail_links, normalise_list_id
from digestd.mail.render import make_environments
from digestd.pipeline import Audience, Deps, Options
from digestd.rules.subscribers import load_subscribers
from digestd.sources import FileSource
from digestd.store.sqlite import Store

FIXTURES = Path(__file__).parents[1] / "fixtures"
KEY = FIXTURES / "dkim_test_key.pem"  # a throw-away 2048-bit key made for these tests only
NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
DKIM = DkimSettings(selector="s2026", domain="example.org", key_file=KEY)
SUBSCRIBERS = """\
subscribers:
  - email: Alice@Example.org
    name: Alice Ünïcode
  - email: bob@example.org
"""


def make_deps(tmp_path: Path, server: SMTPTestServer, **options: object) -> Deps:
    items = json.loads((FIXTURES / "hf_daily_papers_seed.json").read_text())
    (tmp_path / "papers.json").write_text(json.dumps(items))
    values: dict[str, object] = {
        "sender": "Paper Digest <digest@example.org>",
        "public_url": "https://digest.example.org",
        "secret": b"0123456789abcdef0123456789abcdef",
    }
    values.update(options)
    deps = Deps(
        store=Store(tmp_path / "state.sqlite3"),
        source=FileSource(tmp_path / "papers.json"),
        mailer=SmtpMailer(server.host, server.port, security="none", timeout=5.0),
        audience=Audience.of(load_subscribers(SUBSCRIBERS, file="subscribers.yaml")),
        envs=make_environments(),
        options=Options(**values),  # type: ignore[arg-type]
        sign=load_signer(DKIM),
    )
    pipeline.register(deps, now=NOW)
    return deps


async def send_all(deps: Deps) -> pipeline.DeliverReport:
    await pipeline.ingest(deps, now=NOW)
    pipeline.compose(deps, now=NOW, once=True)
    return await pipeline.deliver_due(deps, now=NOW, clock=lambda: NOW)


def dns_for(record: str) -> object:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s2026._domainkey.example.org."
        return record.encode()

    return dnsfunc


async def test_received_mail_has_one_click_list_headers_and_a_valid_dkim_signature(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    deps = make_deps(tmp_path, smtp_server)
    report = await send_all(deps)
    await deps.mailer.aclose()
    assert report.sent == 2 and len(smtp_server.received) == 2
    for received in smtp_server.received:
        msg = received.message
        unsub = str(msg["List-Unsubscribe"])
        match = re.fullmatch(
            r"<https://digest\.example\.org/unsubscribe/([A-Za-z0-9_-]{32})>", unsub
        )
        assert match, unsub
        assert "@" not in match.group(1) and "alice" not in unsub.lower()
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["List-Id"] == "Paper Digest <digestd.example.org>"
        assert msg["Date"] and re.fullmatch(r"<digest\.[^@]+@example\.org>", msg["Message-ID"])
        for part in ("plain", "html"):
            body = msg.get_body((part,)).get_content()  # type: ignore[union-attr]
            assert match.group(0)[1:-1] in body  # the visible unsubscribe link, both parts
            assert "https://digest.example.org/view/" in body
        # DKIM: verified with the public key, as a receiver would after a DNS lookup.
        assert received.content.startswith(b"DKIM-Signature:")
        assert dkim.verify(received.content, dnsfunc=dns_for(dkim_txt_record(DKIM)))
        signed = re.search(
            rb"h=([^;]+);", received.content.replace(b"\r\n\t", b"").replace(b"\r\n ", b"")
        )
        assert signed is not None
        names = [h.strip().lower() for h in signed.group(1).split(b":")]
        for header in (b"from", b"to", b"subject", b"date", b"message-id", b"list-id",
                       b"list-unsubscribe", b"list-unsubscribe-post"):  # fmt: skip
            assert header in names
        assert names.count(b"from") == 2  # oversigned: a second From cannot be added


async def test_a_tampered_message_fails_dkim(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    deps = make_deps(tmp_path, smtp_server)
    await send_all(deps)
    await deps.mailer.aclose()
    content = smtp_server.received[0].content
    forged = content.replace(b"List-Unsubscribe-Post", b"X-Unsubscribe-Post", 1)
    assert not dkim.verify(forged, dnsfunc=dns_for(dkim_txt_record(DKIM)))


def test_txt_record_matches_openssl(tmp_path: Path) -> None:
    try:
        der = subprocess.run(
            ["openssl", "rsa", "-in", str(KEY), "-pubout", "-outform", "DER"],
            capture_output=True, check=True, timeout=30,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl is not available")
    assert dkim_txt_record(DKIM) == f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


async def test_without_public_url_the_mailto_fallback_and_no_post_header(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    deps = make_deps(tmp_path, smtp_server, public_url=None)
    await send_all(deps)
    await deps.mailer.aclose()
    msg = smtp_server.received[0].message
    assert msg["List-Unsubscribe"] == "<mailto:digest@example.org?subject=unsubscribe>"
    assert "List-Unsubscribe-Post" not in msg
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert 'href="mailto:digest@example.org?subject=unsubscribe"' in html
    assert "/view/" not in html


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        (dict(public_url="https://d.example", unsubscribe_token="T", view_token=None,
              mailto="leave@example.org"),
         {"List-Unsubscribe": "<https://d.example/unsubscribe/T>, <mailto:leave@example.org?subject=unsubscribe>",
          "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}),
        (dict(public_url="http://d.example", unsubscribe_token="T", view_token=None, mailto=None),
         {"List-Unsubscribe": "<http://d.example/unsubscribe/T>"}),
        (dict(public_url=None, unsubscribe_token=None, view_token=None, mailto=None), {}),
    ],
)  # fmt: skip
def test_list_headers(links: dict[str, str | None], expected: dict[str, str]) -> None:
    headers = list_headers(mail_links(**links), "<x.example>")  # type: ignore[arg-type]
    assert headers == {"List-Id": "<x.example>", **expected}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Paper Digest <pd.example.org>", "Paper Digest <pd.example.org>"),
        ('"Papiers Numériques" <pn.example.org>', "Papiers Numeriques <pn.example.org>"),
        ("Lab: ML, daily <ml.example.org>", '"Lab: ML, daily" <ml.example.org>'),
        ("日本 <jp.example.org>", "<jp.example.org>"),
    ],
)
def test_list_id_labels_are_header_safe(given: str, expected: str) -> None:
    assert normalise_list_id(given) == expected


def test_default_list_id() -> None:
    assert default_list_id("Paper Digest", "example.org") == "Paper Digest <digestd.example.org>"


def test_tokens_are_opaque_bound_and_tamper_evident() -> None:
    key = tokens.derive_key(b"s" * 32, "unsubscribe")
    token = tokens.unsubscribe_token(key, 7, "Alice@Example.org")
    assert len(token) == 32 and "alice" not in token.lower()
    parsed = tokens.parse_unsubscribe(token)
    assert parsed is not None and parsed.subscriber_id == 7
    assert parsed.verify(key, "alice@example.org")
    assert not parsed.verify(key, "bob@example.org")
    assert not parsed.verify(tokens.derive_key(b"s" * 32, "view"), "alice@example.org")
    assert not parsed.verify(tokens.derive_key(b"t" * 32, "unsubscribe"), "alice@example.org")
    for i in range(len(token)):  # every single-character change is refused
        flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        other = tokens.parse_unsubscribe(flipped)
        assert other is None or not (
            other.subscriber_id == 7 and other.verify(key, "alice@example.org")
        )
    for bad in ("", "x" * 31, "x" * 33, "a+b/" * 8, "é" * 32):
        assert tokens.parse_unsubscribe(bad) is None


def test_dkim_key_problems_are_config_errors(tmp_path: Path) -> None:
    missing = DkimSettings(selector="s", domain="example.org", key_file=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="cannot read"):
        load_signer(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="not a PEM RSA private key"):
        load_signer(DkimSettings(selector="s", domain="example.org", key_file=garbage))


def test_check_notes(tmp_path: Path) -> None:
    bare = Settings()
    notes = check_notes(bare)
    assert any("one-click unsubscribe needs http.public_url" in n for n in notes)
    configured = Settings.model_validate(
        {
            "http": {"public_url": "https://d.example.org/", "listen": "127.0.0.1:0"},
            "delivery": {"from": "D <d@example.org>", "dkim": DKIM.model_dump()},
        }
    )
    assert configured.http.public_url == "https://d.example.org"
    notes = check_notes(configured)
    assert not any(n.startswith("!") for n in notes), notes
    assert any(n.strip().startswith(f"{DKIM.selector}._domainkey.") for n in notes)
    assert any('TXT "v=DKIM1; k=rsa; p=' in n for n in notes)  # the README's zone-file form
    misaligned = configured.model_copy(
        update={
            "delivery": configured.delivery.model_copy(update={"sender": "D <d@other.example>"})
        }
    )
    assert any("not aligned" in n for n in check_notes(misaligned))


def test_short_link_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGESTD_HTTP__SECRET", "short")
    with pytest.raises(ConfigError, match="16 bytes"):
        Settings().http_secret()
    monkeypatch.setenv("DIGESTD_HTTP__SECRET", "x" * 32)
    assert Settings().http_secret() == b"x" * 32
    assert Settings().redacted()["http"]["secret"] == "<redacted>"


def test_secret_file_and_bad_public_url(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("y" * 40 + "\n")
    assert Settings(http={"secret_file": tmp_path / "secret"}).http_secret() == b"y" * 40  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="public_url"):
        Settings(http={"public_url": "ftp://x"})  # type: ignore[arg-type]


async def test_retries_resend_the_signed_bytes_unchanged(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    deps = make_deps(tmp_path, smtp_server)
    smtp_server.handler.data_reply = "421 4.3.0 try later"
    await send_all(deps)
    smtp_server.handler.data_reply = None
    later = NOW + timedelta(hours=2)
    await pipeline.deliver_due(deps, now=later, clock=lambda: later)
    await deps.mailer.aclose()
    assert len(smtp_server.received) == 2
    assert all(
        dkim.verify(r.content, dnsfunc=dns_for(dkim_txt_record(DKIM))) for r in smtp_server.received
    )


async def test_the_empty_note_is_signed_and_digests_stay_spliced_when_signed(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    deps = make_deps(tmp_path, smtp_server)
    pipeline.swap_subscribers(deps, load_subscribers(
        SUBSCRIBERS + '  - email: carol@example.org\n    send_empty: true\n'
        '    rules:\n      - any: ["zzzz nothing matches this"]\n',
        file="subscribers.yaml",
    ), now=NOW)  # fmt: skip
    report = await send_all(deps)
    await deps.mailer.aclose()
    assert report.sent == 3
    # The two digests were signed and queued spliced: their shared runs are stored once.
    assert deps.store.db.conn.execute("SELECT COUNT(*) FROM message_parts").fetchone()[0] > 0
    (note,) = [r for r in smtp_server.received if "carol@" in str(r.message["To"])]
    assert note.content.startswith(b"DKIM-Signature:")
    assert dkim.verify(note.content, dnsfunc=dns_for(dkim_txt_record(DKIM)))
