"""match.py, the richer language evaluated: query, regex, orgs, categories, sources, exclude, reasons,
highlights and the ranking score."""

from __future__ import annotations

import time

import pytest

from digestd.core.model import Match, Paper, Reason, Rule, Subscriber
from digestd.core.text import make_term
from digestd.rules.query import parse_query
from digestd.rules.reference import PaperTokens, match, rule_holds, score
from digestd.rules.subscribers import load_subscribers


def paper(
    title: str = "",
    abstract: str = "",
    *,
    id: str = "2501.00001",
    authors: tuple[str, ...] = (),
    upvotes: int = 0,
    comments: int = 0,
    organization: str | None = None,
    categories: tuple[str, ...] = (),
    sources: tuple[str, ...] = (),
) -> Paper:
    return Paper(
        id=id,
        title=title,
        abstract=abstract,
        authors=authors,
        upvotes=upvotes,
        comments=comments,
        organization=organization,
        categories=categories,
        sources=sources,
    )


def q(query: str, p: Paper) -> bool:
    return rule_holds(Rule(query=parse_query(query)), PaperTokens.of(p)) is not None


MOE = paper(
    "Scaling Mixture-of-Experts Models",
    "We study the KV-Cache of sparse models on FPGA accelerators.",
    authors=("Tri Dao", "Mei Tanaka"),
    upvotes=25,
    comments=2,
    organization="Microsoft Research",
    categories=("cs.LG", "cs.CL"),
    sources=("arxiv-cs", "hf-daily"),
)


@pytest.mark.parametrize(
    ("query", "holds"),
    [
        ('"kv cache"', True),
        ('"kv cache" OR survey', True),
        ("survey OR benchmark", False),
        ("fpga accelerator", False),  # 'accelerators' is another word
        ("fpga accelerator*", True),
        ("fpga AND accelerator*", True),
        ("fpga -survey", True),
        ("fpga -sparse", False),
        ("fpga NOT sparse", False),
        ("NOT (survey OR benchmark)", True),
        # AND binds tighter than OR: kv OR ((fpga AND survey) AND -sparse)
        ('"kv cache" OR (fpga AND survey) -sparse', True),
        ('("kv cache" OR (fpga AND survey)) -sparse', False),
        ('("kv cache" OR fpga) survey', False),
        ('title:"mixture of experts"', True),
        ('abstract:"mixture of experts"', False),
        ("title:fpga", False),
        ("abstract:fpga", True),
        ("title:(scaling OR survey) abstract:sparse", True),
        ('title:"mixture of experts" AND upvotes>=20', True),
        ("upvotes>25", False),
        ("upvotes=25 comments<3", True),
        ("comments>=3", False),
        ("upvotes!=25", False),
        ('author:"Tri Dao" OR org:microsoft', True),
        ('author:"tri dao"', True),
        ("author:dao", False),  # a full name, like `authors:`
        ('org:"microsoft research"', True),
        ("org:microsoft", False),
        ("cat:cs.CL", True),
        ("cat:cs.cv", False),
        ("cat:cs.*", True),
        ("cat:stat.*", False),
        ("source:arxiv-cs", True),
        ("source:arxiv-math", False),
        ("-cat:cs.LG", False),
    ],
)
def test_query_semantics(query: str, holds: bool) -> None:
    assert q(query, MOE) is holds


def test_query_uses_the_rule_fields_for_unprefixed_terms() -> None:
    rule = Rule(query=parse_query("fpga"), fields=("title",))
    assert rule_holds(rule, PaperTokens.of(MOE)) is None
    rule = Rule(query=parse_query("abstract:fpga"), fields=("title",))
    assert rule_holds(rule, PaperTokens.of(MOE)) is not None


def test_query_reasons_name_what_hit_and_not_the_negations_or_failed_branches() -> None:
    rule = Rule(
        query=parse_query('(fpga AND survey) OR "kv cache" OR author:"Mei Tanaka" -benchmark')
    )
    hit = rule_holds(rule, PaperTokens.of(MOE), 3)
    assert hit is not None
    assert hit.reasons == (
        Reason(3, "kv cache", "abstract"),
        Reason(3, "Mei Tanaka", "authors"),
    )
    assert [f for f, _ in hit.spans] == ["abstract"]


