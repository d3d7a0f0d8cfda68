"""Page tokens: bound to purpose, address, reader row and expiry; form tokens to form, page and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from digestd.mail.linktokens import derive_key
from digestd.mail.pagetokens import (
    FORM_BUCKET,
    form_token,
    form_token_ok,
    page_key,
    page_token,
    parse_page_token,
)

SECRET = b"s" * 32
NOW = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)


def test_a_token_verifies_only_for_its_purpose_address_binding_and_time() -> None:
    token = page_token(SECRET, "confirm", 7, "Ann@Example.org", "row-1", NOW + timedelta(hours=48))
    parsed = parse_page_token(token)
    assert parsed is not None and parsed.subscriber_id == 7
    assert parsed.verify(page_key(SECRET, "confirm"), "ann@example.org", "row-1", now=NOW)
    assert not parsed.verify(derive_key(SECRET, "manage"), "ann@example.org", "row-1", now=NOW)
    assert not parsed.verify(derive_key(SECRET, "confirm"), "ann@example.org", "row-1", now=NOW)
    assert not parsed.verify(page_key(SECRET, "confirm"), "bob@example.org", "row-1", now=NOW)
    assert not parsed.verify(page_key(SECRET, "confirm"), "ann@example.org", "row-2", now=NOW)
    later = NOW + timedelta(hours=48)
    assert not parsed.verify(page_key(SECRET, "confirm"), "ann@example.org", "row-1", now=later)


@given(st.text(max_size=60))
def test_anything_else_parses_to_none_or_fails_to_verify(text: str) -> None:
    parsed = parse_page_token(text)
    if parsed is not None:
        assert not parsed.verify(page_key(SECRET, "confirm"), "ann@example.org", "", now=NOW)


def test_form_tokens_last_one_to_two_buckets_and_bind_form_and_page() -> None:
    token = form_token(SECRET, "prefs", "page-A", now=NOW)
    assert form_token_ok(SECRET, "prefs", "page-A", token, now=NOW + FORM_BUCKET)
    assert not form_token_ok(SECRET, "prefs", "page-A", token, now=NOW + 2 * FORM_BUCKET)
    assert not form_token_ok(SECRET, "prefs", "page-B", token, now=NOW)
    assert not form_token_ok(SECRET, "confirm", "page-A", token, now=NOW)
    assert not form_token_ok(b"t" * 32, "prefs", "page-A", token, now=NOW)
