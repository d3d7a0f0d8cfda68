"""Which papers reach a subscriber, why, and what to highlight: the rule semantics, evaluated.

Owned here: `match` (papers × one subscriber → ordered `Match`es) and `rule_holds` (one rule against
one tokenised paper). Word matching itself is `text.find_term`; this module only combines it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from digestd.model import FIELDS, Field, Match, Paper, Reason, Rule, Subscriber, Term
from digestd.text import find_term, fold_words, tokens

__all__ = ["PaperTokens", "RuleHit", "match", "rule_holds"]

Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class _FieldTokens:
    words: tuple[str, ...]
    spans: tuple[Span, ...]
    vocabulary: frozenset[str]  # lets a term whose words are absent skip the scan


@dataclass(frozen=True, slots=True)
class PaperTokens:
    """A paper split into folded words once, shared by every rule evaluated against it."""

    paper: Paper
    fields: dict[Field, _FieldTokens]
    authors: dict[str, str]  # folded full name → name as written

    @classmethod
    def of(cls, paper: Paper) -> PaperTokens:
        fields = {f: _field_tokens(getattr(paper, f)) for f in FIELDS}
        authors = {" ".join(fold_words(a)): a for a in reversed(paper.authors)}
        return cls(paper=paper, fields=fields, authors=authors)


def _field_tokens(text: str) -> _FieldTokens:
    toks = tokens(text)
    words = tuple(w for w, _, _ in toks)
    return _FieldTokens(words, tuple((s, e) for _, s, e in toks), frozenset(words))


@dataclass(frozen=True, slots=True)
class RuleHit:
    """A rule that holds: its reasons, and the spans its positive terms hit, per field."""

    reasons: tuple[Reason, ...]
    spans: tuple[tuple[Field, Span], ...] = ()


def _term_spans(term: Term, field: _FieldTokens) -> list[Span]:
    needed = term.words[:-1] if term.prefix else term.words
    if not field.vocabulary.issuperset(needed):
        return []
    return [(field.spans[i][0], field.spans[j][1]) for i, j in find_term(term, field.words)]


class _Positive:
    """Collects reasons and spans of the terms that hit."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.reasons: list[Reason] = []
        self.spans: list[tuple[Field, Span]] = []

    def search(self, term: Term, paper: PaperTokens, fields: Iterable[Field]) -> bool:
        hit = False
        for f in fields:
            found = _term_spans(term, paper.fields[f])
            if found:
                hit = True
                self.reasons.append(Reason(rule=self.index, term=term.text, field=f))
                self.spans.extend((f, span) for span in found)
        return hit


def _none_hit(rule: Rule, paper: PaperTokens) -> bool:
    return any(_term_spans(t, paper.fields[f]) for t in rule.none for f in rule.fields)


def _author_reasons(rule: Rule, paper: PaperTokens, index: int) -> list[Reason]:
    return [
        Reason(rule=index, term=paper.authors[name], field="authors")
        for name in rule.authors
        if name in paper.authors
    ]


def rule_holds(rule: Rule, paper: PaperTokens, index: int = 0) -> RuleHit | None:
    """Evaluate one rule (the subscriber's rule number `index`); None when it does not hold.

    Every key that is set must hold: any (one term in one field), all (each term in some field),
    none (no term in any field), authors (one full name equal), min_upvotes (upvotes >= n).
    """
    if rule.min_upvotes is not None and paper.paper.upvotes < rule.min_upvotes:
        return None
    authors = _author_reasons(rule, paper, index)
    if rule.authors and not authors:
        return None
    if rule.none and _none_hit(rule, paper):
        return None
    positive = _Positive(index)
    for term in rule.all:
        if not positive.search(term, paper, rule.fields):
            return None
    # A list, not a generator: every hitting term is highlighted, not only the first.
    if rule.any and not any([positive.search(t, paper, rule.fields) for t in rule.any]):
        return None
    reasons = positive.reasons + authors
    return RuleHit(reasons=tuple(reasons) or (Reason(rule=index),), spans=tuple(positive.spans))


def match(
    papers: Sequence[Paper], subscriber: Subscriber, *, alerts_only: bool = False
) -> list[Match]:
    """The papers that reach `subscriber`, most upvoted first (then by id); not capped.

    A subscriber without rules gets every paper (reason rule -1), except with `alerts_only`,
    where only rules marked `alert` count.
    """
    if not subscriber.rules:
        found = [] if alerts_only else [Match(paper=p, reasons=(Reason(rule=-1),)) for p in papers]
    else:
        rules = [(i, r) for i, r in enumerate(subscriber.rules) if r.alert or not alerts_only]
        found = [m for p in papers if (m := _match_one(p, rules)) is not None] if rules else []
    return sorted(found, key=lambda m: (-m.paper.upvotes, m.paper.id))


def _match_one(paper: Paper, rules: list[tuple[int, Rule]]) -> Match | None:
    tokenised = PaperTokens.of(paper)
    reasons: list[Reason] = []
    spans: list[tuple[Field, Span]] = []
    alert = False
    for index, rule in rules:
        hit = rule_holds(rule, tokenised, index)
        if hit is not None:
            reasons.extend(hit.reasons)
            spans.extend(hit.spans)
            alert = alert or rule.alert
    if not reasons:
        return None
    return Match(
        paper=paper,
        reasons=tuple(dict.fromkeys(reasons)),
        alert=alert,
        highlights=_merge(spans),
    )


def _merge(spans: Iterable[tuple[Field, Span]]) -> dict[str, tuple[Span, ...]]:
    """Per field, sorted spans with overlapping or touching ones joined."""
    by_field: dict[str, list[Span]] = {}
    for f, span in spans:
        by_field.setdefault(f, []).append(span)
    out: dict[str, tuple[Span, ...]] = {}
    for f in FIELDS:
        merged: list[Span] = []
        for start, end in sorted(by_field.get(f, ())):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        if merged:
            out[f] = tuple(merged)
    return out
