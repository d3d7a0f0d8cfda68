"""Fast matching for a whole subscriber set: one scan of a paper finds every term any rule uses.

Built once per config load (`Matcher.build`). Every distinct term of every rule, exclusion and query
goes into one word n-gram table; a paper's folded words are scanned once against it, whatever the
number of subscribers (`PaperHits`). Each rule also gets a *trigger*: a set of facts (terms, names,
patterns) at least one of which a paper must have for the rule to hold. An inverted index from
trigger to rules turns "which subscribers want this paper" into a few dict lookups; only those
rules are then evaluated, by the very evaluator the reference uses (`match.rule_holds`), answering
its questions from the scan instead of re-reading the text. Rules without a trigger (only
upvotes, only negations) are evaluated for every paper.

Pure: no I/O, no clock. The memo of scanned papers is bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import re2
import scipy.sparse as sp

from digestd.core.gcpause import gc_paused
from digestd.core.model import FIELDS, Field, Match, Paper, Rule, Subscriber, SubscriberSet, Term
from digestd.core.text import tokens
from digestd.rules.membership import Plan, Scan
from digestd.rules.patterns import FoldedText, compile_pattern, pattern_spans
from digestd.rules.query import And, Compare, Name, NameKind, Node, Not, Or, Similar, Text
from digestd.rules.reference import (
    EVERY_PAPER,
    PaperTokens,
    Relevance,
    match_one,
    paper_names,
    rank,
)
from digestd.rules.reference import match as match_naive

__all__ = ["Matcher", "PaperHits", "TermIndex"]

Span = tuple[int, int]
TermKey = tuple[tuple[str, ...], bool]  # a term's folded words and whether the last is a prefix
Trigger = Any  # a TermKey, (kind, name) or ("regex", pattern)

_MEMO = 4096  # scanned papers kept for subscriber-by-subscriber matching (compose, preview)
# Papers whose membership compose keeps, subscriber-major (a few MB per 1,000 papers at 100,000
# readers); a compose run's batches mostly share their papers, so each is decided once per run.
_BATCH_MEMO = 2048
_CHUNK = 256  # papers whose membership is decided together: bounds the matrices' memory
_CELLS = 1 << 23  # ... and (papers × subscribers) of a chunk's dense membership block, 8 MB


# Per word: the single-word term it is (-1: none), the lengths of longer exact terms it starts,
# and the prefix terms it ends ((words before the stem, term number)).
_Entry = tuple[int, tuple[int, ...], tuple[tuple[tuple[str, ...], int], ...]]
_NOTHING: _Entry = (-1, (), ())


def term_key(term: Term) -> TermKey:
    return (term.words, term.prefix)


class TermIndex:
    """Every distinct term, as word n-grams; `scan` finds them all in one pass over a field.

    Terms are numbered; rules reach their number through the Term object itself (`by_object`, the
    config shares one object per spelling), which is cheaper than hashing its words on every look-up.
    """

    def __init__(self, terms: Iterable[Term]) -> None:
        self.ids: dict[TermKey, int] = {}
        self.by_object: dict[int, int] = {}  # id(Term) → term number
        self._terms: list[Term] = []  # keeps every registered Term alive, so no id is reused
        self._exact: dict[tuple[str, ...], int] = {}
        self._lengths: dict[str, list[int]] = {}  # first word → lengths of exact terms
        self._stems: dict[str, list[tuple[tuple[str, ...], int]]] = {}
        self._stem_lengths: list[int] = []
        self._word_stems: dict[str, tuple[tuple[tuple[str, ...], int], ...]] = {}
        self._entries: dict[str, _Entry] = {}
        for term in terms:
            self._add(term)
        self._stem_lengths = sorted({len(s) for s in self._stems})
        for lengths in self._lengths.values():
            lengths.sort()

    def _add(self, term: Term) -> None:
        if id(term) in self.by_object or not term.words:
            return
        self._terms.append(term)
        key = term_key(term)
        number = self.ids.get(key)
        if number is None:
            number = self.ids[key] = len(self.ids)
            words = term.words
            if term.prefix:
                self._stems.setdefault(words[-1], []).append((words[:-1], number))
            else:
                self._exact[words] = number
                self._lengths.setdefault(words[0], []).append(len(words))
        self.by_object[id(term)] = number

    def number(self, term: Term) -> int | None:
        found = self.by_object.get(id(term))
        return found if found is not None else self.ids.get(term_key(term))

    def scan(self, words: Sequence[str]) -> dict[int, list[Span]]:
        """Every known term found in `words`, by number, as (first, last) word indices."""
        out: dict[int, list[Span]] = {}
        n = len(words)
        exact, entries = self._exact, self._entries
        for i, word in enumerate(words):
            entry = entries.get(word)
            if entry is None:
                entry = self._entry(word)
            if entry is _NOTHING:
                continue
            single, lengths, stems = entry
            if single >= 0:
                out.setdefault(single, []).append((i, i))
            for length in lengths:
                if i + length > n:
                    break
                key = exact.get(tuple(words[i : i + length]))
                if key is not None:
                    out.setdefault(key, []).append((i, i + length - 1))
            for head, key in stems:
                h = len(head)
                if i >= h and tuple(words[i - h : i]) == head:
                    out.setdefault(key, []).append((i - h, i))
        return out

    def _entry(self, word: str) -> _Entry:
        """What a word can start or end: memoised, since words repeat across papers."""
        single = self._exact.get((word,), -1)
        lengths = tuple(k for k in self._lengths.get(word, ()) if k > 1)
        stems = self._prefixed(word) if self._stems else ()
        entry = (single, lengths, stems) if single >= 0 or lengths or stems else _NOTHING
        if len(self._entries) > 200_000:
            self._entries.clear()
        self._entries[word] = entry
        return entry

    def _prefixed(self, word: str) -> tuple[tuple[tuple[str, ...], int], ...]:
        """The prefix terms whose stem starts `word`; memoised, since words repeat across papers."""
        found = self._word_stems.get(word)
        if found is None:
            found = tuple(
                entry
                for length in self._stem_lengths
                if length <= len(word)
                for entry in self._stems.get(word[:length], ())
            )
            if len(self._word_stems) > 200_000:
                self._word_stems.clear()
            self._word_stems[word] = found
        return found


@dataclass(slots=True)
class _Field:
    words: list[tuple[str, int, int]]  # each word with its character span
    hits: dict[int, list[Span]]  # term number → (first, last) word indices
    # The same in characters, converted when a rule first asks: membership needs only the keys.
    chars: dict[int, list[Span]]


class PaperHits:
    """A paper scanned once: the `Evidence` the fast matcher answers rules from."""

    __slots__ = ("_facts", "_fallback", "_fields", "_folded", "_index", "_names", "_regex", "paper")

    def __init__(self, paper: Paper, index: TermIndex, patterns: _Patterns) -> None:
        self.paper = paper
        self._fields: dict[Field, _Field] = {}
        for f in FIELDS:
            toks = tokens(getattr(paper, f))
            self._fields[f] = _Field(toks, index.scan([w for w, _, _ in toks]), {})
        self._names = paper_names(paper)
        self._folded: dict[Field, FoldedText] | None = None
        self._regex = patterns.hits(self) if patterns else frozenset()
        self._fallback: PaperTokens | None = None
        self._index = index
        self._facts: frozenset[Trigger] | None = None

    def spans(self, term: Term, field: Field) -> Sequence[Span]:
        number = self._index.by_object.get(id(term))
        if number is None:
            number = self._index.ids.get(term_key(term))
        if number is not None:
            where = self._fields[field]
            found = where.chars.get(number)
            if found is None:
                words = where.hits.get(number)
                if words is None:
                    return ()
                toks = where.words
                found = where.chars[number] = [(toks[i][1], toks[j][2]) for i, j in words]
            return found
        # A term the index was not built with (a subscriber from another config): scan for it.
        if self._fallback is None:
            self._fallback = PaperTokens.of(self.paper)
        return self._fallback.spans(term, field)

    def folded(self, field: Field) -> FoldedText:
        if self._folded is None:
            self._folded = {f: FoldedText.of(getattr(self.paper, f)) for f in FIELDS}
        return self._folded[field]

    def regex_spans(self, pattern: str, field: Field) -> list[Span]:
        return pattern_spans(pattern, self.folded(field))

    def names(self, kind: NameKind) -> dict[str, str]:
        return self._names[kind]

    def scan(self) -> Scan:
        """What `membership.Plan` needs of this paper: term numbers per field, candidate patterns."""
        return (self.paper, {f: v.hits.keys() for f, v in self._fields.items()}, self._regex, self)

    def facts(self) -> frozenset[Trigger]:
        if self._facts is None:
            self._facts = frozenset(self.triggers())
        return self._facts

    def triggers(self) -> Iterator[Trigger]:
        """Every fact of this paper a rule can be triggered by."""
        for f in self._fields.values():
            yield from f.hits
        for kind, names in self._names.items():
            for name in names:
                yield (kind, name)
                if kind in ("categories", "sources"):  # 'cs.*' rules: every prefix of the name
                    yield from ((kind, name[:k] + "*") for k in range(len(name)))
        for pattern in self._regex:
            yield ("regex", pattern)


class _Patterns:
    """Every distinct pattern; which ones occur in a paper, in one RE2 pass per field when possible."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = sorted(set(patterns))
        self._set: Any = None
        if len(self.patterns) > 1:
            self._set = self._compile_set()

    def _compile_set(self) -> Any:
        options = re2.Options()
        options.log_errors = False
        options.max_mem = 64 << 20
        regex_set = re2.Set.SearchSet(options)
        try:
            for p in self.patterns:
                regex_set.Add(p)
            regex_set.Compile()
        except re2.error:
            return None  # too large together: fall back to one pattern at a time
        return regex_set

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def hits(self, paper: PaperHits) -> frozenset[str]:
        """Patterns that may match a field (a superset is fine: triggers are only a filter)."""
        found: set[str] = set()
        for f in FIELDS:
            text = paper.folded(f).text
            if self._set is not None:
                found.update(self.patterns[i] for i in self._set.Match(text) or ())
            else:
                found.update(p for p in self.patterns if compile_pattern(p).search(text))
        return frozenset(found)


