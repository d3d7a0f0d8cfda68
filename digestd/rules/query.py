"""The `query:` rule key: one search-syntax string → a small boolean tree, or an error with its column.

Grammar (recursive descent, one function per line):

    query   := or END
    or      := and ("OR" and)*
    and     := unary (["AND"] unary)*          juxtaposition is AND
    unary   := ("-" | "NOT") unary | primary
    primary := "(" or ")" | FIELD ":" (atom | "(" or ")") | COMPARE | atom
    atom    := WORD | "quoted phrase"          a trailing * makes the last word a prefix

AND binds tighter than OR. Fields: title, abstract (term searched there only), author, org (full
name, folded), cat (arXiv category, `cs.*` for an archive), source (configured source name).
Comparisons: upvotes|comments with >=, <=, >, <, =, != and a whole number; `similar>=0.35` (or
`>`): the reader's relevance score (digestd.relevance) against a number from 0 to 1.

Owned here: tokenising and parsing; the tree's types are plain values in core/model.py (a
`Rule` holds one). Evaluation lives in match.py (naive) and
index.py (fast); both walk these nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from digestd.core.model import And, Compare, Field, Name, NameKind, Node, Not, Or, Similar, Text
from digestd.core.text import fold_words, make_term

__all__ = [
    "And",
    "Compare",
    "Name",
    "NameKind",
    "Node",
    "Not",
    "Or",
    "QuerySyntaxError",
    "Similar",
    "Text",
    "caret",
    "fold_name",
    "parse_query",
    "shared_term",
]


class QuerySyntaxError(ValueError):
    """A query that does not parse; `column` is 1-based inside the query string."""

    def __init__(self, message: str, column: int, query: str) -> None:
        self.message = message
        self.column = column
        self.query = query
        super().__init__(f"{message} at column {column} of the query")


def caret(query: str, column: int, indent: str = "    ") -> str:
    """The query on one line and a caret under `column`, for error messages."""
    shown = query.replace("\n", " ").replace("\t", " ")
    return f"{indent}{shown}\n{indent}{' ' * (column - 1)}^"


# Subscribers share terms (in lists and in queries); a Term is frozen, so one instance serves them all.
shared_term = lru_cache(maxsize=1 << 16)(make_term)

_FIELDS = {
    "title": "title",
    "abstract": "abstract",
    "author": "authors",
    "org": "orgs",
    "cat": "categories",
    "source": "sources",
}
_COMPARE = re.compile(r'(upvotes|comments)\s*(>=|<=|!=|=|>|<)\s*([^\s()"]*)')
_SIMILAR = re.compile(r'similar\s*(>=|<=|!=|=|>|<)\s*([^\s()"]*)', re.IGNORECASE)
_SCORE = re.compile(r"(?:0|1)(?:\.\d{1,6})?|\.\d{1,6}")  # a relevance score: 0 to 1
_NUMBER = re.compile(r"\d{1,9}")  # bounded: a comparison against 10**400 is a typo, not a rule
_WORD_END = re.compile(r'[\s()"]')
_SPACES = re.compile(r"\s*")
_FIELD_PREFIX = re.compile(r"([A-Za-z]+):")
# Parentheses and negations nest the parser's (and every evaluator's) recursion, four frames a level;
# a real query needs a few levels, and a bound keeps a hostile one from Python's recursion limit.
MAX_DEPTH = 100


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: Literal["(", ")", "-", "AND", "OR", "NOT", "FIELD", "CMP", "WORD", "PHRASE", "END"]
    text: str
    column: int  # 1-based
    value: object = None


def _tokens(query: str) -> list[_Tok]:
    out: list[_Tok] = []
    i, n = 0, len(query)
    while (i := _SPACES.match(query, i).end()) < n:  # type: ignore[union-attr]
        c = query[i]
        if c in "()":
            out.append(_Tok(c, c, i + 1))  # type: ignore[arg-type]
            i += 1
        elif c == '"':
            end = query.find('"', i + 1)
            if end < 0:
                raise QuerySyntaxError("unterminated quoted phrase", i + 1, query)
            out.append(_Tok("PHRASE", query[i + 1 : end], i + 1))
            i = end + 1
        elif c == "-" and i + 1 < n and not query[i + 1].isspace() and _starts(out, query, i):
            out.append(_Tok("-", c, i + 1))
            i += 1
        else:
            i = _word(query, i, out)
    out.append(_Tok("END", "", n + 1))
    return out


def _starts(out: list[_Tok], query: str, i: int) -> bool:
    """A '-' negates only at the start of a token: 'state-space' stays one word."""
    return i == 0 or query[i - 1].isspace() or query[i - 1] in "()"


def _similar(query: str, m: re.Match[str]) -> Similar:
    op, number = m.group(1), m.group(2)
    if op not in (">=", ">"):
        raise QuerySyntaxError("similar takes >= or > (similar>=0.35)", m.start(1) + 1, query)
    if not _SCORE.fullmatch(number) or float(number) > 1:
        raise QuerySyntaxError(
            "expected a score from 0 to 1 after similar" + op, m.start(2) + 1, query
        )
    return Similar(min_score=float(number), strict=op == ">")


def _word(query: str, i: int, out: list[_Tok]) -> int:
    if m := _SIMILAR.match(query, i):
        out.append(_Tok("CMP", m.group(), i + 1, _similar(query, m)))
        return m.end()
    if m := _COMPARE.match(query, i):
        number = m.group(3)
        if not _NUMBER.fullmatch(number):
            where = m.start(3) + 1
            raise QuerySyntaxError(f"expected a whole number after {m.group(2)}", where, query)
        node = Compare(m.group(1), m.group(2), int(number))  # type: ignore[arg-type]
        out.append(_Tok("CMP", m.group(), i + 1, node))
        return m.end()
    if (m := _FIELD_PREFIX.match(query, i)) and m.group(1).lower() in _FIELDS:
        out.append(_Tok("FIELD", m.group(), i + 1, _FIELDS[m.group(1).lower()]))
        return m.end()
    end_match = _WORD_END.search(query, i)
    end = end_match.start() if end_match else len(query)
    word = query[i:end]
    if word in ("AND", "OR", "NOT"):
        out.append(_Tok(word, word, i + 1))  # type: ignore[arg-type]
    elif (m := _FIELD_PREFIX.match(word)) and m.end() < len(word) or word.endswith(":"):
        field = word.split(":", 1)[0]
        names = ", ".join(f"{k}:" for k in _FIELDS)
        message = f"unknown field '{field}:' (use {names}, or quote the text)"
        raise QuerySyntaxError(message, i + 1, query)
    else:
        out.append(_Tok("WORD", word, i + 1))
    return end


def parse_query(query: str) -> Node:
    """Parse `query` into a tree.

    :raises QuerySyntaxError: with the 1-based column inside `query` where it went wrong.
    """
    if not query.strip():
        raise QuerySyntaxError("the query is empty", 1, query)
    return _Parser(query).parse()


class _Parser:
    def __init__(self, query: str) -> None:
        self.query = query
        self.toks = _tokens(query)
        self.pos = 0
        self.depth = 0

    def parse(self) -> Node:
        node = self.or_(None)
        tok = self.peek()
        if tok.kind != "END":
            raise self.error(tok, "unexpected ')'" if tok.kind == ")" else "unexpected text")
        return node

    def peek(self) -> _Tok:
        return self.toks[self.pos]

    def take(self) -> _Tok:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def error(self, tok: _Tok, message: str) -> QuerySyntaxError:
        return QuerySyntaxError(message, tok.column, self.query)

    def or_(self, field: str | None) -> Node:
        items = [self.and_(field)]
        while self.peek().kind == "OR":
            self.take()
            items.append(self.and_(field))
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_(self, field: str | None) -> Node:
        items = [self.unary(field)]
        while self.peek().kind not in ("OR", ")", "END"):
            if self.peek().kind == "AND":
                self.take()
            items.append(self.unary(field))
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self, field: str | None) -> Node:
        if self.peek().kind in ("-", "NOT"):
            self.deeper(self.take())
            node = Not(self.unary(field))
            self.depth -= 1
            return node
        return self.primary(field)

    def deeper(self, tok: _Tok) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(tok, f"the query nests too deep (more than {MAX_DEPTH} levels)")

    def primary(self, field: str | None) -> Node:
        tok = self.take()
        if tok.kind == "(":
            self.deeper(tok)
            node = self.or_(field)
            if self.peek().kind != ")":
                raise self.error(self.peek(), f"missing ')' for the '(' at column {tok.column}")
            self.take()
            self.depth -= 1
            return node
        if tok.kind == "FIELD":
            if field is not None:
                raise self.error(tok, f"'{tok.text}' inside a field group")
            nxt = self.peek()
            if nxt.column != tok.column + len(tok.text):
                raise self.error(nxt, f"expected a term right after '{tok.text}'")
            return self.primary(str(tok.value))
        if tok.kind == "CMP":
            if field is not None:
                raise self.error(tok, "a comparison inside a field group")
            assert isinstance(tok.value, Compare | Similar)
            return tok.value
        if tok.kind in ("WORD", "PHRASE"):
            return self.atom(tok, field)
        if tok.kind == "END":
            raise self.error(tok, "the query ends where a term was expected")
        raise self.error(tok, f"expected a term, found '{tok.text}'")

    def atom(self, tok: _Tok, field: str | None) -> Node:
        if field in ("authors", "orgs", "categories", "sources"):
            value = fold_name(tok.text, field)  # type: ignore[arg-type]
            if not value.rstrip("*"):
                raise self.error(tok, f"'{tok.text}' has no letters or digits")
            return Name(field, value)  # type: ignore[arg-type]
        term = shared_term(tok.text)
        if not term.words:
            raise self.error(tok, f"'{tok.text}' has no letters or digits")
        fields: tuple[Field, ...] | None = (field,) if field else None  # type: ignore[assignment]
        return Text(term, fields)


def fold_name(value: str, kind: NameKind) -> str:
    """Names compare folded: people and organisations by their words, categories and sources by case.

    A trailing `*` on a category (`cs.*`) keeps the prefix form; other kinds compare whole names.
    """
    if kind in ("categories", "sources"):
        return value.strip().casefold()
    return " ".join(fold_words(value))
