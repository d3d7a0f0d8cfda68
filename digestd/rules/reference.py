"""Which papers reach a subscriber, why, and what to highlight: the rule semantics, evaluated.

Owned here: `rule_holds` (one rule against one paper's `Evidence`), `match` (papers × one subscriber
→ ranked `Match`es; the reference evaluator, one rule × one paper at a time) and the ranking `score`.
A rule asks its paper questions through `Evidence`: `PaperTokens` answers them by scanning the
paper's words (here), `index.PaperHits` by looking up what one scan of all the config's terms found.
Both share this evaluator, so they can differ only in what they find, never in what it means.
`similar` asks one reader's relevance score of the paper: the caller wraps the evidence in `Scored`
(from a `Relevance`, e.g. `ReaderScores` built from digestd.relevance's batch product); evidence
without a score never satisfies `similar`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from digestd.core.model import FIELDS, Field, Match, Paper, Reason, Rule, Subscriber, Term
from digestd.core.text import find_term, fold_words, tokens
from digestd.rules.patterns import FoldedText, pattern_spans
from digestd.rules.query import And, Compare, Name, NameKind, Node, Not, Or, Similar, Text

__all__ = [
    "DEFAULT_THRESHOLD",
    "Evidence",
    "PaperTokens",
    "ReaderScores",
    "Relevance",
    "RuleHit",
    "excluded",
    "match",
    "match_one",
    "name_hit",
    "rank",
    "rule_holds",
    "score",
    "scored",
]

Span = tuple[int, int]


class Evidence(Protocol):
    """What a rule may ask about one paper."""

    @property
    def paper(self) -> Paper: ...

    def spans(self, term: Term, field: Field) -> Sequence[Span]:
        """Where `term` occurs in `field`, as character spans of the original text."""
        ...

    def regex_spans(self, pattern: str, field: Field) -> Sequence[Span]: ...

    def names(self, kind: NameKind) -> Mapping[str, str]:
        """Folded name → name as written, for authors, orgs, categories or sources."""
        ...


# `similar: true` without a reader's own threshold: cosine similarity to a liked paper (or the
# linear model's probability) of 0.3 is "clearly the same topic" on the bench set (bench/relevance.py).
DEFAULT_THRESHOLD = 0.3


class Relevance(Protocol):
    """One reader's relevance scores, as the evaluator asks them; None: no model (no likes)."""

    @property
    def threshold(self) -> float: ...

    def score(self, paper: Paper) -> float | None: ...


@dataclass(frozen=True, slots=True)
class ReaderScores:
    """A reader's scores by paper id (a row of digestd.relevance's batch product)."""

    scores: Mapping[str, float]
    threshold: float = DEFAULT_THRESHOLD

    def score(self, paper: Paper) -> float | None:
        return self.scores.get(paper.id)


@dataclass(frozen=True, slots=True)
class Scored:
    """Evidence about a paper plus one reader's relevance score of it: what `similar` asks."""

    inner: Evidence
    relevance: float | None
    threshold: float = DEFAULT_THRESHOLD

    @property
    def paper(self) -> Paper:
        return self.inner.paper

    def spans(self, term: Term, field: Field) -> Sequence[Span]:
        return self.inner.spans(term, field)

    def regex_spans(self, pattern: str, field: Field) -> Sequence[Span]:
        return self.inner.regex_spans(pattern, field)

    def names(self, kind: NameKind) -> Mapping[str, str]:
        return self.inner.names(kind)


def scored(ev: Evidence, relevance: Relevance | None) -> Evidence:
    """`ev` with the reader's score attached, or `ev` itself when the reader has no scores."""
    if relevance is None:
        return ev
    return Scored(ev, relevance.score(ev.paper), relevance.threshold)


@dataclass(frozen=True, slots=True)
class _FieldTokens:
    words: tuple[str, ...]
    spans: tuple[Span, ...]
    vocabulary: frozenset[str]  # lets a term whose words are absent skip the scan


def _field_tokens(text: str) -> _FieldTokens:
    toks = tokens(text)
    words = tuple(w for w, _, _ in toks)
    return _FieldTokens(words, tuple((s, e) for _, s, e in toks), frozenset(words))


def paper_names(paper: Paper) -> dict[NameKind, dict[str, str]]:
    """The whole-name facts of a paper, folded the way rules are (first spelling wins)."""
    org = paper.organization
    return {
        "authors": {" ".join(fold_words(a)): a for a in reversed(paper.authors)},
        "orgs": {" ".join(fold_words(org)): org} if org else {},
        "categories": {c.casefold(): c for c in reversed(paper.categories)},
        "sources": {s.casefold(): s for s in reversed(paper.sources)},
    }


