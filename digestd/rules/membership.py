"""Membership for a whole subscriber set at once: which (paper, subscriber) pairs hold, as sparse matrices.

Deciding *that* a paper reaches a subscriber is separated from explaining *why* (reasons and
highlights, `reference.match_one`), which only the papers a message shows need. Every rule is
compiled into a boolean circuit over *atoms*, the facts one scan of a paper gives: a term in a
field, a whole name, a count compared with a number, a pattern with a non-empty match in a field.
Circuit nodes have two shapes: a disjunction (a count of true children ≥ 1) and a conjunction
(every positive child true, no negated one: a count equal to the positives, and a count of 0).
A rule that is a plain disjunction needs no node: its atoms belong to the subscriber directly.
Nodes are evaluated by depth: the columns of depth d are sparse products of the columns below
with child → node matrices (scipy.sparse), for a chunk of papers at a time.

Whatever the circuit cannot express — a negation without a positive sibling under a conjunction,
a rule with no positive key, a key or node type this module does not know — is left to the
reference evaluator, for that rule (or that subscriber's exclusion) only, on the papers its
trigger admits. So a new kind of term needs no change here to stay correct.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from digestd.core.model import FIELDS, Field, Paper, Rule, Subscriber, SubscriberSet, Term
from digestd.rules.query import And, Compare, Name, Node, Not, Or, Text
from digestd.rules.reference import Evidence, excluded, rule_holds

__all__ = ["Plan", "Scan"]

Csr = Any  # scipy.sparse.csr_matrix (scipy ships no type hints)
Atom = tuple[Any, ...]
# What membership needs of one scanned paper: term numbers found per field, the patterns that may
# match it (a superset: each is checked), and the evidence the fallback evaluates rules against
# (a `matcher.PaperHits`).
Scan = tuple[Paper, dict[Field, Iterable[int]], Iterable[str], Evidence]

_NAME_KINDS = ("authors", "orgs", "categories", "sources")
# The rule keys the circuit knows; a key added to `Rule` later is the evaluator's until it is
# taught here (its default value is what "not set" means).
_KNOWN_KEYS = {"any", "all", "none", "authors", "min_upvotes", "fields", "alert", "orgs"}
_KNOWN_KEYS |= {"regex", "categories", "sources", "query"}
_UNKNOWN_KEYS = [(f.name, f.default) for f in dataclasses.fields(Rule) if f.name not in _KNOWN_KEYS]


class _Circuit:
    """Atoms and nodes, numbered together as columns, in the order they are made.

    Built for speed (half a million rules at 100,000 readers): a term in given fields is one
    column per (term object, fields); other nodes are not shared, which costs a few matrix columns
    and saves hashing every clause.
    Edges are kept flat, node after node (positive children, then negated ones); depths and the
    matrices are derived from them with numpy once the whole set is read (`edges`).
    """

    def __init__(self, term_number: Callable[[Term], int | None]) -> None:
        self.term_number = term_number
        self.atoms: dict[Atom, int] = {}
        self.n_cols = 0
        self.node_cols = array("q")  # per node: its column, its positive and negated child counts
        self.n_pos = array("q")
        self.n_neg = array("q")
        self.conj = array("b")
        self.children = array("q")
        # The children of nodes a parent of the same shape may flatten into itself.
        self.shape: dict[int, tuple[bool, list[int], list[int]]] = {}
        self._texts: dict[tuple[Field, ...], dict[int, list[int]]] = {}
        self._text_nodes: dict[tuple[int, tuple[Field, ...]], int] = {}

    def atom(self, key: Atom) -> int:
        col = self.atoms.get(key)
        if col is None:
            col = self.atoms[key] = self.n_cols
            self.n_cols += 1
        return col

    def term_atoms(self, term: Term, fields: tuple[Field, ...]) -> list[int]:
        """The atoms of a term in each of `fields` (the term holds when one of them does)."""
        cache = self._texts.get(fields)
        if cache is None:
            cache = self._texts[fields] = {}
        found = cache.get(id(term))
        if found is None:  # (the subscriber set keeps every term alive: no id is reused)
            number = self.term_number(term) if term.words else None
            # A term without words is never found.
            never = number is None
            found = [self.atom(("never",) if never else ("t", number, f)) for f in fields]
            cache[id(term)] = found
        return found

    def text(self, term: Term, fields: tuple[Field, ...]) -> int:
        atoms = self.term_atoms(term, fields)
        if len(atoms) == 1:
            return atoms[0]
        key = (id(term), fields)
        col = self._text_nodes.get(key)
        if col is None:
            col = self._text_nodes[key] = self.node(False, atoms, [], keep=True)
        return col

    def any_of(self, cols: Iterable[int], *, keep: bool = True) -> int:
        children: list[int] = []
        shape = self.shape
        for c in cols:  # flattened: a disjunction of disjunctions is one disjunction
            inner = shape.get(c)
            if inner is not None and not inner[0]:
                children += inner[1]
            else:
                children.append(c)
        if len(children) == 1:
            return children[0]
        return self.node(False, children, [], keep=keep)

    def all_of(self, pos: Iterable[int], neg: Iterable[int] = (), *, keep: bool = True) -> int:
        positive: set[int] = set()
        negated = set(neg)
        shape = self.shape
        for c in pos:  # flattened: a conjunction of conjunctions is one conjunction
            inner = shape.get(c)
            if inner is not None and inner[0]:
                positive.update(inner[1])
                negated.update(inner[2])
            else:
                positive.add(c)
        if len(positive) == 1 and not negated:
            return positive.pop()
        # Distinct children: a conjunction counts them.
        return self.node(True, list(positive), list(negated), keep=keep)

    def node(self, conj: bool, pos: list[int], neg: list[int], *, keep: bool) -> int:
        """A new node; `keep`: remember its children, for a parent of the same shape to flatten
        (a rule's own clauses never have one: half a million fewer entries at 100,000 readers)."""
        col = self.n_cols
        self.n_cols += 1
        self.node_cols.append(col)
        self.n_pos.append(len(pos))
        self.n_neg.append(len(neg))
        self.conj.append(conj)
        self.children.extend(pos)
        self.children.extend(neg)
        if keep:
            self.shape[col] = (conj, pos, neg)
        return col

    def query(self, node: Node, fields: tuple[Field, ...]) -> list[int] | None:
        """Columns one of which holds exactly when the query node does; None when the circuit
        cannot express it."""
        if isinstance(node, Text):
            return self.term_atoms(node.term, node.fields or fields)
        if isinstance(node, Name):
            return [self.atom(("n", node.kind, node.value))]
        if isinstance(node, Compare):
            return [self.atom(("c", node.field, node.op, node.value))]
        if isinstance(node, Or):
            cols: list[int] = []
            for item in node.items:
                found = self.query(item, fields)
                if found is None:
                    return None
                cols += found
            return cols
        if isinstance(node, And):
            return self._and(node, fields)
        return None  # a lone negation, or a node type this circuit does not know

    def _and(self, node: And, fields: tuple[Field, ...]) -> list[int] | None:
        pos: list[int] = []
        neg: list[int] = []
        for item in node.items:
            negated = isinstance(item, Not)
            found = self.query(item.item if isinstance(item, Not) else item, fields)
            if found is None:
                return None
            if negated:
                neg += found  # none of a disjunction's columns may hold
            else:
                pos.append(found[0] if len(found) == 1 else self.node(False, found, [], keep=False))
        return [self.all_of(pos, neg)] if pos else None  # only negations: nearly every paper

    def rule(self, rule: Rule) -> list[int] | None:
        """Columns one of which holds exactly when the rule does (every key that is set holds):
        its atoms for a plain disjunction (`any:` alone, `authors:` alone…), else one node.
        None: the evaluator decides.

        Written for speed (it runs once per rule of the file): look-ups inline, no per-term call
        unless a term is new."""
        if _UNKNOWN_KEYS and any(getattr(rule, k) != v for k, v in _UNKNOWN_KEYS):
            return None
        fields = rule.fields
        pos = self._positives(rule, fields)
        if pos is None:
            return None
        if not pos:
            return None  # only `none:` (or nothing): holds on nearly every paper
        if len(pos) == 1 and not rule.none:
            return pos[0]
        neg = [c for term in rule.none for c in self.term_atoms(term, fields)]
        clauses = [p[0] if len(p) == 1 else self.node(False, p, [], keep=False) for p in pos]
        return [self.all_of(clauses, neg, keep=False)]

    def _positives(self, rule: Rule, fields: tuple[Field, ...]) -> list[list[int]] | None:
        """The rule's keys that must hold, each as a disjunction of columns."""
        pos: list[list[int]] = []
        if rule.any:
            pos.append(self._any(rule.any, fields))
        if rule.all:
            pos.extend([self.text(term, fields)] for term in rule.all)
        for kind in _NAME_KINDS:
            values = getattr(rule, kind)
            if values:
                pos.append(self._names(kind, values))
        if rule.min_upvotes is not None:
            pos.append([self.atom(("c", "upvotes", ">=", rule.min_upvotes))])
        if rule.regex:  # a non-empty match of one pattern in one of the fields
            pos.append([self.atom(("r", p, f)) for p in rule.regex for f in fields])
        if rule.query is not None:
            query = self.query(rule.query, fields)
            if query is None:
                return None
            pos.append(query)
        return pos

    def _any(self, terms: tuple[Term, ...], fields: tuple[Field, ...]) -> list[int]:
        texts = self._texts.get(fields)
        if texts is None:
            texts = self._texts[fields] = {}
        cols: list[int] = []
        for term in terms:
            found = texts.get(id(term))
            cols += found if found is not None else self.term_atoms(term, fields)
        return cols

    def _names(self, kind: str, values: tuple[str, ...]) -> list[int]:
        atoms = self.atoms
        cols = []
        for v in values:
            col = atoms.get(("n", kind, v))
            cols.append(col if col is not None else self.atom(("n", kind, v)))
        return cols

    def exclusion(self, sub: Subscriber) -> list[int] | None:
        """Columns one of which holds when the subscriber's `exclude` does; None: the evaluator
        decides."""
        cols = [c for term in sub.exclude for c in self.term_atoms(term, FIELDS)]
        if sub.exclude_query is not None:
            found = self.query(sub.exclude_query, FIELDS)
            if found is None:
                return None
            cols += found
        return cols


class _Pairs:
    """(column, subscriber) pairs, flat."""

    def __init__(self) -> None:
        self.cols = array("q")
        self.subs = array("q")

    def add(self, cols: list[int], sub: int) -> None:
        self.cols.extend(cols)
        self.subs.extend([sub] * len(cols))


@dataclass(slots=True)
class _Level:
    """The nodes of one depth: child → node matrices per lower level, and each node's test."""

    pos: list[Csr]  # per lower level: (columns of that level × nodes of this one)
    neg: list[Csr]
    conj: np.ndarray[Any, Any]  # bool per node
    need: np.ndarray[Any, Any]  # positives a conjunction needs
    has_neg: bool


@dataclass(slots=True)
class _Fallback:
    """Rules (and exclusions) the circuit leaves to the evaluator."""

    # (subscriber position, rule number, rule); candidates come from `trigger`
    rules: list[tuple[int, int, Rule]]
    by_trigger: dict[Any, list[int]]  # trigger fact → indices into `rules`
    untriggered: list[int]
    exclusions: list[int]  # subscriber positions whose exclusion the evaluator decides


class Plan:
    """A subscriber set compiled into levels of sparse matrices; `members` evaluates it."""

    def __init__(
        self,
        sset: SubscriberSet,
        term_number: Callable[[Term], int | None],
        trigger: Callable[[Rule], Iterable[Any] | None],
    ) -> None:
        circuit = _Circuit(term_number)
        self.n_subs = len(sset.subscribers)
        owners = _Pairs()  # (column, subscriber) of each rule's columns
        alerts = _Pairs()  # the same for rules marked `alert`
        excl = _Pairs()
        self.fallback = _Fallback([], {}, [], [])
        everyone = []
        for pos, sub in enumerate(sset.subscribers):
            if not sub.rules:
                everyone.append(pos)
            for i, rule in enumerate(sub.rules):
                cols = circuit.rule(rule)
                if cols is None:
                    self._fall_back(pos, i, rule, trigger)
                    continue
                owners.add(cols, pos)
                if rule.alert:
                    alerts.add(cols, pos)
            if sub.exclude or sub.exclude_query is not None:
                cols = circuit.exclusion(sub)
                if cols is None:
                    self.fallback.exclusions.append(pos)
                else:
                    excl.add(cols, pos)
        self.everyone = np.array(everyone, dtype=np.int32)
        self.subscribers = sset.subscribers
        self._compile(circuit, owners, alerts, excl)

    def _fall_back(
        self, pos: int, i: int, rule: Rule, trigger: Callable[[Rule], Iterable[Any] | None]
    ) -> None:
        fb = self.fallback
        number = len(fb.rules)
        fb.rules.append((pos, i, rule))
        facts = trigger(rule)
        if facts is None:
            fb.untriggered.append(number)
        for fact in facts or ():
            fb.by_trigger.setdefault(fact, []).append(number)

    def _compile(self, circuit: _Circuit, owners: _Pairs, alerts: _Pairs, excl: _Pairs) -> None:
        node_col = np.asarray(circuit.node_cols, dtype=np.int64)
        n_pos = np.asarray(circuit.n_pos, dtype=np.int64)
        lengths = n_pos + np.asarray(circuit.n_neg, dtype=np.int64)
        child = np.asarray(circuit.children, dtype=np.int64)
        node = np.repeat(node_col, lengths)
        offset = np.arange(len(child)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        neg = offset >= np.repeat(n_pos, lengths)
        depth = _depths(circuit.n_cols, node_col, lengths, child)
        n_levels = int(depth.max()) + 1 if len(depth) else 1
        # Columns renumbered level by level: (level, position within the level).
        order = np.argsort(depth, kind="stable")
        sizes = np.bincount(depth, minlength=n_levels)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        within = np.empty(len(depth), dtype=np.int64)
        within[order] = np.arange(len(depth)) - np.repeat(starts[:-1], sizes)
        self._sizes = [int(x) for x in sizes]
        self._depth = depth
        self._within = within
        self.atoms = {key: int(within[col]) for key, col in circuit.atoms.items()}
        conj = np.zeros(len(depth), dtype=bool)
        conj[node_col] = np.asarray(circuit.conj, dtype=bool)
        need = np.zeros(len(depth), dtype=np.int32)
        need[node_col] = n_pos
        self.levels = []
        for d in range(1, n_levels):
            cols = order[starts[d] : starts[d + 1]]
            here = depth[node] == d
            self.levels.append(
                _Level(
                    pos=self._edges(child[here & ~neg], node[here & ~neg], d),
                    neg=self._edges(child[here & neg], node[here & neg], d),
                    conj=conj[cols],
                    need=need[cols],
                    has_neg=bool((here & neg).any()),
                )
            )
        self._owners = self._to_subs(owners)
        self._alert_owners = self._to_subs(alerts)
        self._excl = self._to_subs(excl)
        self._compares = [
            (self.atoms[key], key[1], key[2], key[3]) for key in self.atoms if key[0] == "c"
        ]
        self._star_kinds = {k[1] for k in self.atoms if k[0] == "n" and k[2].endswith("*")}

    def _edges(self, child: np.ndarray[Any, Any], node: np.ndarray[Any, Any], d: int) -> list[Csr]:
        """Per level below `d`, the (child × node of level d) matrix of ones."""
        level = self._depth[child]
        out = []
        for b in range(d):
            mask = level == b
            out.append(
                sp.csr_matrix(
                    (
                        np.ones(int(mask.sum()), np.int32),
                        (self._within[child[mask]], self._within[node[mask]]),
                    ),
                    shape=(self._sizes[b], self._sizes[d]),
                )
            )
        return out

    def _to_subs(self, pairs: _Pairs) -> list[Csr]:
        """Per level, the (column × subscriber) matrix of the given (column, subscriber) pairs."""
        cols = np.asarray(pairs.cols, dtype=np.int64)
        subs = np.asarray(pairs.subs, dtype=np.int64)
        level = self._depth[cols]
        out = []
        for b in range(len(self._sizes)):
            mask = level == b
            m = sp.csr_matrix(
                (np.ones(int(mask.sum()), np.int32), (self._within[cols[mask]], subs[mask])),
                shape=(self._sizes[b], self.n_subs),
            )
            m.sum_duplicates()
            out.append(m)
        return out

    # -- evaluation -----------------------------------------------------------------------------

    def _atoms(self, scans: Sequence[Scan]) -> Csr:
        """The (paper × atom) hit matrix of a chunk: one dict look-up per fact of each paper."""
        indptr = [0]
        indices: list[int] = []
        for scan in scans:
            indices.extend(sorted(self._facts(scan)))
            indptr.append(len(indices))
        data = np.ones(len(indices), dtype=np.int32)
        return sp.csr_matrix((data, indices, indptr), shape=(len(scans), self._sizes[0]))

    def _facts(self, scan: Scan) -> set[int]:
        """The atoms one paper holds: terms found per field, its names, the comparisons."""
        paper, terms, patterns, ev = scan
        atoms = self.atoms
        found = {atoms.get(("t", n, f), -1) for f, numbers in terms.items() for n in numbers}
        for pattern in patterns:
            for f in FIELDS:
                col = atoms.get(("r", pattern, f))
                if col is not None and ev.regex_spans(pattern, f):
                    found.add(col)
        for kind in _NAME_KINDS:
            names = ev.names(kind)  # type: ignore[arg-type]
            found.update(atoms.get(("n", kind, name), -1) for name in names)
            if kind in self._star_kinds:  # 'cs.*': every prefix of a name, the empty one too
                found.update(
                    atoms.get(("n", kind, name[:k] + "*"), -1)
                    for name in names
                    for k in range(len(name) + 1)
                )
        for col, fname, op, value in self._compares:
            if Compare(fname, op, value).holds(getattr(paper, fname)):
                found.add(col)
        found.discard(-1)
        return found

    def _evaluate(self, scans: Sequence[Scan]) -> list[Csr]:
        """Every column's value for a chunk of papers, level by level (0/1 int32 matrices)."""
        values = [self._atoms(scans)]
        for level in self.levels:
            count = _product(values, level.pos)
            count.sum_duplicates()
            j = count.indices
            holds = np.where(level.conj[j], count.data == level.need[j], count.data >= 1)
            count.data = holds.astype(np.int32)
            count.eliminate_zeros()
            if level.has_neg and count.nnz:
                blocked = _product(values, level.neg)
                blocked.data[:] = 1
                count = count - count.multiply(blocked)
                count.eliminate_zeros()
            values.append(count)
        return values

    def members(
        self, scans: Sequence[Scan], *, alerts_only: bool = False
    ) -> list[np.ndarray[Any, Any]]:
        """Per paper, the positions of the subscribers it reaches, ascending.

        The pairs are marked in a dense (paper × subscriber) boolean block: setting and clearing
        bits costs nothing per duplicate, and each row's positions come out sorted, where a sparse
        matrix would sort millions of indices (a chunk is at most 8 MB: 83 papers at 100,000 readers;
        `Matcher.members` keeps chunks that size)."""
        values = self._evaluate(scans)
        found = np.zeros((len(scans), self.n_subs), dtype=bool)
        _mark(found, values, self._alert_owners if alerts_only else self._owners, True)
        fb_rows, fb_subs = self._fallback_pairs(scans, alerts_only)
        found[np.asarray(fb_rows, dtype=np.intp), np.asarray(fb_subs, dtype=np.intp)] = True
        if not alerts_only and len(self.everyone):
            found[:, self.everyone] = True
        _mark(found, values, self._excl, False)
        self._fallback_exclusions(scans, found)
        return [np.flatnonzero(row) for row in found]

    def _fallback_pairs(
        self, scans: Sequence[Scan], alerts_only: bool
    ) -> tuple[list[int], list[int]]:
        """(paper row, subscriber) of every fallback rule that holds, by the reference evaluator."""
        fb = self.fallback
        rows: list[int] = []
        subs: list[int] = []
        if not fb.rules:
            return rows, subs
        for row, (_, _, _, ev) in enumerate(scans):
            numbers = set(fb.untriggered)
            for fact in ev.triggers():  # type: ignore[attr-defined]
                numbers.update(fb.by_trigger.get(fact, ()))
            done: set[int] = set()
            for number in sorted(numbers):
                pos, i, rule = fb.rules[number]
                if pos in done or (alerts_only and not rule.alert):
                    continue
                if rule_holds(rule, ev, i) is not None:
                    done.add(pos)
                    rows.append(row)
                    subs.append(pos)
        return rows, subs

    def _fallback_exclusions(self, scans: Sequence[Scan], found: np.ndarray[Any, Any]) -> None:
        """Clear the pairs whose subscriber's exclusion only the evaluator can decide, and holds."""
        if not self.fallback.exclusions:
            return
        who = np.asarray(self.fallback.exclusions, dtype=np.intp)
        rows, k = np.nonzero(found[:, who])
        for row, pos in zip(rows.tolist(), who[k].tolist(), strict=True):
            if excluded(self.subscribers[pos], scans[row][3]):
                found[row, pos] = False


def _mark(found: np.ndarray[Any, Any], values: list[Csr], weights: list[Csr], value: bool) -> None:
    """Set to `value` the dense block's cells where Σ values[b] @ weights[b] is non-zero: level by
    level, without summing the products (a sum of sparse matrices sorts them)."""
    for v, w in zip(values, weights, strict=False):
        if w.nnz == 0 or v.nnz == 0:
            continue
        part = (v @ w).tocsr()
        rows = np.repeat(np.arange(part.shape[0]), np.diff(part.indptr))
        found[rows, part.indices] = value


def _depths(
    n_cols: int,
    node_col: np.ndarray[Any, Any],
    lengths: np.ndarray[Any, Any],
    child: np.ndarray[Any, Any],
) -> np.ndarray[Any, Any]:
    """Each column's depth (atoms 0, a node 1 + its deepest child), a few numpy passes: children
    are always made before their parents, so the depths settle after as many passes as levels."""
    depth = np.zeros(n_cols, dtype=np.int64)
    has_kids = lengths > 0
    starts = (np.cumsum(lengths) - lengths)[has_kids]
    while len(child):
        deepest = np.maximum.reduceat(depth[child], starts)
        new = depth.copy()
        new[node_col[has_kids]] = deepest + 1
        if np.array_equal(new, depth):
            break
        depth = new
    return depth


def _product(values: list[Csr], weights: list[Csr]) -> Csr:
    """Σ over levels b of values[b] @ weights[b] (levels beyond `weights` do not feed the result)."""
    total = None
    for v, w in zip(values, weights, strict=False):
        if w.nnz == 0:
            continue
        part = v @ w
        total = part if total is None else total + part
    if total is None:
        return sp.csr_matrix((values[0].shape[0], weights[0].shape[1]), dtype=np.int32)
    return total.tocsr()
