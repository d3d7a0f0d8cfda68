"""rules.py, the richer language: query, regex, orgs, categories, sources, exclude, rule sets, defaults.rules,
their error positions, and the fast loading path agreeing with the validating one."""

from __future__ import annotations

from pathlib import Path

import pytest

from digestd.config.positions import load_yaml
from digestd.core.errors import ConfigError
from digestd.core.model import Rule, Term
from digestd.core.text import make_term
from digestd.rules.query import And, Compare, Name, Or, Text
from digestd.rules.subscribers import _validate, load_subscribers

ROOT = Path(__file__).resolve().parents[2]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_subscribers(text, file="subs.yaml")
    return [str(p) for p in info.value.problems]


def one_rule(rule_yaml: str) -> str:
    return f"subscribers:\n  - email: a@example.org\n    rules:\n      - {rule_yaml}\n"


def rules_of(text: str) -> tuple[Rule, ...]:
    return load_subscribers(text, file="s").subscribers[0].rules


def slow(text: str) -> object:
    data, marks = load_yaml(text, file="s")
    return _validate(data, marks, "s", fast=False)


def test_new_rule_keys_load_folded() -> None:
    text = one_rule(
        '{orgs: ["Hugging Face", Microsoft], regex: ["gpt-?4o?"], categories: [cs.LG, "cs.*"],'
        ' sources: [arXiv-CS], query: "title:moe upvotes>=20"}'
    )
    (rule,) = rules_of(text)
    assert rule.orgs == ("hugging face", "microsoft")
    assert rule.regex == ("gpt-?4o?",)
    assert rule.categories == ("cs.lg", "cs.*")
    assert rule.sources == ("arxiv-cs",)
    assert rule.query == And((Text(make_term("moe"), ("title",)), Compare("upvotes", ">=", 20)))


def test_bare_strings_for_the_new_lists() -> None:
    (rule,) = rules_of(one_rule("{orgs: Microsoft, regex: llama, categories: cs.CL}"))
    assert (rule.orgs, rule.regex, rule.categories) == (("microsoft",), ("llama",), ("cs.cl",))


def test_query_syntax_error_has_rule_position_query_column_and_caret() -> None:
    text = one_rule('query: "\\"kv cache\\" OR (fpga AND"')
    (problem,) = problems(text)
    first, query_line, caret_line = problem.splitlines()
    assert first == (
        "subs.yaml:4:16: subscribers[0].rules[0].query: query error at column 24: the query"
        " ends where a term was expected"
    )
    assert query_line == '    "kv cache" OR (fpga AND'
    assert caret_line == "    " + " " * 23 + "^"


def test_bad_regex_is_reported_at_its_position() -> None:
    (problem,) = problems(one_rule('regex: [ok, "(a)\\\\1"]'))
    assert problem.startswith(
        "subs.yaml:4:21: subscribers[0].rules[0].regex[1]: invalid regular expression '(a)\\1'"
    )
    assert "invalid escape sequence" in problem
    both = problems(one_rule('regex: ["(unclosed", "x{2,1}"]'))
    assert [p.split(": ")[0] for p in both] == ["subs.yaml:4:17", "subs.yaml:4:30"]


def test_empty_org_category_and_source() -> None:
    assert problems(one_rule('{orgs: ["--"], categories: ["cs LG"], sources: [""]}')) == [
        "subs.yaml:4:17: subscribers[0].rules[0].orgs[0]: the organisation '--' has no letters"
        " or digits",
        "subs.yaml:4:37: subscribers[0].rules[0].categories[0]: 'cs LG' is not a name (one word,"
        " like cs.LG or arxiv-cs)",
        "subs.yaml:4:57: subscribers[0].rules[0].sources[0]: '' is not a name (one word, like"
        " cs.LG or arxiv-cs)",
    ]


def test_exclude_terms_or_query() -> None:
    text = """\
subscribers:
  - email: a@example.org
    exclude: [survey, "position paper"]
  - email: b@example.org
    exclude: survey
  - email: c@example.org
    exclude: {terms: [survey], query: "org:acme OR upvotes<1"}
"""
    a, b, c = load_subscribers(text, file="s").subscribers
    assert a.exclude == (make_term("survey"), make_term("position paper"))
    assert b.exclude == (make_term("survey"),)
    assert c.exclude == (make_term("survey"),)
    assert c.exclude_query == Or((Name("orgs", "acme"), Compare("upvotes", "<", 1)))


def test_exclude_errors() -> None:
    text = """\
subscribers:
  - email: a@example.org
    exclude: {}
  - email: b@example.org
    exclude: {query: "a OR"}
  - email: c@example.org
    exclude: {term: [x]}
"""
    found = problems(text)
    assert found[0] == "subs.yaml:3:14: subscribers[0].exclude: exclude needs terms or a query"
    assert found[1].startswith(
        "subs.yaml:5:22: subscribers[1].exclude.query: query error at column 5: the query ends"
    )
    assert found[2].startswith("subs.yaml:7:15: subscribers[2].exclude.term: unknown key 'term'")


RULE_SETS = """\
defaults:
  rules:
    - any: [transformer]
  use: [systems]
rule_sets:
  systems:
    - any: ["kv cache"]
    - all: [fpga, accelerator]
  people:
    - authors: ["Tri Dao"]
subscribers:
  - email: a@example.org
  - email: b@example.org
    rules: [{any: [diffusion]}]
    use: [people, systems]
  - email: c@example.org
    rules: []
    use: []
  - email: d@example.org
    use: people
"""


