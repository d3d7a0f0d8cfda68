"""Each bounce and complaint fixture (real formats: Postfix, Exim, Gmail, Outlook, an RFC 5965 ARF
report) through the parser, and hostile messages that must be ignored without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from digestd.bounces.parse import parse_report

FIXTURES = Path(__file__).parents[1] / "fixtures" / "bounces"
VERP = "bounces@lab.example.org"
TOKEN = "a" * 32  # the fixtures' placeholder token; verification is the store's business


@pytest.mark.parametrize(
    ("name", "kind", "status", "recipient"),
    [
        ("postfix_user_unknown.eml", "permanent", "5.1.1", "ada@uni.example.edu"),
        ("postfix_delayed.eml", "temporary", "4.4.1", "grace@slow.example.net"),
        ("exim_failed.eml", "permanent", "5.0.0", "alan@old.example.com"),
        ("gmail_no_such_user.eml", "permanent", "5.1.1", "no.such.reader@gmail.com"),
        ("outlook_recipient_not_found.eml", "permanent", "5.1.10", "margaret@contoso-lab.example"),
        ("arf_abuse.eml", "complaint", None, "barbara@mailprovider.example"),
    ],
)
def test_each_fixture_is_read_as_its_kind(
    name: str, kind: str, status: str | None, recipient: str
) -> None:
    report = parse_report((FIXTURES / name).read_bytes(), verp=VERP)
    assert report.kind == kind
    assert report.status == status
    assert report.recipients == (recipient,)
    assert report.tokens == (TOKEN,)  # from the headers of the report or the returned message
    assert report.detail and "\n" not in report.detail


def test_a_plain_text_bounce_without_a_report_part_is_ignored() -> None:
    """Old Exim bounces are prose: nothing machine-readable to act on."""
    report = parse_report((FIXTURES / "exim_legacy_plain.eml").read_bytes(), verp=VERP)
    assert report.kind == "ignored" and "not a report" in report.detail


def test_without_verp_no_token_is_sought() -> None:
    report = parse_report((FIXTURES / "postfix_user_unknown.eml").read_bytes(), verp=None)
    assert report.kind == "permanent" and report.tokens == ()


def test_tokens_of_another_base_address_are_not_ours() -> None:
    data = (FIXTURES / "postfix_user_unknown.eml").read_bytes()
    assert parse_report(data, verp="returns@lab.example.org").tokens == ()
    assert parse_report(data, verp="bounces@other.example.org").tokens == ()


def test_a_huge_message_is_ignored_unread() -> None:
    data = (FIXTURES / "postfix_user_unknown.eml").read_bytes() + b"x" * (3 * 1024 * 1024)
    report = parse_report(data, verp=VERP)
    assert report.kind == "ignored" and "too large" in report.detail


def _report(parts: str, *, report_type: str = "delivery-status") -> bytes:
    return (
        "From: MAILER-DAEMON@example.org\r\n"
        f"To: bounces+{TOKEN}@lab.example.org\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type={report_type}; boundary="B"\r\n\r\n'
        f"{parts}"
    ).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xfe garbage \r\n\r\n\x00",
        _report("--B\r\nContent-Type: text/plain\r\n\r\nno status part\r\n--B--\r\n"),
        _report("no boundary at all, and no end"),
        _report("--B\r\nContent-Type: message/delivery-status\r\n\r\nStatus: banana\r\n--B--"),
        _report("--B\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n--B--"),
        _report("--B\r\nContent-Type: message/delivery-status\r\n\r\n" + "X: y\r\n" * 50000),
        _report("--B\r\nContent-Type: message/feedback-report\r\n\r\n", report_type="feedback-report"),
    ],
    ids=["empty", "binary", "no-status", "no-boundary", "bad-status", "self-nested", "huge-header",
         "empty-feedback"],
)  # fmt: skip
def test_malformed_messages_are_ignored_never_raise(data: bytes) -> None:
    report = parse_report(data, verp=VERP)
    assert report.kind == "ignored"
    assert report.detail


def test_a_mime_tree_too_large_is_ignored() -> None:
    inner = "".join(
        f"--B{i}\r\nContent-Type: multipart/mixed; boundary=B{i + 1}\r\n\r\n" for i in range(300)
    )
    data = (
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; "
        f'boundary="B0"\r\n\r\n{inner}'
    ).encode()
    report = parse_report(data, verp=VERP)
    assert report.kind == "ignored"


def test_a_delivered_notice_is_not_a_bounce() -> None:
    data = _report(
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
        "Final-Recipient: rfc822; a@example.org\r\nAction: delivered\r\nStatus: 2.0.0\r\n--B--\r\n"
    )
    report = parse_report(data, verp=VERP)
    assert report.kind == "ignored" and report.recipients == ("a@example.org",)


def test_a_base64_status_part_is_decoded() -> None:
    import base64

    fields = (
        b"Reporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; a@example.org\r\n"
        b"Action: failed\r\nStatus: 5.7.1\r\nDiagnostic-Code: smtp; 550 5.7.1 blocked\r\n"
    )
    data = _report(
        "--B\r\nContent-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(fields).decode()
        + "--B--\r\n"
    )
    report = parse_report(data, verp=VERP)
    assert (report.kind, report.status, report.recipients) == (
        "permanent",
        "5.7.1",
        ("a@example.org",),
    )


def test_a_feedback_report_that_is_not_abuse_is_ignored() -> None:
    data = (
        (FIXTURES / "arf_abuse.eml")
        .read_bytes()
        .replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    )
    report = parse_report(data, verp=VERP)
    assert report.kind == "ignored" and "not-spam" in report.detail


def test_control_characters_in_a_diagnostic_do_not_reach_the_detail() -> None:
    data = _report(
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
        "Final-Recipient: rfc822; a@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 \x1b[31mno\x07 such\r\n--B--\r\n"
    )
    report = parse_report(data, verp=VERP)
    assert report.kind == "permanent"
    assert "\x1b" not in report.detail and "\x07" not in report.detail


def test_a_token_in_quoted_printable_returned_headers_is_found() -> None:
    data = _report(
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
        "Final-Recipient: rfc822; a@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: quoted-printable\r\n"
        f"\r\nReturn-Path: <bounces+{'b' * 20}=\r\n{'b' * 12}@lab.example.org>\r\n--B--\r\n"
    )
    report = parse_report(data, verp=VERP)
    assert report.tokens == (TOKEN, "b" * 32)  # the report's own To first
