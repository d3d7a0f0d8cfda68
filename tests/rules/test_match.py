"""match.py: the rule semantics, reasons, highlight spans, ordering, and alert-only matching."""

from __future__ import annotations

import pytest

from digestd.core.model import Field, Paper, Reason, Rule, Subscriber
from digestd.core.text import fold_words, make_term
from digestd.rules.reference import EVERY_PAPER, PaperTokens, match, rule_holds


def paper(
    title: str = "",
    abstract: str = "",
    *,
    id: str = "2501.00001",
    authors: tuple[str, ...] = (),
    upvotes: int = 0,
) -> Paper:
    return Paper(id=id, title=title, abstract=abstract, authors=authors, upvotes=upvotes)


def rule(
    *,
    any: tuple[str, ...] = (),
    all: tuple[str, ...] = (),
    none: tuple[str, ...] = (),
    authors: tuple[str, ...] = (),
    min_upvotes: int | None = None,
    fields: tuple[Field, ...] = ("title", "abstract"),
    alert: bool = False,
) -> Rule:
    return Rule(
        any=tuple(map(make_term, any)),
        all=tuple(map(make_term, all)),
        none=tuple(map(make_term, none)),
        authors=tuple(" ".join(fold_words(a)) for a in authors),
        min_upvotes=min_upvotes,
        fields=fields,
        alert=alert,
    )


def sub(*rules: Rule) -> Subscriber:
    return Subscriber(email="a@example.org", rules=rules)


def holds(r: Rule, p: Paper) -> bool:
    return rule_holds(r, PaperTokens.of(p)) is not None


@pytest.mark.parametrize(
    ("term", "title", "expected"),
    [
        ("kv cache", "Compressing the KV-Cache", True),
        ("KV Cache", "kv cache eviction", True),
        ("kv cache", "KV caches", False),
        ("kv cache*", "KV caches", True),
        ("mixture of experts", "Sparse Mixture-of-Experts", True),
        ("mixture of experts", "mixture of the experts", False),
        ("etude", "Étude des transformeurs", True),
        ("Étude", "etude", True),
        ("llm", "Scaling LLMs", False),
        ("llm", "An LLM agent", True),
        ("llm*", "An LLM agent", True),
        ("llm*", "Scaling LLMs", True),
        ("llm*", "Small language models", False),
        ("gpu", "GPU-accelerated", True),
        ("gpu", "multigpu", False),
        ("straße", "STRASSE planning", True),
        ("3d", "3D gaussian splatting", True),
    ],
)
def test_term_semantics(term: str, title: str, expected: bool) -> None:
    assert holds(rule(any=(term,)), paper(title)) is expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [(("title",), False), (("abstract",), True), (("title", "abstract"), True)],
)
def test_in_limits_the_fields(fields: tuple[Field, ...], expected: bool) -> None:
    p = paper("A title", "an abstract about fpga")
    assert holds(rule(any=("fpga",), fields=fields), p) is expected


FPGA = paper("FPGA accelerator design", "A survey of hardware", authors=("Mei Tanaka",), upvotes=7)


@pytest.mark.parametrize(
    ("r", "expected"),
    [
        (rule(any=("gpu", "fpga")), True),
        (rule(any=("gpu", "tpu")), False),
        (rule(all=("fpga", "hardware")), True),  # each term in some field
        (rule(all=("fpga", "gpu")), False),
        (rule(all=("fpga", "accelerator"), none=("survey",)), False),
        (rule(all=("fpga", "accelerator"), none=("survey",), fields=("title",)), True),
        (rule(none=("gpu",)), True),
        (rule(none=("fpga",)), False),
        (rule(authors=("mei tanaka",)), True),
        (rule(authors=("MEI TANAKA", "Someone Else")), True),
        (rule(authors=("Tanaka",)), False),  # the full name, not a part of it
        (rule(min_upvotes=7), True),
        (rule(min_upvotes=8), False),
        (rule(any=("fpga",), min_upvotes=8), False),
        (rule(any=("fpga",), authors=("Someone Else",)), False),
        (rule(any=("fpga",), authors=("Mei Tanaka",), min_upvotes=1, none=("gpu",)), True),
    ],
)
def test_rule_combinations(r: Rule, expected: bool) -> None:
    assert holds(r, FPGA) is expected


