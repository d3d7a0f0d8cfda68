"""`Spliced` messages: shared parts put back where they were taken from, whatever the layout."""

from __future__ import annotations

import pytest

from digestd.mail.parts import Part, Spliced, signed

A, B = Part("a", b"AAAA"), Part("b", b"BB")


@pytest.mark.parametrize(
    ("spliced", "whole"),
    [
        (Spliced(b"xyz"), b"xyz"),
        (Spliced(b"xyz", ((0, A),)), b"AAAAxyz"),
        (Spliced(b"xyz", ((3, A),)), b"xyzAAAA"),
        (Spliced(b"xyz", ((1, A), (2, B))), b"xAAAAyBBz"),
        (Spliced(b"xyz", ((1, A), (1, B))), b"xAAAABByz"),  # adjacent parts keep their order
        (Spliced(b"", ((0, A), (0, B))), b"AAAABB"),
    ],
)
def test_whole_puts_each_part_back_at_its_offset(spliced: Spliced, whole: bytes) -> None:
    assert spliced.whole() == whole
    assert spliced.prefixed(b"H: v\r\n").whole() == b"H: v\r\n" + whole


def test_the_canonical_mark_comes_back_and_a_prefix_drops_it() -> None:
    message = Spliced(b"x\r\n", ((0, A),), canonical=True)
    assert message.canonical and type(message.whole()) is bytes  # a field, not a bytes subclass
    assert not message.prefixed(b"H: v\r\n").canonical
    assert not Spliced(b"x\r\n").canonical


def test_a_signature_put_before_the_message_keeps_it_spliced() -> None:
    message = Spliced(b"Subject: s\r\n\r\nbody\r\n", ((14, A),))
    message_signed = signed(lambda data: b"DKIM-Signature: v=1\r\n" + data, message)
    assert message_signed.parts[0][1] is A
    assert message_signed.whole() == b"DKIM-Signature: v=1\r\n" + message.whole()


def test_a_signer_that_rewrites_the_message_gets_its_bytes_queued_whole() -> None:
    message = Spliced(b"Subject: s\r\n\r\nbody\r\n", ((14, A),))
    message_signed = signed(lambda data: data.replace(b"body", b"BODY"), message)
    assert message_signed == Spliced(b"Subject: s\r\n\r\nAAAABODY\r\n")
