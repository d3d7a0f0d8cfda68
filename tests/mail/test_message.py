"""build_message: parse the bytes back with the stdlib and check what a mail client would see."""

from __future__ import annotations

import email
import email.header
import email.policy
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digestd.core.addresses import parse_mailbox
from digestd.core.model import Rendered
from digestd.mail.mime import build_message, encode_words

DATE = datetime(2026, 11, 27, 7, 0, tzinfo=UTC)
HOSTILE = [
    "<script>alert(1)</script>",
    "Nice paper\r\nBcc: victim@example.net",
    "A subject=?UTF-8?Q?=0A?=Bcc: injected@example.com",
    "Line\nbreak\u2028and\x00nul\x1b[31m",
    "Ünïcödé — 数学 " * 20,
]


def build(subject: str = "Hello", **kwargs: object) -> bytes:
    options: dict[str, object] = {
        "sender": "Paper Digest <digest@example.org>",
        "to": "ann@example.org",
        "to_name": "Ann Example",
        "message_id": "<digest.2026-11-27.abc123@example.org>",
        "date": DATE,
    }
    options.update(kwargs)
    rendered = Rendered(subject=subject, text="Plain body — é\n", html="<p>HTML body — é</p>")
    return build_message(rendered, **options).whole()  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    return cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))


def test_headers_parts_and_bodies_round_trip() -> None:
    data = build(headers={"List-Id": "Paper Digest <digest.example.org>"})
    msg = parse(data)

    assert msg["From"] == "Paper Digest <digest@example.org>"
    assert msg["From"].addresses[0].addr_spec == "digest@example.org"
    assert msg["To"].addresses[0].display_name == "Ann Example"
    assert msg["To"].addresses[0].addr_spec == "ann@example.org"
    assert msg["Subject"] == "Hello"
    assert msg["Date"].datetime == DATE
    assert msg["Message-ID"] == "<digest.2026-11-27.abc123@example.org>"
    assert msg["MIME-Version"] == "1.0"
    assert msg["List-Id"] == "Paper Digest <digest.example.org>"
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.iter_parts()  # text first, the preferred HTML last (RFC 2046 §5.1.4)
    assert plain.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert plain.get_content().replace("\r\n", "\n") == "Plain body — é\n"
    assert html.get_content().rstrip() == "<p>HTML body — é</p>"
    assert not msg.defects and not plain.defects and not html.defects


def test_crlf_everywhere_and_lines_short() -> None:
    long_text = "word " * 400 + "x" * 300
    data = build_message(
        Rendered("s", long_text, long_text),
        sender="d@example.org",
        to="a@example.org",
        to_name=None,
        message_id="<m@example.org>",
        date=DATE,
    ).whole()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 76 for line in data.split(b"\r\n"))
    assert data.isascii()


def test_output_is_deterministic() -> None:
    assert build() == build()
    assert build(message_id="<a@x.org>") != build(message_id="<b@x.org>")


@pytest.mark.parametrize("title", HOSTILE)
def test_hostile_subject_cannot_inject_headers(title: str) -> None:
    data = build(subject=f"Paper digest: 1 new paper — {title}")
    msg = parse(data)

    assert msg["Bcc"] is None
    assert msg.keys() == [
        "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
    ]  # fmt: skip
    subject = str(msg["Subject"])
    assert "\n" not in subject and "\r" not in subject
    assert subject.startswith("Paper digest: 1 new paper — ")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    head = data.split(b"\r\n\r\n", 1)[0]
    assert all(line[:1] in b" \t" or b":" in line for line in head.split(b"\r\n"))


def test_encoded_word_in_subject_stays_literal() -> None:
    title = "A subject=?UTF-8?Q?=0A?=Bcc: injected@example.com"
    msg = parse(build(subject=title))
    assert msg["Subject"] == title
    assert msg["Bcc"] is None


@pytest.mark.parametrize(
    "name",
    [
        "Ännä Ünïcode",
        'Doe, "Jane" \\ Q',
        "Evil\r\nBcc: x@y",
        "=?utf-8?q?=0A?= Bcc: x@y",
        "数学 " * 30,
    ],
)
def test_display_names_are_quoted_or_encoded(name: str) -> None:
    data = build(to_name=name)
    msg = parse(data)
    [address] = msg["To"].addresses
    assert address.addr_spec == "ann@example.org"
    assert "\n" not in address.display_name
    assert msg["Bcc"] is None
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))