def test_rule_sets_and_default_rules() -> None:
    a, b, c, d = load_subscribers(RULE_SETS, file="s").subscribers
    transformer = Rule(any=(make_term("transformer"),))
    kv = Rule(any=(make_term("kv cache"),))
    fpga = Rule(all=(make_term("fpga"), make_term("accelerator")))
    dao = Rule(authors=("tri dao",))
    assert a.rules == (transformer, kv, fpga)
    assert b.rules == (Rule(any=(make_term("diffusion"),)), dao, kv, fpga)
    assert c.rules == ()  # explicit empty lists opt out of the defaults: every paper
    assert d.rules == (transformer, dao)


def test_use_must_be_names() -> None:
    text = "subscribers:\n  - email: a@example.org\n    use: [{a: 1}]\n"
    (problem,) = problems(text)
    assert problem.startswith(
        "subs.yaml:3:11: subscribers[0].use[0]: Input should be a valid string"
    )


def test_unknown_rule_sets_are_reported_at_each_use() -> None:
    text = """\
defaults:
  use: [nope]
rule_sets:
  systems: [{any: [x]}]
subscribers:
  - email: a@example.org
    use: [systems, sytems]
"""
    assert problems(text) == [
        "subs.yaml:2:9: defaults.use[0]: unknown rule set 'nope' (known: systems)",
        "subs.yaml:7:20: subscribers[0].use[1]: unknown rule set 'sytems' (known: systems)",
    ]
    without = "subscribers:\n  - email: a@example.org\n    use: [x]\n"
    assert problems(without) == [
        "subs.yaml:3:11: subscribers[0].use[0]: unknown rule set 'x' (known: none defined; add a"
        " top-level rule_sets mapping)"
    ]


def test_bad_rule_inside_a_rule_set_is_positioned() -> None:
    text = "rule_sets:\n  s:\n    - {any: [x], titles: [y]}\n"
    (problem,) = problems(text)
    assert problem.startswith("subs.yaml:3:18: rule_sets.s[0].titles: unknown key 'titles'")


FAST_CASES = [
    RULE_SETS,
    one_rule('{any: ["kv cache", "llm*"], none: survey, in: title, min_upvotes: 3, alert: true}'),
    one_rule('{query: "author:\\"Tri Dao\\" OR org:microsoft -cat:cs.*", in: [abstract]}'),
    one_rule("{regex: [gpt], orgs: [Microsoft], sources: [hf], categories: [cs.LG]}"),
    "defaults: {exclude: [survey], timezone: Asia/Tokyo}\nsubscribers:\n  - email: a@example.org\n"
    "    schedule: '0 9 * * *'\n    name: A\n    max_papers: 3\n",
    "subscribers:\n  - email: a@example.org\n    exclude: {query: 'upvotes<2'}\n",
    # Values only the validating path accepts (coercions, nulls): the fast path must hand over.
    "subscribers:\n  - email: a@example.org\n    max_papers: '5'\n    name: null\n",
    one_rule("{any: [x], alert: 'yes', min_upvotes: 2.0}"),
    one_rule("{any: [x], in: null}"),
]


@pytest.mark.parametrize("text", FAST_CASES)
def test_fast_path_builds_what_the_validating_path_builds(text: str) -> None:
    assert load_subscribers(text, file="s") == slow(text)


def test_shipped_examples_agree_on_both_paths() -> None:
    for name in ("config/subscribers.example.yaml", "config/demo/subscribers.yaml"):
        text = (ROOT / name).read_text()
        assert load_subscribers(text, file="s") == slow(text)


def test_term_objects_are_shared() -> None:
    text = one_rule('{any: ["kv cache"], query: "\\"kv cache\\""}')
    (rule,) = rules_of(text)
    assert isinstance(rule.query, Text)
    assert rule.query.term is rule.any[0]
    assert rule.any[0] == Term("kv cache", ("kv", "cache"))


def write_config(tmp_path: Path, subscribers: str) -> Path:
    (tmp_path / "subscribers.yaml").write_text(subscribers, encoding="utf-8")
    config = tmp_path / "digestd.yaml"
    config.write_text(
        "source: {kind: file, url: papers.json}\nstate: state.sqlite3\n"
        "delivery: {kind: maildir, path: mail, from: 'D <d@example.org>'}\n"
        "subscribers: subscribers.yaml\n",
        encoding="utf-8",
    )
    return config


def test_check_prints_the_query_error_with_a_caret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from digestd.cli.main import main

    bad = one_rule("query: 'fpga OR (a b'") + "    use: [missing]\n"
    config = write_config(tmp_path, bad)
    assert main(["--config", str(config), "check"]) == 2
    err = capsys.readouterr().err.splitlines()
    where = str(tmp_path / "subscribers.yaml")
    assert err[:4] == [
        f"{where}:4:16: subscribers[0].rules[0].query: query error at column 13: missing ')' for"
        " the '(' at column 9",
        "    fpga OR (a b",
        "                ^",
        f"{where}:5:11: subscribers[0].use[0]: unknown rule set 'missing' (known: none defined;"
        " add a top-level rule_sets mapping)",
    ]


def test_check_accepts_the_richer_language(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from digestd.cli.main import main

    config = write_config(tmp_path, RULE_SETS)
    assert main(["--config", str(config), "check"]) == 0
    out = capsys.readouterr().out
    assert "rule sets: 2" in out and "ok" in out
