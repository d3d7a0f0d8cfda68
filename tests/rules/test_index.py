"""index.py: the one-scan matcher agrees with the reference evaluator, on chosen and on random inputs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digestd.core.model import Paper, Rule, Subscriber, SubscriberSet
from digestd.core.text import fold_words, make_term
from digestd.rules.matcher import Matcher, TermIndex, query_trigger, rule_trigger
from digestd.rules.query import And, Compare, Name, Node, Not, Or, Text, parse_query
from digestd.rules.reference import match
from digestd.rules.subscribers import load_subscribers

WORDS = ["kv", "cache", "caches", "fpga", "llm", "llms", "moe", "survey", "Étude", "etude", "a"]
AUTHORS = ["Tri Dao", "Mei Tanaka", "Anika García"]
ORGS = ["Microsoft", "Hugging Face"]
CATS = ["cs.LG", "cs.CL", "stat.ML"]
SOURCES = ["arxiv-cs", "hf"]
PATTERNS = ["kv.?cache", "llms?", "^etude", "(a+)+$", "moe|fpga", "z*"]  # z*: only empty matches


def assert_agrees(sset: SubscriberSet, papers: list[Paper]) -> None:
    matcher = Matcher.build(sset)
    for alerts_only in (False, True):
        everyone = {
            s.email: found for s, found in matcher.match_all(papers, alerts_only=alerts_only)
        }
        # Membership alone (the sparse plan, fallback included), paper by paper, in chunks of 2.
        reached: dict[int, set[str]] = {}
        for hits, positions in matcher.members(papers, alerts_only=alerts_only, chunk=2):
            for pos in positions:
                reached.setdefault(int(pos), set()).add(hits.paper.id)
        for pos, sub in enumerate(sset.subscribers):
            expected = match(papers, sub, alerts_only=alerts_only)
            assert matcher.match(papers, sub, alerts_only=alerts_only) == expected
            assert everyone.get(sub.email, []) == expected
            assert reached.get(pos, set()) == {m.paper.id for m in expected}
    # Compose's batch: each subscriber with their own candidates (here: every other paper too).
    wanted = [(s, papers if i % 2 else papers[::2]) for i, s in enumerate(sset.subscribers)]
    assert matcher.match_batch(wanted) == [match(p, s) for s, p in wanted]
    assert matcher.match_batch(wanted[::-1]) == [match(p, s) for s, p in wanted[::-1]]


SUBS = """\
rule_sets:
  systems: [{any: ["kv cache", "paged attention"]}, {all: [fpga, accelerator*]}]
subscribers:
  - email: a@example.org
    rules:
      - any: ["kv cache", "llm*"]
        none: [survey]
      - authors: ["Tri Dao"]
        alert: true
      - query: 'title:"mixture of experts" upvotes>=5 OR org:microsoft -cat:stat.*'
      - regex: ["gpt-?4o?"]
        in: [title]
  - email: b@example.org
    use: [systems]
    exclude: {terms: [survey], query: "upvotes<1"}
  - email: c@example.org
  - email: d@example.org
    rules: [{min_upvotes: 10}, {categories: ["cs.*"], sources: [arxiv-cs]}]
  - email: e@example.org
    rules: [{query: "-survey"}]
