"""`similar`: the rule key and the query term, answered from one reader's relevance scores, with
exact rules (OR), against them (AND NOT), in the fast matcher, the ranking, `check`'s validation."""

from __future__ import annotations

import pytest

from digestd.config.positions import load_yaml
from digestd.core.errors import ConfigError
from digestd.core.model import And, Not, Paper, Rule, Similar, Subscriber, Text
from digestd.core.text import make_term
from digestd.rules import subscribers as subscribers_module
from digestd.rules.fastload import fast_file
from digestd.rules.matcher import Matcher
from digestd.rules.query import QuerySyntaxError, parse_query
from digestd.rules.reference import DEFAULT_THRESHOLD, ReaderScores, match, rank, score
from digestd.rules.subscribers import load_subscribers

KV = Paper(
    id="2501.00001", title="Task-aware KV cache eviction", abstract="We compress the KV cache."
)
SURVEY = Paper(id="2501.00002", title="A survey of KV cache methods", abstract="A survey.")
FLASH = Paper(id="2501.00003", title="FlashAttention kernels", abstract="Fast attention kernels.")
ROBOT = Paper(id="2501.00004", title="Robot grasping", abstract="Grasping with robots.")
PAPERS = [KV, SURVEY, FLASH, ROBOT]
SCORES = ReaderScores({KV.id: 0.8, SURVEY.id: 0.7, FLASH.id: 0.2, ROBOT.id: 0.05}, threshold=0.3)


def reader(query: str | None = None, **rule: object) -> Subscriber:
    if query is not None:
        rule["query"] = parse_query(query)
    return Subscriber(email="ada@example.org", rules=(Rule(**rule),))  # type: ignore[arg-type]


def ids(found: list) -> list[str]:  # type: ignore[type-arg]
    return [m.paper.id for m in found]


def test_the_query_term_parses() -> None:
    assert parse_query("similar>=0.35") == Similar(0.35)
    assert parse_query("similar > .5") == Similar(0.5, strict=True)
    assert parse_query("similar>=0.35 AND NOT survey") == And(
        (Similar(0.35), Not(Text(make_term("survey"))))
    )


@pytest.mark.parametrize(
    ("query", "column", "message"),
    [
        ("similar<0.3", 8, "similar takes >= or >"),
        ("similar>=1.5", 10, "a score from 0 to 1"),
        ("kv similar>=high", 13, "a score from 0 to 1"),
        ("title:similar>=0.3", 7, "a comparison inside a field group"),
    ],
)
def test_query_errors_carry_the_column(query: str, column: int, message: str) -> None:
    with pytest.raises(QuerySyntaxError) as exc:
        parse_query(query)
    assert exc.value.column == column and message in exc.value.message


def test_similar_and_not_survey() -> None:
    found = match(PAPERS, reader("similar>=0.35 AND NOT survey"), relevance=SCORES)
    assert ids(found) == [KV.id]
    (reason,) = found[0].reasons
    assert (reason.field, reason.term) == ("similar", "0.80")


def test_exact_rules_or_similar() -> None:
    found = match(PAPERS, reader('"flashattention" OR similar>=0.6'), relevance=SCORES)
    assert set(ids(found)) == {KV.id, SURVEY.id, FLASH.id}


def test_without_scores_similar_never_holds_and_its_negation_always_does() -> None:
    assert match(PAPERS, reader("similar>=0.1")) == []
    assert ids(match(PAPERS, reader("similar>=0.1"), relevance=ReaderScores({}))) == []
    assert len(match(PAPERS, reader("NOT similar>=0.1"))) == 4