@dataclass(slots=True)
class PaperTokens:
    """A paper split into folded words once; terms are found by scanning those words (reference)."""

    paper: Paper
    fields: dict[Field, _FieldTokens]
    authors: dict[str, str]  # folded full name → name as written
    _names: dict[NameKind, dict[str, str]]
    _folded: dict[Field, FoldedText] | None = None

    @classmethod
    def of(cls, paper: Paper) -> PaperTokens:
        fields = {f: _field_tokens(getattr(paper, f)) for f in FIELDS}
        names = paper_names(paper)
        return cls(paper=paper, fields=fields, authors=names["authors"], _names=names)

    def spans(self, term: Term, field: Field) -> list[Span]:
        tokens = self.fields[field]
        needed = term.words[:-1] if term.prefix else term.words
        if not tokens.vocabulary.issuperset(needed):
            return []
        return [(tokens.spans[i][0], tokens.spans[j][1]) for i, j in find_term(term, tokens.words)]

    def regex_spans(self, pattern: str, field: Field) -> list[Span]:
        if self._folded is None:
            self._folded = {f: FoldedText.of(getattr(self.paper, f)) for f in FIELDS}
        return pattern_spans(pattern, self._folded[field])

    def names(self, kind: NameKind) -> dict[str, str]:
        return self._names[kind]


@dataclass(frozen=True, slots=True)
class RuleHit:
    """A rule that holds: its reasons, and the spans its positive terms hit, per field."""

    reasons: tuple[Reason, ...]
    # Per field, in the order found; the sequences may be shared with the evidence: never mutate.
    spans: tuple[tuple[Field, Sequence[Span]], ...] = ()


class _Positive:
    """Collects reasons and spans of what hit; `mark`/`undo` drop a branch that failed."""

    __slots__ = ("index", "reasons", "spans")

    def __init__(self, index: int) -> None:
        self.index = index
        self.reasons: list[Reason] = []
        self.spans: list[tuple[Field, Sequence[Span]]] = []

    def search(self, term: Term, ev: Evidence, fields: Iterable[Field]) -> bool:
        hit = False
        for f in fields:
            found = ev.spans(term, f)
            if found:
                hit = True
                self.reasons.append(Reason(rule=self.index, term=term.text, field=f))
                self.spans.append((f, found))
        return hit

    def regex(self, pattern: str, ev: Evidence, fields: Iterable[Field]) -> bool:
        hit = False
        for f in fields:
            found = ev.regex_spans(pattern, f)
            if found:
                hit = True
                self.reasons.append(Reason(rule=self.index, term=f"/{pattern}/", field=f))
                self.spans.append((f, found))
        return hit

    def mark(self) -> tuple[int, int]:
        return len(self.reasons), len(self.spans)

    def undo(self, mark: tuple[int, int]) -> None:
        del self.reasons[mark[0] :], self.spans[mark[1] :]


def name_hit(ev: Evidence, kind: NameKind, value: str) -> str | None:
    """The paper's name (as written) equal to folded `value`; `cs.*` matches by prefix."""
    names = ev.names(kind)
    if not value.endswith("*"):
        return names.get(value)
    stem = value[:-1]
    return next((shown for folded, shown in names.items() if folded.startswith(stem)), None)


def _names_reasons(ev: Evidence, kind: NameKind, values: Sequence[str], index: int) -> list[Reason]:
    found = (name_hit(ev, kind, v) for v in values)
    return [Reason(rule=index, term=shown, field=kind) for shown in found if shown is not None]


def _term_hit(ev: Evidence, term: Term, fields: Iterable[Field]) -> bool:
    return any(ev.spans(term, f) for f in fields)


# How a comparison reads in a reason: "≥ 20 upvotes".
_OPS = {">=": "≥ {}", "<=": "≤ {}", ">": "> {}", "<": "< {}", "=": "{}", "!=": "≠ {}"}
EVERY_PAPER = Reason(rule=-1, field="every")  # why a subscriber without rules gets a paper