def test_plain_and_quoted_display_name_round_trip() -> None:
    msg = parse(build(to_name='Doe, "Jane"'))
    assert msg["To"].addresses[0].display_name == 'Doe, "Jane"'


@pytest.mark.parametrize(
    "address",
    ["a@b\r\nBcc: x@y", "<a@b>", "a@b, c@d", "a b@c", "ann", "a@b;c", "ä@example.org", ""],
)
def test_bad_addresses_raise(address: str) -> None:
    with pytest.raises(ValueError):
        build(to=address)


def test_bad_message_id_and_naive_date_raise() -> None:
    with pytest.raises(ValueError):
        build(message_id="<a b@c>\r\nBcc: x@y")
    with pytest.raises(ValueError):
        build(date=datetime(2026, 11, 27, 7, 0))


def test_extra_headers_cannot_replace_the_standard_ones() -> None:
    with pytest.raises(ValueError):
        build(headers={"Bcc": "x@y"})
    with pytest.raises(ValueError):
        build(headers={"X-Bad\r\nBcc": "x@y"})


def test_list_unsubscribe_headers_go_out_verbatim() -> None:
    url = "https://digest.example.org/u/" + "t" * 60
    msg = parse(
        build(
            headers={
                "List-Unsubscribe": f"<{url}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            }
        )
    )
    assert msg["List-Unsubscribe"] == f"<{url}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_date_keeps_its_offset() -> None:
    paris = timezone(timedelta(hours=1))
    msg = parse(build(date=datetime(2026, 11, 27, 8, 0, tzinfo=paris)))
    assert msg["Date"] == "Fri, 27 Nov 2026 08:00:00 +0100"


def test_parse_mailbox() -> None:
    assert parse_mailbox("Paper Digest <digest@localhost>") == ("Paper Digest", "digest@localhost")
    assert parse_mailbox('"Doe, J" <j@x.org>') == ("Doe, J", "j@x.org")
    assert parse_mailbox("j@x.org") == (None, "j@x.org")


def test_encoded_words_are_short_and_whole_characters() -> None:
    words = encode_words("数" * 100).split(" ")
    assert all(len(w) <= 75 for w in words)
    decoded = str(email.header.make_header(email.header.decode_header(" ".join(words))))
    assert decoded == "数" * 100


def is_canonical(data: bytes) -> bool:
    """The reference: CRLF line ends only, ending in one, no line starting with "." (RFC 5321
    §4.5.2) — what `Spliced.canonical` promises, checked the slow way."""
    crlf = data.count(b"\r\n")
    return (
        data.endswith(b"\r\n")
        and not data.startswith(b".")
        and data.count(b"\n") == crlf == data.count(b"\r")
        and b"\n." not in data
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"a", b".", b"\r\n", b"\n", b"\r", b"=2E", b" "]), max_size=40))
def test_canonical_bytes_are_exactly_those_the_sender_would_not_change(pieces: list[bytes]) -> None:
    from digestd.deliver.transports.smtp import _smtp_body

    data = b"".join(pieces)
    if is_canonical(data):
        assert _smtp_body(data) == data + b".\r\n" == _smtp_body(data, canonical=True)
    else:  # something to fix on the wire: line ends, a leading dot or the last line break
        assert _smtp_body(data) != data + b".\r\n"


def test_built_messages_need_no_dot_stuffing_even_when_a_line_starts_with_a_dot() -> None:
    plain = Rendered(subject="s", text="one\n.two\n", html="<p>" + "x" * 70 + " et al.</p>")
    built = build_message(
        plain, sender="d@example.org", to="r@example.org", to_name=None,
        message_id="<m@example.org>", date=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    data = built.whole()
    assert is_canonical(data) and built.canonical
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    text, html = (part.get_content() for part in parsed.iter_parts())  # type: ignore[attr-defined]
    assert text.splitlines() == ["one", ".two"] and html.endswith(" et al.</p>")  # unchanged