def test_the_rule_key_uses_the_readers_threshold_or_its_own() -> None:
    sset = load_subscribers(
        "subscribers:\n"
        "  - email: ada@example.org\n    rules:\n      - similar: true\n"
        "  - email: bob@example.org\n    rules:\n      - similar: {min_score: 0.75}\n"
        "  - email: cy@example.org\n    rules:\n      - any: [kv cache]\n        similar: {min_score: 0.75}\n",
        file="s.yaml",
    )
    ada, bob, cy = sset.subscribers
    assert ada.rules[0].query == Similar(None)
    assert set(ids(match(PAPERS, ada, relevance=SCORES))) == {KV.id, SURVEY.id}
    assert ids(match(PAPERS, bob, relevance=SCORES)) == [KV.id]
    assert ids(match(PAPERS, cy, relevance=SCORES)) == [KV.id]  # both keys must hold
    assert ReaderScores({}).threshold == DEFAULT_THRESHOLD


def test_the_fast_path_and_the_validating_path_agree() -> None:
    text = (
        "subscribers:\n  - email: ada@example.org\n    like: ['2401.00001']\n"
        "    rules:\n      - similar: {min_score: 0.4}\n        query: kv\n"
    )
    fast = load_subscribers(text, file="s.yaml")
    data, marks = load_yaml(text, file="s.yaml")
    slow = subscribers_module._validate(data, marks, "s.yaml", fast=False)
    assert fast_file(data, "s.yaml") == fast == slow
    assert fast.subscribers[0].rules[0].query == And((Text(make_term("kv")), Similar(0.4)))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("false", "similar takes true or {min_score: 0.35}"),
        ("{min_score: 2}", "less than or equal to 1"),
        ("{min: 0.3}", "unknown key 'min'"),
    ],
)
def test_check_refuses_a_bad_similar_key_at_its_position(value: str, message: str) -> None:
    text = f"subscribers:\n  - email: ada@example.org\n    rules:\n      - similar: {value}\n"
    with pytest.raises(ConfigError) as exc:
        load_subscribers(text, file="s.yaml")
    (problem,) = exc.value.problems
    assert problem.line == 4 and message in problem.message


def test_likes_under_defaults_and_per_subscriber() -> None:
    sset = load_subscribers(
        "defaults:\n  like: ['arXiv:2401.00001v2', {file: lib.bib}]\n"
        "subscribers:\n  - email: ada@example.org\n"
        "  - email: bob@example.org\n    like: ['2402.00002', '2402.00002']\n"
        "  - email: cy@example.org\n    like: []\n",
        file="s.yaml",
    )
    ada, bob, cy = sset.subscribers
    assert (ada.likes, ada.like_files) == (("2401.00001",), ("lib.bib",))
    assert (bob.likes, bob.like_files) == (("2402.00002",), ())
    assert (cy.likes, cy.like_files) == ((), ())


def test_a_bad_like_is_refused_at_its_position() -> None:
    text = "subscribers:\n  - email: ada@example.org\n    like: ['2401.00001', attention]\n"
    with pytest.raises(ConfigError) as exc:
        load_subscribers(text, file="s.yaml")
    (problem,) = exc.value.problems
    assert (problem.line, problem.column) == (3, 26)
    assert "'attention' is not an arXiv id" in problem.message


def test_the_matcher_answers_similar_through_the_generic_evaluator() -> None:
    sub = reader("similar>=0.35 AND NOT survey")
    from digestd.core.model import SubscriberSet

    matcher = Matcher.build(SubscriberSet((sub,)))
    assert ids(matcher.match(PAPERS, sub, relevance=SCORES)) == [KV.id]
    assert matcher.match(PAPERS, sub) == []  # no scores: nothing is similar
    assert matcher.match_all(PAPERS) == []


def test_relevance_adds_to_the_ranking() -> None:
    every = Subscriber(email="ada@example.org")  # no rules: every paper, best relevance first
    found = match(PAPERS, every, relevance=SCORES)
    assert ids(found) == [KV.id, SURVEY.id, FLASH.id, ROBOT.id]
    assert [m.relevance for m in found] == [0.8, 0.7, 0.2, 0.05]
    assert score(found[0]) == 16 and score(found[3]) == 1
    plain = rank(match(PAPERS, every))
    assert all(m.relevance is None for m in plain)
