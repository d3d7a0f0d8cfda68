"""VERP tokens: each message's own envelope sender, verified against the address it went to."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from digestd.bounces.verp import BOUNCE_PURPOSE, verp_sender, verp_tokens
from digestd.core.addresses import check_address
from digestd.mail import linktokens

SECRET = b"s" * 32
KEY = linktokens.derive_key(SECRET, BOUNCE_PURPOSE)
BASE = "bounces@lab.example.org"


def _token(address: str) -> str:
    (token,) = verp_tokens(BASE, address)
    return token


@given(st.integers(min_value=1, max_value=2**62))
def test_a_token_names_its_message_and_verifies_for_its_address(outbox_id: int) -> None:
    sender = verp_sender(BASE, KEY, outbox_id, "Ada@Example.org")
    assert check_address(sender) == sender  # a plain addr-spec MAIL FROM accepts
    assert sender.startswith("bounces+") and sender.endswith("@lab.example.org")
    parsed = linktokens.parse_bounce(_token(sender))
    assert parsed is not None and parsed.outbox_id == outbox_id
    assert parsed.verify(KEY, "ada@example.org")  # the one address key: case does not matter
    assert not parsed.verify(KEY, "eve@example.org")


def test_a_token_survives_case_folding_on_the_way_back() -> None:
    sender = verp_sender(BASE, KEY, 42, "ada@example.org")
    parsed = linktokens.parse_bounce(_token(sender.upper()))
    assert parsed is not None and parsed.verify(KEY, "ada@example.org")


def test_forged_and_swapped_tokens_do_not_verify() -> None:
    token = _token(verp_sender(BASE, KEY, 42, "ada@example.org"))
    forged = token[:-1] + ("a" if token[-1] != "a" else "b")
    parsed = linktokens.parse_bounce(forged)
    assert parsed is None or not parsed.verify(KEY, "ada@example.org")
    # Another id with the same MAC: the MAC binds the id.
    other = linktokens.parse_bounce(_token(verp_sender(BASE, KEY, 43, "ada@example.org")))
    assert other is not None
    swapped = linktokens.BounceToken(42, other.mac)
    assert not swapped.verify(KEY, "ada@example.org")
    # A key of another purpose (the unsubscribe links') makes no valid bounce token.
    unsub_key = linktokens.derive_key(SECRET, "unsubscribe")
    parsed = linktokens.parse_bounce(token)
    assert parsed is not None and not parsed.verify(unsub_key, "ada@example.org")


def test_what_cannot_be_a_token_is_refused() -> None:
    for junk in ("", "short", "0" * 32, "a" * 31, "a" * 33, "ä" * 32):
        assert linktokens.parse_bounce(junk) is None


def test_tokens_are_found_only_for_the_base_address() -> None:
    token = "b" * 32
    text = (
        f"To: bounces+{token}@lab.example.org\nX: xbounces+{'c' * 32}@lab.example.org\n"
        f"Y: bounces+{'d' * 32}@lab.example.org.evil\nZ: <BOUNCES+{token.upper()}@LAB.example.org>"
    )
    assert verp_tokens(BASE, text) == [token]