def _eval(node: Node, ev: Evidence, fields: tuple[Field, ...], col: _Positive | None) -> bool:
    """Evaluate a query node; `col` (None under a negation) collects what hit."""
    if isinstance(node, Text):
        where = node.fields or fields
        return col.search(node.term, ev, where) if col else _term_hit(ev, node.term, where)
    if isinstance(node, Name):
        shown = name_hit(ev, node.kind, node.value)
        if shown is not None and col is not None:
            col.reasons.append(Reason(rule=col.index, term=shown, field=node.kind))
        return shown is not None
    if isinstance(node, Compare):
        holds = node.holds(getattr(ev.paper, node.field))
        if holds and col is not None:
            shown = _OPS[node.op].format(node.value)
            col.reasons.append(Reason(rule=col.index, term=shown, field=node.field))
        return holds
    if isinstance(node, Similar):
        return _similar(node, ev, col)
    if isinstance(node, Not):
        return not _eval(node.item, ev, fields, None)
    if isinstance(node, Or):
        # A list, not a generator: every branch that hits is highlighted, not only the first.
        return any([_eval(item, ev, fields, col) for item in node.items])
    return _eval_and(node, ev, fields, col)


def _similar(node: Similar, ev: Evidence, col: _Positive | None) -> bool:
    if not isinstance(ev, Scored) or ev.relevance is None:
        return False  # no model for this reader (or no scores asked): nothing is "similar"
    holds = node.holds(ev.relevance, ev.threshold)
    if holds and col is not None:
        col.reasons.append(Reason(rule=col.index, term=f"{ev.relevance:.2f}", field="similar"))
    return holds


def _eval_and(node: And, ev: Evidence, fields: tuple[Field, ...], col: _Positive | None) -> bool:
    mark = col.mark() if col else (0, 0)
    for item in node.items:
        if not _eval(item, ev, fields, col):
            if col:
                col.undo(mark)  # an AND that fails explains nothing
            return False
    return True


def query_holds(node: Node, ev: Evidence, fields: tuple[Field, ...] = FIELDS) -> bool:
    """A query on its own, without reasons (used by `exclude`)."""
    return _eval(node, ev, fields, None)


def _gates(rule: Rule, ev: Evidence) -> bool:
    """The cheap keys that need no term search: upvotes, categories, sources."""
    if rule.min_upvotes is not None and ev.paper.upvotes < rule.min_upvotes:
        return False
    if rule.categories and not any(name_hit(ev, "categories", c) for c in rule.categories):
        return False
    return not rule.sources or any(name_hit(ev, "sources", s) for s in rule.sources)


def _people(rule: Rule, ev: Evidence, index: int) -> list[Reason] | None:
    """Reasons of the authors and organisations that matched; None when a listed key found none."""
    names: list[Reason] = []
    for kind, values in (("authors", rule.authors), ("orgs", rule.orgs)):
        if values:
            found = _names_reasons(ev, kind, values, index)  # type: ignore[arg-type]
            if not found:
                return None
            names += found
    return names


def _positive(rule: Rule, ev: Evidence, index: int) -> _Positive | None:
    """The keys that search text: all, any, regex, query; None when one of them fails."""
    positive = _Positive(index)
    for term in rule.all:
        if not positive.search(term, ev, rule.fields):
            return None
    if rule.any and not any([positive.search(t, ev, rule.fields) for t in rule.any]):
        return None
    if rule.regex and not any([positive.regex(p, ev, rule.fields) for p in rule.regex]):
        return None
    if rule.query is not None and not _eval(rule.query, ev, rule.fields, positive):
        return None
    return positive


def rule_holds(rule: Rule, ev: Evidence, index: int = 0) -> RuleHit | None:
    """Evaluate one rule (the subscriber's rule number `index`); None when it does not hold.

    Every key that is set must hold: any (one term in one field), all (each term in some field),
    none (no term in any field), authors/orgs (one full name equal), categories/sources (one
    listed), regex (one pattern found), query (the expression holds), min_upvotes (upvotes >= n).
    """
    if rule.min_upvotes is not None and ev.paper.upvotes < rule.min_upvotes:
        return None
    if (rule.categories or rule.sources) and not _gates(rule, ev):
        return None
    names = _people(rule, ev, index) if rule.authors or rule.orgs else []
    if names is None:
        return None
    if rule.none and any(_term_hit(ev, t, rule.fields) for t in rule.none):
        return None
    positive = _positive(rule, ev, index)
    if positive is None:
        return None
    if rule.categories:
        names += _names_reasons(ev, "categories", rule.categories, index)
    if rule.sources:
        names += _names_reasons(ev, "sources", rule.sources, index)
    if rule.min_upvotes is not None:
        names.append(Reason(rule=index, term=f"≥ {rule.min_upvotes}", field="upvotes"))
    reasons = positive.reasons + names
    return RuleHit(reasons=tuple(reasons) or (Reason(rule=index),), spans=tuple(positive.spans))


