"""The membership plan: what it vectorises, what it leaves to the evaluator, and that both agree.

The property test that compares every path with the reference is in test_index.py
(`assert_agrees` checks `Matcher.members` and `match_batch` too).
"""

from __future__ import annotations

import dataclasses

from test_index import PAPERS, SUBS, assert_agrees

from digestd.core.model import Paper, Rule, Subscriber, SubscriberSet
from digestd.core.text import make_term
from digestd.rules import membership
from digestd.rules.matcher import Matcher
from digestd.rules.query import parse_query
from digestd.rules.reference import match
from digestd.rules.subscribers import load_subscribers


def fallback_of(sset: SubscriberSet) -> tuple[list[tuple[int, int]], list[int]]:
    plan = Matcher.build(sset).plan
    return [(pos, i) for pos, i, _ in plan.fallback.rules], plan.fallback.exclusions


def test_only_what_the_circuit_cannot_express_falls_back() -> None:
    rules, exclusions = fallback_of(load_subscribers(SUBS, file="s"))
    # e's lone negation; everything else, regexes and exclusions included, is matrices.
    assert rules == [(4, 0)]
    assert exclusions == []


def test_negations_under_a_conjunction_are_vectorised_and_lone_ones_are_not() -> None:
    def query(text: str) -> Rule:
        return Rule(query=parse_query(text))

    sset = SubscriberSet(
        (
            Subscriber("a@example.org", rules=(query('"kv cache" -survey -(llm OR moe)'),)),
            Subscriber("b@example.org", rules=(query("-survey OR fpga"),)),
            Subscriber("c@example.org", rules=(Rule(none=(make_term("survey"),)),)),
            Subscriber("d@example.org", rules=(Rule(),), exclude_query=parse_query("-fpga")),
        )
    )
    rules, exclusions = fallback_of(sset)
    assert rules == [(1, 0), (2, 0), (3, 0)]
    assert exclusions == [3]
    papers = [*PAPERS, Paper("6", "KV cache survey", ""), Paper("7", "KV cache for MoE", "")]
    assert_agrees(sset, papers)


def test_a_rule_key_the_circuit_does_not_know_goes_to_the_evaluator(monkeypatch: object) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    # As if `Rule` had grown a key (a `similar:` relevance key, say): its rules are not compiled.
    monkeypatch.setattr(membership, "_UNKNOWN_KEYS", [("alert", False)])
    sset = load_subscribers(SUBS, file="s")
    rules, _ = fallback_of(sset)
    assert (0, 1) in rules  # a's `alert: true` rule
    assert_agrees(sset, PAPERS)


def test_plain_disjunctions_need_no_node_and_conjunctions_one() -> None:
    kv, llm = make_term("kv cache"), make_term("llm*")
    subs = (
        Subscriber("a@example.org", rules=(Rule(any=(kv, llm)), Rule(authors=("tri dao",)))),
        Subscriber("b@example.org", rules=(Rule(any=(kv, llm), min_upvotes=5),)),
    )
    sset = SubscriberSet(subs)
    plan = Matcher.build(sset).plan
    # a: owned atom by atom; b: the `any` clause and the rule.
    assert [level.conj.tolist() for level in plan.levels] == [[False], [True]]
    assert_agrees(sset, PAPERS)
    found = {m.paper.id for m in match(PAPERS, subs[1])}
    assert found == {"1"}  # 2 has "KV caches", and 30 upvotes do not make a term


def test_members_equal_the_reference_pair_for_pair_on_a_bigger_set() -> None:
    sset = load_subscribers(SUBS, file="s")
    many = SubscriberSet(
        tuple(
            dataclasses.replace(s, email=f"{k}-{s.email}")
            for k in range(40)
            for s in sset.subscribers
        )
    )
    matcher = Matcher.build(many)
    got = {
        (int(pos), hits.paper.id)
        for hits, reached in matcher.members(PAPERS, chunk=3)
        for pos in reached
    }
    want = {(pos, m.paper.id) for pos, s in enumerate(many.subscribers) for m in match(PAPERS, s)}
    assert got == want
