"""text.py: folding, word spans, terms, and header cleaning."""

from __future__ import annotations

import pytest

from digestd.core.model import Term
from digestd.core.text import clean_header, collapse, find_term, fold, fold_words, make_term, tokens


@pytest.mark.parametrize(
    ("raw", "folded"),
    [
        ("Étude", "etude"),
        ("KV-Cache", "kv-cache"),
        ("Straße", "strasse"),
        ("ÅNGSTRÖM", "angstrom"),
        ("ﬁne", "fine"),  # compatibility ligature
        ("", ""),
    ],
)
def test_fold(raw: str, folded: str) -> None:
    assert fold(raw) == folded


def test_tokens_spans_point_into_the_original() -> None:
    text = "Mixture-of-Experts für KV-Cache, Étude (LLMs)"
    toks = tokens(text)
    assert [w for w, _, _ in toks] == [
        "mixture", "of", "experts", "fur", "kv", "cache", "etude", "llms",
    ]  # fmt: skip
    assert [text[s:e] for _, s, e in toks] == [
        "Mixture", "of", "Experts", "für", "KV", "Cache", "Étude", "LLMs",
    ]  # fmt: skip


def test_tokens_underscore_and_punctuation_split_words() -> None:
    assert fold_words("snake_case, don't; a.b") == ("snake", "case", "don", "t", "a", "b")


def test_tokens_folding_that_splits_keeps_the_span() -> None:
    # '½' folds to '1⁄2': two words, both pointing at the one original character.
    assert tokens("½") == [("1", 0, 1), ("2", 0, 1)]


def test_tokens_decomposed_accent_stays_one_word() -> None:
    assert fold_words("e\u0301tude") == ("etude",)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("kv cache", Term("kv cache", ("kv", "cache"), False)),
        ("  LLM* ", Term("LLM*", ("llm",), True)),
        ("Mixture-of-Experts", Term("Mixture-of-Experts", ("mixture", "of", "experts"), False)),
        ("*", Term("*", (), False)),
        ("--", Term("--", (), False)),
    ],
)
def test_make_term(raw: str, expected: Term) -> None:
    assert make_term(raw) == expected


@pytest.mark.parametrize(
    ("term", "field", "hits"),
    [
        ("kv cache", "Faster KV-Cache and kv cache", [(1, 2), (4, 5)]),
        ("llm", "LLMs and LLM", [(2, 2)]),
        ("llm*", "LLMs and LLM", [(0, 0), (2, 2)]),
        ("mixture of experts", "Mixture-of-Experts", [(0, 2)]),
        ("of expert*", "mixture of expertise", [(1, 2)]),
        ("cache kv", "kv cache", []),
        ("a b c", "a b", []),
        ("--", "a b", []),
    ],
)
def test_find_term(term: str, field: str, hits: list[tuple[int, int]]) -> None:
    assert find_term(make_term(term), tokens(field)) == hits
    assert find_term(make_term(term), fold_words(field)) == hits


def test_collapse() -> None:
    assert collapse("  a\n\tb   c \n") == "a b c"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Hello\r\nBcc: x@y", "Hello Bcc: x@y"),
        ("a\x00b\x1bc\x7fd\x85e", "a b c d e"),
        ("line\u2028sep\u2029para", "line sep para"),
        ("  tabs\tand   spaces ", "tabs and spaces"),
    ],
)
def test_clean_header_removes_breaks_and_controls(raw: str, clean: str) -> None:
    assert clean_header(raw) == clean


def test_clean_header_bounds_length() -> None:
    assert clean_header("x" * 200) == "x" * 200
    long = clean_header("x" * 500)
    assert len(long) == 200
    assert long.endswith("…")
    assert clean_header("word " * 10, limit=12) == "word word w…"
    assert len(clean_header("word " * 10, limit=12)) <= 12
