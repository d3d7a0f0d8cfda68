"""The address check's fast path for ASCII finds exactly what the per-character Unicode scan finds."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from digestd.core.addresses import _hidden


def reference(addr: str) -> str | None:
    return next((c for c in addr if unicodedata.category(c)[0] in "CZ" and c != " "), None)


@given(st.text(max_size=40))
def test_hidden_characters_are_found_as_the_unicode_scan_finds_them(addr: str) -> None:
    assert _hidden(addr) == reference(addr)


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_the_ascii_fast_path_agrees(addr: str) -> None:
    assert _hidden(addr) == reference(addr)