def excluded(subscriber: Subscriber, ev: Evidence) -> bool:
    """The subscriber-level `exclude`: a term in title or abstract, or the query, drops the paper."""
    if any(_term_hit(ev, t, FIELDS) for t in subscriber.exclude):
        return True
    return subscriber.exclude_query is not None and query_holds(subscriber.exclude_query, ev)


def match(
    papers: Sequence[Paper],
    subscriber: Subscriber,
    *,
    alerts_only: bool = False,
    relevance: Relevance | None = None,
) -> list[Match]:
    """The papers that reach `subscriber`, ranked by `rank`; not capped.

    A subscriber without rules gets every paper (reason rule -1), except with `alerts_only`,
    where only rules marked `alert` count. This is the reference evaluator: every rule of the
    subscriber against every paper, one at a time. `relevance` (the reader's scores) answers
    `similar` and adds its term to the ranking.
    """
    if not subscriber.rules and alerts_only:
        return []
    rules = [(i, r) for i, r in enumerate(subscriber.rules) if r.alert or not alerts_only]
    if subscriber.rules and not rules:
        return []
    found = [
        m
        for p in papers
        if (m := match_one(scored(PaperTokens.of(p), relevance), subscriber, rules))
    ]
    return rank(found)


def match_one(
    ev: Evidence, subscriber: Subscriber, rules: Sequence[tuple[int, Rule]]
) -> Match | None:
    """One paper against the given (index, rule) pairs of `subscriber`, then its exclusions.

    No rules at all means every paper (reason rule -1).
    """
    reasons: list[Reason] = []
    spans: list[tuple[Field, Sequence[Span]]] = []
    alert = False
    for index, rule in rules:
        hit = rule_holds(rule, ev, index)
        if hit is not None:
            reasons.extend(hit.reasons)
            spans.extend(hit.spans)
            alert = alert or rule.alert
    if not subscriber.rules:
        reasons.append(EVERY_PAPER)
    if not reasons:
        return None
    if (subscriber.exclude or subscriber.exclude_query is not None) and excluded(subscriber, ev):
        return None
    return Match(
        paper=ev.paper,
        reasons=tuple(dict.fromkeys(reasons)),
        alert=alert,
        highlights=_merge(spans),
        relevance=ev.relevance if isinstance(ev, Scored) else None,
    )


# Points for each distinct term (or pattern) found, by field, and for each name that matched.
TITLE_POINTS, ABSTRACT_POINTS, NAME_POINTS = 3, 1, 2
# Points per unit of relevance score (0..1): a paper at the default threshold (0.3) weighs two
# title terms. With a model, relevance replaces the popularity term: what this reader likes, not
# what everyone upvoted.
RELEVANCE_POINTS = 20


def score(m: Match) -> int:
    """3 per distinct term (or pattern) in the title + 1 per distinct term in the abstract + 2 per
    matched author or organisation + floor(log2(1 + upvotes)); when the reader has a relevance
    model, round(20 × relevance) instead of the upvotes term. Categories and sources filter only."""
    weights = {"title": TITLE_POINTS, "abstract": ABSTRACT_POINTS, "authors": NAME_POINTS}
    weights["orgs"] = NAME_POINTS
    distinct = {(r.term, r.field) for r in m.reasons if r.term is not None}
    points = sum(weights.get(f or "", 0) for _, f in distinct)
    if m.relevance is not None:
        return points + round(RELEVANCE_POINTS * max(m.relevance, 0.0))
    return points + (1 + max(m.paper.upvotes, 0)).bit_length() - 1


def rank(found: Iterable[Match]) -> list[Match]:
    """Highest score first, ties by relevance, upvotes, then paper id: deterministic whatever the
    input order (a reader with likes and no rules: exactly their relevance order)."""
    return sorted(
        found, key=lambda m: (-score(m), -(m.relevance or 0.0), -m.paper.upvotes, m.paper.id)
    )


def _merge(spans: Iterable[tuple[Field, Sequence[Span]]]) -> dict[str, tuple[Span, ...]]:
    """Per field, sorted spans with overlapping or touching ones joined."""
    by_field: dict[str, set[Span]] = {}
    for f, found in spans:
        by_field.setdefault(f, set()).update(found)
    out: dict[str, tuple[Span, ...]] = {}
    for f in FIELDS:
        if f not in by_field:
            continue
        merged: list[Span] = []
        last_start, last_end = -1, -1
        for start, end in sorted(by_field[f]):
            if start <= last_end:
                if end > last_end:
                    last_end = end
                continue
            if last_end >= 0:
                merged.append((last_start, last_end))
            last_start, last_end = start, end
        merged.append((last_start, last_end))
        out[f] = tuple(merged)
    return out