def test_reasons_name_rule_term_and_field() -> None:
    s = sub(
        rule(any=("gpu",)),
        rule(any=("fpga", "hardware", "absent")),
        rule(all=("accelerator",), authors=("Mei Tanaka",)),
        rule(min_upvotes=5),
    )
    (m,) = match([FPGA], s)
    assert m.reasons == (
        Reason(rule=1, term="fpga", field="title"),
        Reason(rule=1, term="hardware", field="abstract"),
        Reason(rule=2, term="accelerator", field="title"),
        Reason(rule=2, term="Mei Tanaka", field="authors"),
        Reason(rule=3, term="≥ 5", field="upvotes"),  # issue 13: words, not "rule 4"
    )
    assert m.alert is False


def test_author_reason_uses_the_name_as_written() -> None:
    p = paper("t", authors=("Anika García",))
    (m,) = match([p], sub(rule(authors=("anika garcia",))))
    assert m.reasons == (Reason(rule=0, term="Anika García", field="authors"),)


def test_highlights_are_merged_sorted_spans_in_the_original_text() -> None:
    p = paper(
        "KV-Cache offloading for LLMs: kv cache",
        "We offload the KV cache. No survey here.",
    )
    s = sub(
        rule(any=("kv cache", "offloading", "llm*")),
        rule(all=("cache offloading",), none=("gpu",)),
        rule(any=("survey",), none=("offload",)),  # does not hold: no highlights from it
    )
    (m,) = match([p], s)
    title = p.title
    assert [title[a:b] for a, b in m.highlights["title"]] == [
        "KV-Cache offloading",
        "LLMs",
        "kv cache",
    ]
    assert m.highlights["title"] == ((0, 19), (24, 28), (30, 38))
    assert [p.abstract[a:b] for a, b in m.highlights["abstract"]] == ["KV cache"]


def test_highlights_skip_none_terms_and_fields_without_hits() -> None:
    p = paper("Efficient attention", "no survey")
    (m,) = match([p], sub(rule(any=("attention",), none=("gpu",)), rule(none=("fpga",))))
    assert m.highlights == {"title": ((10, 19),)}


def test_subscriber_without_rules_gets_every_paper() -> None:
    papers = [paper("a", id="1"), paper("b", id="2")]
    found = match(papers, Subscriber(email="a@example.org"))
    assert [m.paper.id for m in found] == ["1", "2"]
    assert all(m.reasons == (EVERY_PAPER,) and not m.alert for m in found)
    assert match(papers, Subscriber(email="a@example.org"), alerts_only=True) == []


def test_a_paper_reaches_when_any_rule_holds() -> None:
    papers = [paper("gpu kernels", id="1"), paper("fpga", id="2"), paper("nothing", id="3")]
    found = match(papers, sub(rule(any=("gpu",)), rule(any=("fpga",))))
    assert [m.paper.id for m in found] == ["1", "2"]


def test_ordering_by_upvotes_then_id() -> None:
    papers = [
        paper("x", id="2501.00003", upvotes=5),
        paper("x", id="2501.00001", upvotes=5),
        paper("x", id="2501.00002", upvotes=50),
        paper("x", id="2501.00004", upvotes=0),
    ]
    found = match(papers, sub(rule(any=("x",))))
    assert [m.paper.id for m in found] == ["2501.00002", "2501.00001", "2501.00003", "2501.00004"]


def test_not_capped() -> None:
    papers = [paper("x", id=f"{i:05d}") for i in range(50)]
    s = Subscriber(email="a@example.org", max_papers=3, rules=(rule(any=("x",)),))
    assert len(match(papers, s)) == 50


def test_alerts_only_counts_only_alert_rules() -> None:
    by_mei = paper("fpga", id="1", authors=("Mei Tanaka",))
    other = paper("fpga", id="2")
    s = sub(rule(any=("fpga",)), rule(authors=("Mei Tanaka",), alert=True))
    assert [(m.paper.id, m.alert) for m in match([by_mei, other], s)] == [("1", True), ("2", False)]
    (m,) = match([by_mei, other], s, alerts_only=True)
    assert (m.paper.id, m.alert) == ("1", True)
    assert m.reasons == (Reason(rule=1, term="Mei Tanaka", field="authors"),)
    assert match([by_mei], sub(rule(any=("fpga",))), alerts_only=True) == []


def test_empty_input() -> None:
    assert match([], sub(rule(any=("x",)))) == []
