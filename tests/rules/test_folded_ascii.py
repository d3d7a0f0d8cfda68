"""`FoldedText.of` takes a shortcut for ASCII text; it must equal the character-by-character path."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from digestd.rules.patterns import FoldedText

ascii_texts = st.text(alphabet="aZ09 .-\t\n\r\x0b\x0c\x1c\x1f", max_size=40)


@given(ascii_texts)
def test_the_ascii_shortcut_equals_the_general_path(text: str) -> None:
    fast = FoldedText.of(text)
    # One non-ASCII character at the end sends the text down the general path; it folds to one
    # character ("é" → "e") that sits at index len(text).
    slow = FoldedText.of(text + "é")
    assert slow.text == fast.text + "e"
    assert slow.origin[:-2] + (len(text),) == fast.origin