def query_trigger(node: Node) -> frozenset[Trigger] | None:
    """Facts one of which the query needs to hold; None when it can hold on none (negations, numbers)."""
    if isinstance(node, Text):
        return frozenset([term_key(node.term)])
    if isinstance(node, Name):
        return frozenset([(node.kind, node.value)])
    if isinstance(node, Compare | Not | Similar):  # similar: a score, not a fact of the paper
        return None
    parts = [query_trigger(item) for item in node.items]
    if isinstance(node, Or):
        known = [p for p in parts if p is not None]
        return frozenset().union(*known) if len(known) == len(parts) else None
    assert isinstance(node, And)
    usable = [p for p in parts if p is not None]
    return min(usable, key=len) if usable else None


def rule_trigger(rule: Rule) -> frozenset[Trigger] | None:
    """The most selective key of the rule that every paper it holds on must have; None if none."""
    options: list[frozenset[Trigger]] = []
    if rule.authors:
        options.append(frozenset(("authors", a) for a in rule.authors))
    if rule.orgs:
        options.append(frozenset(("orgs", o) for o in rule.orgs))
    if rule.all:
        longest = max(rule.all, key=lambda t: (len(t.words), not t.prefix, len(t.words[-1])))
        options.append(frozenset([term_key(longest)]))
    if rule.any:
        options.append(frozenset(map(term_key, rule.any)))
    if rule.query is not None and (found := query_trigger(rule.query)) is not None:
        options.append(found)
    if rule.regex:
        options.append(frozenset(("regex", p) for p in rule.regex))
    if rule.sources:
        options.append(frozenset(("sources", s) for s in rule.sources))
    if rule.categories:
        options.append(frozenset(("categories", c) for c in rule.categories))
    return options[0] if options else None