"""

PAPERS = [
    Paper("1", "Mixture-of-Experts at scale", "KV-Cache eviction for LLMs", upvotes=7),
    Paper("2", "A survey of KV caches", "", authors=("Tri Dao",), upvotes=30),
    Paper("3", "GPT-4o on FPGA accelerators", "fpga", organization="Microsoft", upvotes=0),
    Paper("4", "Paged attention", "", categories=("cs.CL",), sources=("arxiv-cs",), upvotes=1),
    Paper("5", "Nothing to see", "", categories=("stat.ML",), upvotes=12),
]


def test_agrees_on_a_realistic_file() -> None:
    sset = load_subscribers(SUBS, file="s")
    assert_agrees(sset, PAPERS)
    found = dict(Matcher.build(sset).match_all(PAPERS))
    a, b, c, d, e = sset.subscribers
    assert [m.paper.id for m in found[a]] == ["1", "2", "3"]  # scores 8, 6, 5
    assert {m.paper.id for m in found[b]} == {"1", "4"}  # 2: survey, 3: upvotes<1
    assert len(found[c]) == 5


def test_scan_finds_exact_and_prefix_terms_once() -> None:
    terms = [make_term(t) for t in ("kv cache", "llm*", "a kv", "cache*", "KV Cache")]
    index = TermIndex(terms)
    assert index.number(terms[4]) == index.number(terms[0]) == 0
    assert index.number(make_term("kv cache")) == 0  # another object, same words
    assert index.number(make_term("unknown")) is None
    found = index.scan(fold_words("A KV-cache, KV caches and LLMs"))
    assert found == {2: [(0, 1)], 0: [(1, 2)], 3: [(2, 2), (4, 4)], 1: [(6, 6)]}


def test_triggers_are_necessary_conditions() -> None:
    assert rule_trigger(Rule(min_upvotes=3)) is None
    assert rule_trigger(Rule(none=(make_term("x"),))) is None
    assert rule_trigger(Rule(authors=("tri dao",), any=(make_term("x"),))) == {
        ("authors", "tri dao")
    }
    both = Rule(all=(make_term("kv"), make_term("kv cache")))
    assert rule_trigger(both) == {(("kv", "cache"), False)}
    assert query_trigger(parse_query("a OR -b")) is None
    assert query_trigger(parse_query("upvotes>3 a")) == {(("a",), False)}
    assert query_trigger(parse_query("a OR org:x")) == {(("a",), False), ("orgs", "x")}


def test_a_subscriber_from_elsewhere_falls_back_to_the_reference() -> None:
    matcher = Matcher.build(load_subscribers(SUBS, file="s"))
    stranger = Subscriber("z@example.org", rules=(Rule(any=(make_term("nothing to"),)),))
    assert matcher.match(PAPERS, stranger) == match(PAPERS, stranger)
    assert [m.paper.id for m in matcher.match(PAPERS, stranger)] == ["5"]


def test_regex_set_and_single_patterns_agree() -> None:
    one = Subscriber("a@example.org", rules=(Rule(regex=("fpga",)),))
    many = Subscriber("b@example.org", rules=(Rule(regex=tuple(PATTERNS)),))
    assert_agrees(SubscriberSet((one, many)), PAPERS)


# --- property: random rules and papers -----------------------------------------------------------

separators = st.sampled_from([" ", "-", ", ", "\n", " (", ") "])
texts = st.lists(st.tuples(st.sampled_from(WORDS + [w.upper() for w in WORDS]), separators)).map(
    lambda parts: "".join(w + s for w, s in parts)
)
terms = st.builds(
    lambda words, star: " ".join(words) + ("*" if star else ""),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=2),
    st.booleans(),
).map(make_term)
term_lists = st.lists(terms, max_size=2).map(tuple)
fields = st.sampled_from([("title", "abstract"), ("title",), ("abstract",)])


def names(kind: str, pool: list[str], extra: list[str] = []) -> st.SearchStrategy[Node]:  # noqa: B006
    return st.sampled_from(pool + extra).map(
        lambda v: Name(
            kind, v.casefold() if kind in ("categories", "sources") else " ".join(fold_words(v))
        )  # type: ignore[arg-type]
    )


atoms: st.SearchStrategy[Node] = st.one_of(
    st.builds(Text, terms, st.sampled_from([None, ("title",), ("abstract",)])),
    names("authors", AUTHORS),
    names("orgs", ORGS),
    names("categories", CATS, ["cs.*"]),
    names("sources", SOURCES),
    st.builds(
        Compare,
        st.sampled_from(["upvotes", "comments"]),
        st.sampled_from([">=", "<", "!="]),
        st.integers(0, 3),
    ),
)
queries: st.SearchStrategy[Node] = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
    ),
    max_leaves=6,
)


def folded(pool: list[str]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(pool), max_size=2).map(
        lambda xs: tuple(" ".join(fold_words(x)) for x in xs)
    )


rules = st.builds(
    Rule,
    any=term_lists,
    all=term_lists,
    none=term_lists,
    authors=folded(AUTHORS),
    min_upvotes=st.one_of(st.none(), st.integers(0, 3)),
    fields=fields,
    alert=st.booleans(),
    orgs=folded(ORGS),
    regex=st.lists(st.sampled_from(PATTERNS), max_size=2).map(tuple),
    categories=st.lists(st.sampled_from(["cs.lg", "cs.*", "stat.ml"]), max_size=1).map(tuple),
    sources=st.lists(st.sampled_from(["arxiv-cs", "hf"]), max_size=1).map(tuple),
    query=st.one_of(st.none(), queries),
)
papers = st.lists(
    st.builds(
        Paper,
        id=st.sampled_from(["1", "2", "3", "4"]),
        title=texts,
        abstract=texts,
        authors=st.lists(st.sampled_from(AUTHORS), max_size=2).map(tuple),
        upvotes=st.integers(0, 4),
        comments=st.integers(0, 4),
        organization=st.one_of(st.none(), st.sampled_from(ORGS)),
        categories=st.lists(st.sampled_from(CATS), max_size=2).map(tuple),
        sources=st.lists(st.sampled_from(SOURCES), max_size=2).map(tuple),
    ),
    max_size=4,
    unique_by=lambda p: p.id,
)
subscriber_sets = st.lists(
    st.builds(
        Subscriber,
        email=st.just(""),
        rules=st.lists(rules, max_size=3).map(tuple),
        exclude=st.lists(terms, max_size=1).map(tuple),
        exclude_query=st.one_of(st.none(), queries),
    ),
    min_size=1,
    max_size=3,
).map(lambda subs: SubscriberSet(tuple(_named(s, i) for i, s in enumerate(subs))))


def _named(sub: Subscriber, i: int) -> Subscriber:
    return Subscriber(
        f"s{i}@example.org", rules=sub.rules, exclude=sub.exclude, exclude_query=sub.exclude_query
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subscriber_sets, papers)
def test_fast_matcher_agrees_with_the_reference(sset: SubscriberSet, found: list[Paper]) -> None:
    assert_agrees(sset, found)


def test_i14_pipeline_keeps_one_index_per_subscriber_set(tmp_path: Path) -> None:
    from datetime import UTC, datetime
    from typing import Any

    from digestd.pipeline import Audience, Deps, Options, swap_subscribers
    from digestd.store.sqlite import Store

    unused: Any = None
    deps = Deps(
        store=unused,
        source=unused,
        mailer=unused,
        audience=Audience.of(load_subscribers(SUBS, file="s")),
        envs=unused,
        options=Options(sender="D <d@example.org>"),
    )
    first = deps.audience.matcher
    assert first.subscribers is deps.subscribers
    store = Store(tmp_path / "state.sqlite3")
    deps.store = store
    try:
        # A reload: same text, new set; the index is built once, with the swap.
        swap_subscribers(
            deps, load_subscribers(SUBS, file="s"), now=datetime(2026, 3, 2, tzinfo=UTC)
        )
    finally:
        store.close()
    assert deps.audience.matcher is not first
    assert deps.audience.matcher.subscribers is deps.subscribers
    # A swap whose registration fails (here: the store is gone) leaves the old audience whole.
    before = deps.audience
    with pytest.raises(sqlite3.ProgrammingError):
        swap_subscribers(
            deps, load_subscribers(SUBS, file="s"), now=datetime(2026, 3, 3, tzinfo=UTC)
        )
    assert deps.audience is before


def test_subscribers_without_rules_share_one_answer_per_paper_list() -> None:
    sset = SubscriberSet(tuple(Subscriber(f"s{i}@example.org") for i in range(3)))
    matcher = Matcher.build(sset)
    papers = [Paper(id=f"p{i}", title=f"T{i}", abstract="", upvotes=i) for i in range(4)]
    first = matcher.match(papers, sset.subscribers[0])
    assert first == match(papers, sset.subscribers[0])
    first.clear()  # a caller's list is its own
    assert matcher.match(papers, sset.subscribers[1]) == match(papers, sset.subscribers[1])
    other = [Paper(id="q", title="Q", abstract="", upvotes=9), *papers[:2]]
    assert matcher.match(other, sset.subscribers[2]) == match(other, sset.subscribers[2])
    assert matcher.match(papers[:1], sset.subscribers[2]) == match(papers[:1], sset.subscribers[2])
