"""query.py: the grammar (operators, precedence, phrases, fields, prefixes, comparisons) and its errors."""

from __future__ import annotations

import pytest

from digestd.core.text import make_term
from digestd.rules.query import (
    MAX_DEPTH,
    And,
    Compare,
    Name,
    Node,
    Not,
    Or,
    QuerySyntaxError,
    Text,
    caret,
    parse_query,
)


def t(text: str, *fields: str) -> Text:
    return Text(make_term(text), tuple(fields) or None)  # type: ignore[arg-type]


def show(node: Node) -> str:
    """A compact, fully parenthesised rendering, to state precedence plainly."""
    if isinstance(node, Text):
        prefix = f"{node.fields[0]}:" if node.fields else ""
        return prefix + " ".join(node.term.words) + ("*" if node.term.prefix else "")
    if isinstance(node, Name):
        return f"{node.kind}={node.value}"
    if isinstance(node, Compare):
        return f"{node.field}{node.op}{node.value}"
    if isinstance(node, Not):
        return f"-{show(node.item)}"
    joiner = " & " if isinstance(node, And) else " | "
    return "(" + joiner.join(show(i) for i in node.items) + ")"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("fpga", "fpga"),
        ("fpga accelerator", "(fpga & accelerator)"),
        ("fpga AND accelerator", "(fpga & accelerator)"),
        ("a OR b", "(a | b)"),
        ("a OR b c", "(a | (b & c))"),
        ("a b OR c", "((a & b) | c)"),
        ("a AND b OR c AND d", "((a & b) | (c & d))"),
        ("(a OR b) c", "((a | b) & c)"),
        ("a (b OR (c d))", "(a & (b | (c & d)))"),
        ("-survey", "-survey"),
        ("NOT survey", "-survey"),
        ("NOT NOT survey", "--survey"),
        ("a -b", "(a & -b)"),
        ("a NOT b OR c", "((a & -b) | c)"),
        ("-(a OR b)", "-(a | b)"),
        (
            '"kv cache" OR (fpga AND accelerator) -survey',
            "(kv cache | ((fpga & accelerator) & -survey))",
        ),
        ("state-space models", "(state space & models)"),
        ("llm*", "llm*"),
        ('"large language model*"', "large language model*"),
        ("and or not", "(and & or & not)"),
    ],
)
def test_operators_and_precedence(query: str, expected: str) -> None:
    assert show(parse_query(query)) == expected


def test_the_issue_examples() -> None:
    assert parse_query('title:"mixture of experts" AND upvotes>=20') == And(
        (t("mixture of experts", "title"), Compare("upvotes", ">=", 20))
    )
    assert parse_query('author:"Tri Dao" OR org:microsoft') == Or(
        (Name("authors", "tri dao"), Name("orgs", "microsoft"))
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("title:moe", t("moe", "title")),
        ("abstract:moe", t("moe", "abstract")),
        ("TITLE:moe", t("moe", "title")),
        ('author:"Anika García"', Name("authors", "anika garcia")),
        ("author:Dao", Name("authors", "dao")),
        ('org:"Hugging Face"', Name("orgs", "hugging face")),
        ("cat:cs.LG", Name("categories", "cs.lg")),
        ("cat:cs.*", Name("categories", "cs.*")),
        ("source:arxiv-cs", Name("sources", "arxiv-cs")),
    ],
)
def test_field_prefixes(query: str, expected: Node) -> None:
    assert parse_query(query) == expected


def test_a_field_applies_to_a_group() -> None:
    assert show(parse_query("title:(moe OR -dense)")) == "(title:moe | -title:dense)"
    assert parse_query("author:(Dao OR Gu)") == Or((Name("authors", "dao"), Name("authors", "gu")))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("upvotes>=20", Compare("upvotes", ">=", 20)),
        ("upvotes >= 20", Compare("upvotes", ">=", 20)),
        ("comments<3", Compare("comments", "<", 3)),
        ("comments>0", Compare("comments", ">", 0)),
        ("upvotes<=5", Compare("upvotes", "<=", 5)),
        ("upvotes=7", Compare("upvotes", "=", 7)),
        ("upvotes!=7", Compare("upvotes", "!=", 7)),
    ],
)
def test_comparisons(query: str, expected: Compare) -> None:
    assert parse_query(query) == expected


@pytest.mark.parametrize(
    ("op", "value", "actual", "holds"),
    [
        (">=", 5, 5, True),
        (">=", 5, 4, False),
        ("<=", 5, 5, True),
        ("<=", 5, 6, False),
        (">", 5, 5, False),
        (">", 5, 6, True),
        ("<", 5, 4, True),
        ("<", 5, 5, False),
        ("=", 5, 5, True),
        ("=", 5, 4, False),
        ("!=", 5, 4, True),
        ("!=", 5, 5, False),
    ],
)
def test_compare_semantics(op: str, value: int, actual: int, holds: bool) -> None:
    assert Compare("upvotes", op, value).holds(actual) is holds  # type: ignore[arg-type]


def test_upvotes_without_an_operator_is_a_word() -> None:
    assert parse_query("upvotes") == t("upvotes")


@pytest.mark.parametrize(
    ("query", "column", "message"),
    [
        ("", 1, "the query is empty"),
        ("   ", 1, "the query is empty"),
        ('"kv cache', 1, "unterminated quoted phrase"),
        ("a OR", 5, "the query ends where a term was expected"),
        ("(a OR b", 8, "missing ')' for the '(' at column 1"),
        ("a OR b)", 7, "unexpected ')'"),
        ("a AND OR b", 7, "expected a term, found 'OR'"),
        ("()", 2, "expected a term, found ')'"),
        ("fpga -", 6, "'-' has no letters or digits"),
        ('"--"', 1, "'--' has no letters or digits"),
        ("upvotes>=many", 10, "expected a whole number after >="),
        ("upvotes>=", 10, "expected a whole number after >="),
        ("titel:moe", 1, "unknown field 'titel:'"),
        ("a foo: b", 3, "unknown field 'foo:'"),
        ("title: moe", 8, "expected a term right after 'title:'"),
        ("title:(a OR title:b)", 13, "'title:' inside a field group"),
        ("title:(upvotes>3)", 8, "a comparison inside a field group"),
        ("author:--", 8, "'--' has no letters or digits"),
    ],
)
def test_syntax_errors_carry_the_column(query: str, column: int, message: str) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        parse_query(query)
    assert info.value.column == column
    assert info.value.message.startswith(message)
    assert str(info.value).endswith(f"at column {column} of the query")


def test_caret_points_at_the_column() -> None:
    assert caret("a OR b)", 7) == "    a OR b)\n          ^"
    assert caret("a\tb", 3, indent="") == "a b\n  ^"


def test_deep_nesting_parses() -> None:
    """Up to MAX_DEPTH levels; deeper is a positioned error (tests/test_faults_reload.py)."""
    query = "(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH
    assert parse_query(query) == t("a")
    with pytest.raises(QuerySyntaxError, match="too deep") as info:
        parse_query("(" + query + ")")
    assert info.value.column == MAX_DEPTH + 1
