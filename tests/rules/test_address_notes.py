"""`digestd check` skips its second reading of the subscribers file only when no note can come of it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digestd.core.addresses import address_key
from digestd.rules.subscribers import (
    _sent_as,
    address_notes,
    load_subscribers,
    may_have_address_notes,
    subscriber_address_paths,
)


def _file(emails: list[str]) -> str:
    lines = ["subscribers:"]
    for email in emails:
        lines += [f'  - email: "{email}"', "    rules:", "      - any: [graph]"]
    return "\n".join(lines) + "\n"


def _notes(text: str) -> list[object]:
    return list(address_notes(text, file="s.yaml", paths=subscriber_address_paths))


@pytest.mark.parametrize(
    ("emails", "possible"),
    [
        (["a@example.org", "b@mail.example.com"], False),
        (["a@example.org", "ops@mailhub"], True),  # a single-label domain
        (["anna@bücher.de"], True),  # an IDN domain, sent as its A-labels
    ],
)
def test_skipped_only_when_no_note_is_possible(emails: list[str], possible: bool) -> None:
    text = _file(emails)
    assert may_have_address_notes(text, load_subscribers(text, file="s.yaml")) is possible
    assert bool(_notes(text)) is possible


_LABEL = st.sampled_from(["example", "org", "bücher", "de", "mailhub", "xn--bcher-kva", "a-b"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_LABEL, min_size=1, max_size=3), min_size=1, max_size=4, unique_by=tuple))
def test_a_note_is_never_skipped(domains: list[list[str]]) -> None:
    text = _file([f"u{i}@{'.'.join(d)}" for i, d in enumerate(domains)])
    subs = load_subscribers(text, file="s.yaml")
    if _notes(text):
        assert may_have_address_notes(text, subs)


_ASCII_ADDRESS = st.builds(
    "{}{}@{}{}".format,
    st.sampled_from(["", " ", "\t"]),
    st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=12),
    st.text(st.sampled_from("abcXYZ09.-_ \x00@"), max_size=14),
    st.sampled_from(["", " ", ".", ".1", ".org "]),
)


@settings(max_examples=300, deadline=None)
@given(_ASCII_ADDRESS)
def test_an_ascii_address_keys_as_written(email: str) -> None:
    """The duplicate check keys an ASCII address without checking it: the same key either way."""
    assert address_key(email) == address_key(_sent_as(email))