def _query_terms(node: Node | None) -> Iterator[Term]:
    if node is None:
        return
    if isinstance(node, Text):
        yield node.term
    elif isinstance(node, Not):
        yield from _query_terms(node.item)
    elif isinstance(node, And | Or):
        for item in node.items:
            yield from _query_terms(item)


def _rule_terms(rule: Rule) -> Iterator[Term]:
    yield from rule.any
    yield from rule.all
    yield from rule.none
    yield from _query_terms(rule.query)


def _all_terms(sset: SubscriberSet) -> Iterator[Term]:
    for sub in sset.subscribers:
        yield from sub.exclude
        yield from _query_terms(sub.exclude_query)
        for rule in sub.rules:
            yield from _rule_terms(rule)


def _numbered(trigger: frozenset[Trigger] | None, index: TermIndex) -> frozenset[Trigger] | None:
    """Term facts by their number in `index` (what a scan reports); names and patterns as they are."""
    if trigger is None:
        return None
    return frozenset(index.ids[f] if isinstance(f[0], tuple) else f for f in trigger)


@dataclass(slots=True)
class Matcher:
    """The subscriber set, indexed. Agrees with `match.match` on every input; only faster.

    Membership (which pairs match) is decided for every subscriber at once by the compiled
    `membership.Plan`; reasons and highlights (`match_one`) only for the pairs a caller explains.
    """

    subscribers: SubscriberSet
    index: TermIndex
    patterns: _Patterns
    _plan: Plan | None = None  # compiled on first use: a config load or `digestd check` skips it
    _position: dict[int, int] = field(default_factory=dict)  # id(subscriber) → position
    _memo: OrderedDict[Paper, PaperHits] = field(default_factory=OrderedDict)
    # Subscribers without rules or exclusions all get the same answer for the same papers; a
    # compose batch shares its paper objects, so the last answer is keyed by their identities
    # (the kept tuple holds them, so no id can be reused while it is cached).
    _everything: tuple[tuple[Paper, ...], list[Match]] | None = None
    _batch: _BatchMembers | None = None

    @classmethod
    def build(cls, sset: SubscriberSet) -> Matcher:
        index = TermIndex(_all_terms(sset))
        patterns = {p for sub in sset.subscribers for rule in sub.rules for p in rule.regex}
        return cls(
            subscribers=sset,
            index=index,
            patterns=_Patterns(patterns),
            _position={id(s): p for p, s in enumerate(sset.subscribers)},
        )

    @property
    def plan(self) -> Plan:
        if self._plan is None:
            index = self.index
            with gc_paused():  # hundreds of thousands of small lists: the collector would rescan
                self._plan = Plan(
                    self.subscribers, index.number, lambda r: _numbered(rule_trigger(r), index)
                )
        return self._plan

    def scan(self, paper: Paper) -> PaperHits:
        return PaperHits(paper, self.index, self.patterns)

    def _hits(self, paper: Paper) -> PaperHits:
        found = self._memo.get(paper)
        if found is None:
            found = self._memo[paper] = self.scan(paper)
            if len(self._memo) > _MEMO:
                self._memo.popitem(last=False)
        return found

    def members(
        self, papers: Iterable[Paper], *, alerts_only: bool = False, chunk: int = _CHUNK
    ) -> Iterator[tuple[PaperHits, np.ndarray[Any, Any]]]:
        """Paper-major membership: each paper scanned, with the positions of everyone it reaches."""
        todo = list(papers)
        chunk = max(1, min(chunk, _CELLS // max(len(self.subscribers.subscribers), 1)))
        for start in range(0, len(todo), chunk):
            hits = [self.scan(p) for p in todo[start : start + chunk]]
            found = self.plan.members([h.scan() for h in hits], alerts_only=alerts_only)
            yield from zip(hits, found, strict=True)

    def explain(
        self, hits: Iterable[PaperHits], subscriber: Subscriber, *, alerts_only: bool = False
    ) -> list[Match]:
        """Reasons and highlights of these papers for one subscriber, ranked; those that do not
        reach them are left out. Each rule's trigger is worked out once, not once per paper."""
        triggers = [
            (i, rule, _numbered(rule_trigger(rule), self.index))
            for i, rule in enumerate(subscriber.rules)
            if rule.alert or not alerts_only
        ]
        if subscriber.rules and not triggers:
            return []
        found = []
        for h in hits:
            facts = h.facts()
            rules = [(i, r) for i, r, t in triggers if t is None or not facts.isdisjoint(t)]
            if (rules or not subscriber.rules) and (m := match_one(h, subscriber, rules)):
                found.append(m)
        return rank(found)

    def match(
        self,
        papers: Sequence[Paper],
        subscriber: Subscriber,
        *,
        alerts_only: bool = False,
        relevance: Relevance | None = None,
    ) -> list[Match]:
        """What `match.match` returns, answered from each paper's single scan."""
        if id(subscriber) not in self._position or relevance is not None:
            # relevance (issue #16): the reader's scores answer `similar` and rank; the generic
            # evaluator handles it, so the fast path below stays score-free.
            return match_naive(papers, subscriber, alerts_only=alerts_only, relevance=relevance)
        if alerts_only and not subscriber.has_alerts:
            return []
        if not subscriber.rules and not subscriber.exclude and subscriber.exclude_query is None:
            return self._everything_of(papers)
        return self.explain(map(self._hits, papers), subscriber, alerts_only=alerts_only)

    def match_batch(
        self, wanted: Sequence[tuple[Subscriber, Sequence[Paper]]]
    ) -> list[list[Match]]:
        """`match(papers, subscriber)` for each pair: membership for the whole batch at once, then
        reasons and highlights only for the papers that reach each subscriber."""

        def plain(sub: Subscriber) -> bool:  # every paper, or not one of ours: no membership
            everything = not sub.rules and not sub.exclude and sub.exclude_query is None
            return everything or id(sub) not in self._position

        needed = [papers for sub, papers in wanted if not plain(sub)]
        batch = self._batch_members(p for papers in needed for p in papers) if needed else None
        out = []
        for sub, papers in wanted:
            if batch is None or plain(sub):
                out.append(self.match(papers, sub))
                continue
            mine = batch.of(self._position[id(sub)])
            col = batch.column
            out.append(self.explain([self._hits(p) for p in papers if col[id(p)] in mine], sub))
        return out

    def _batch_members(self, papers: Iterable[Paper]) -> _BatchMembers:
        """Membership of these papers for everyone, reusing what earlier batches computed."""
        distinct = {id(p): p for p in papers}
        batch = self._batch
        if batch is None or len(batch.papers) + len(distinct) > _BATCH_MEMO:
            batch = self._batch = _BatchMembers(len(self.subscribers.subscribers))
        new = [p for p in dict.fromkeys(distinct.values()) if p not in batch.papers]
        if new:
            batch.add(new, list(self.members(new)))
        batch.column = {i: batch.papers[p] for i, p in distinct.items()}
        return batch

    def _everything_of(self, papers: Sequence[Paper]) -> list[Match]:
        """Every paper, ranked: what `match_one` gives a subscriber without rules or exclusions."""
        cached = self._everything
        if (
            cached is not None
            and len(cached[0]) == len(papers)
            and all(a is b for a, b in zip(cached[0], papers, strict=True))
        ):
            return list(cached[1])
        found = rank(Match(paper=p, reasons=(EVERY_PAPER,)) for p in papers)
        self._everything = (tuple(papers), found)
        return list(found)

    def per_paper(
        self, papers: Iterable[Paper], *, alerts_only: bool = False
    ) -> Iterator[tuple[Paper, list[tuple[int, Match]]]]:
        """Paper-major: for each paper, (subscriber position, match) of everyone it reaches."""
        subs = self.subscribers.subscribers
        for hits, reached in self.members(papers, alerts_only=alerts_only):
            found = [
                (int(pos), self.explain([hits], subs[pos], alerts_only=alerts_only))
                for pos in reached
            ]
            yield hits.paper, [(pos, m[0]) for pos, m in found if m]

    def match_all(
        self, papers: Sequence[Paper], *, alerts_only: bool = False
    ) -> list[tuple[Subscriber, list[Match]]]:
        """Every subscriber reached by `papers`, in file order, with their ranked matches."""
        by_sub: dict[int, list[Match]] = {}
        for _, found in self.per_paper(papers, alerts_only=alerts_only):
            for pos, m in found:
                by_sub.setdefault(pos, []).append(m)
        subs = self.subscribers.subscribers
        return [(subs[pos], rank(by_sub[pos])) for pos in sorted(by_sub)]


class _BatchMembers:
    """Membership of the papers compose batches have asked about, subscriber-major."""

    def __init__(self, n_subs: int) -> None:
        self.n_subs = n_subs
        self.papers: dict[Paper, int] = {}  # paper → its column here
        self.column: dict[int, int] = {}  # id(paper object) of the current batch → column
        self._rows: list[np.ndarray[Any, Any]] = []  # per column: subscriber positions
        self._by_sub: Any = None  # (subscriber × column) CSR, rebuilt when papers are added

    def add(
        self, papers: Sequence[Paper], found: list[tuple[PaperHits, np.ndarray[Any, Any]]]
    ) -> None:
        for paper, (_, reached) in zip(papers, found, strict=True):
            self.papers[paper] = len(self._rows)
            self._rows.append(reached)
        self._by_sub = None

    def of(self, pos: int) -> frozenset[int]:
        if self._by_sub is None:
            self._by_sub = _transpose(self._rows, self.n_subs)
        m = self._by_sub
        return frozenset(m.indices[m.indptr[pos] : m.indptr[pos + 1]].tolist())


def _transpose(rows: list[np.ndarray[Any, Any]], n_subs: int) -> Any:
    """Per-column subscriber positions → a (subscriber × column) CSR matrix."""
    cols = np.repeat(np.arange(len(rows), dtype=np.int32), [len(r) for r in rows])
    subs = np.concatenate(rows) if rows else np.zeros(0, np.int32)
    return sp.csr_matrix((np.ones(len(subs), np.int8), (subs, cols)), shape=(n_subs, len(rows)))