def test_org_category_and_source_rules() -> None:
    t = PaperTokens.of(MOE)
    assert rule_holds(Rule(orgs=("microsoft research",)), t) is not None
    assert rule_holds(Rule(orgs=("microsoft",)), t) is None
    assert rule_holds(Rule(orgs=("x",)), PaperTokens.of(paper("a"))) is None
    cats = rule_holds(Rule(categories=("cs.cl",)), t)
    assert cats is not None and cats.reasons == (Reason(0, "cs.CL", "categories"),)
    assert rule_holds(Rule(categories=("cs.*",)), t) is not None
    assert rule_holds(Rule(categories=("math.*",)), t) is None
    src = rule_holds(Rule(sources=("hf-daily",), any=(make_term("fpga"),)), t)
    assert src is not None
    assert src.reasons == (Reason(0, "fpga", "abstract"), Reason(0, "hf-daily", "sources"))
    assert rule_holds(Rule(sources=("arxiv-math",), any=(make_term("fpga"),)), t) is None


def test_regex_runs_on_folded_text_and_highlights_the_original() -> None:
    p = paper("Évaluer GPT-4o et Llama\n  3", "")
    hit = rule_holds(Rule(regex=("gpt-?4o?", "llama ?3")), PaperTokens.of(p))
    assert hit is not None
    assert hit.reasons == (Reason(0, "/gpt-?4o?/", "title"), Reason(0, "/llama ?3/", "title"))
    (m,) = match([p], Subscriber(email="a@example.org", rules=(Rule(regex=("evaluer",)),)))
    assert m.highlights == {"title": ((0, 7),)}
    assert p.title[0:7] == "Évaluer"


def test_regex_needs_a_non_empty_match_and_respects_fields() -> None:
    p = paper("alpha", "beta")
    assert rule_holds(Rule(regex=("x*",)), PaperTokens.of(p)) is None
    assert rule_holds(Rule(regex=("beta",), fields=("title",)), PaperTokens.of(p)) is None
    assert rule_holds(Rule(regex=("beta",), fields=("abstract",)), PaperTokens.of(p)) is not None


def test_catastrophic_backtracking_pattern_returns_quickly() -> None:
    # (a+)+$ against "aaaa…b" takes exponential time in a backtracking engine; RE2 is linear.
    p = paper("a" * 50_000 + "b", "a" * 50_000 + "!")
    start = time.perf_counter()
    assert rule_holds(Rule(regex=("(a+)+$", "(x|xx)+y")), PaperTokens.of(p)) is None
    assert time.perf_counter() - start < 1.0


def test_exclude_removes_a_paper_whatever_rule_matched() -> None:
    text = """\
subscribers:
  - email: a@example.org
    rules: [{any: [fpga]}, {authors: ["Tri Dao"]}]
    exclude: [sparse]
  - email: b@example.org
    rules: [{any: [fpga]}]
    exclude: {query: "org:\\"microsoft research\\" upvotes>=20"}
  - email: c@example.org
    exclude: [survey]
"""
    a, b, c = load_subscribers(text, file="s").subscribers
    survey = paper("A survey", id="2501.00002")
    assert match([MOE], a) == []
    assert match([MOE], b) == []
    assert [m.paper.id for m in match([MOE, survey], c)] == [MOE.id]


def test_exclude_query_checks_both_text_fields() -> None:
    sub = Subscriber(email="a@example.org", exclude_query=parse_query("sparse"))
    assert match([MOE], sub) == []


def test_score_counts_where_terms_hit_and_upvotes() -> None:
    p = paper(upvotes=7)  # floor(log2(8)) = 3
    reasons = (
        Reason(0, "kv cache", "title"),
        Reason(1, "kv cache", "title"),  # the same term twice counts once
        Reason(0, "kv cache", "abstract"),
        Reason(0, "fpga", "abstract"),
        Reason(0, "Tri Dao", "authors"),
        Reason(0, "Acme", "orgs"),
        Reason(0, "cs.LG", "categories"),
        Reason(2),
    )
    assert score(Match(p, reasons)) == 3 + 1 + 1 + 2 + 2 + 3
    assert score(Match(paper(upvotes=0))) == 0
    assert score(Match(paper(upvotes=1))) == 1


def test_ranking_puts_title_hits_first_then_upvotes_then_id() -> None:
    sub = Subscriber(email="a@example.org", rules=(Rule(any=(make_term("fpga"),)),))
    in_title = paper("FPGA", id="2501.00003", upvotes=1)  # 3 + 1
    in_abstract_popular = paper("x", "fpga", id="2501.00004", upvotes=3)  # 1 + 2
    in_abstract = paper("x", "fpga", id="2501.00005", upvotes=2)  # 1 + 1
    tie_a = paper("x", "fpga", id="2501.00006", upvotes=1)  # 1 + 1, fewer upvotes
    tie_b = paper("x", "fpga", id="2501.00001", upvotes=1)
    found = match([tie_a, in_abstract, in_title, tie_b, in_abstract_popular], sub)
    assert [m.paper.id for m in found] == [
        "2501.00003",
        "2501.00004",
        "2501.00005",
        "2501.00001",
        "2501.00006",
    ]
