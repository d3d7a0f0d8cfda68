"""quickyaml.py: the Rust parser stands in for PyYAML only where both build the same values, and
`load_subscribers` gives the same SubscriberSet (and the same positioned errors) either way."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest
import yaml

from digestd.config.fastyaml import quick_load
from digestd.config.positions import load_yaml
from digestd.core.errors import ConfigError
from digestd.rules import subscribers as rules
from digestd.rules.subscribers import _validate, load_subscribers

ROOT = Path(__file__).resolve().parents[2]


def pyyaml(text: str) -> object:
    data, marks = load_yaml(text, file="s")
    return _validate(data, marks, "s")


def one(value: str) -> str:
    return f"subscribers:\n  - email: a@example.org\n    name: {value}\n    rules: [{{any: [x]}}]\n"


# Plain scalars YAML 1.1 (PyYAML) and 1.2 (yaml_rs) read differently, and constructs one of them
# tolerates: each must keep the Rust parser out.
RISKY = [
    "no",
    "on",
    "Off",
    "YES",
    "y",
    "010",
    "0o10",
    "1e3",
    "1.5e3",
    "1_000",
    "1:20",
    "-0x1f",
    ".nAn",
    ".Inf",
    "=",
    "!!str x",
    "!foo x",
    "&a x",
    "*a",
    "x\t",
]


@pytest.mark.parametrize("value", RISKY)
def test_scalars_that_differ_between_yaml_versions_are_left_to_pyyaml(value: str) -> None:
    assert quick_load(one(value)) is None


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\n---\na: 2\n",
        "%YAML 1.1\n---\na: 1\n",
        "a: {<<: {b: 1}}\n",
        "a: \x07\n",
        "a: 1\na: 2\n",  # yaml_rs refuses duplicates: PyYAML's path reports them with a position
        "- a\n",  # not a mapping
        "a: [1, 2\n",  # a syntax error
        "",
    ],
)
def test_documents_the_rust_parser_does_not_vouch_for(text: str) -> None:
    assert quick_load(text) is None


@pytest.mark.parametrize(
    "value",
    ['"no"', "'on'", "~", "null", "true", "TRUE", "False", "20", "-3", "1.5", "x y", "'a: b'"],
)
def test_safe_scalars_read_the_same(value: str) -> None:
    text = f"a: {value}\nb: [{value}, x]\nc: {{k: {value}}}\n"
    quick = quick_load(text)
    assert quick is not None
    assert quick == yaml.safe_load(text) == load_yaml(text, file="s")[0]


@pytest.mark.parametrize("value", ['"010"', "'1e3'", "2026-01-01", "'10:30'"])
def test_number_shapes_bail_even_quoted(value: str) -> None:
    # The screen does not parse quoting for numbers: a false alarm costs time, never a result.
    assert quick_load(f"a: {value}\n") is None


def test_cron_stars_are_not_aliases() -> None:
    assert quick_load('defaults: {schedule: "*/5 * * * *"}\n') == {
        "defaults": {"schedule": "*/5 * * * *"}
    }


TRICKY = [
    # A bool where text is wanted, text where a bool or int is wanted, each quoted and plain.
    "subscribers:\n  - email: a@example.org\n    name: no\n    rules: [{any: [x]}]\n",
    "subscribers:\n  - email: a@example.org\n    name: 'no'\n    rules: [{any: [x]}]\n",
    "subscribers:\n  - email: a@example.org\n    rules: [{any: [on, '010'], alert: yes}]\n",
    "subscribers:\n  - email: a@example.org\n    rules: [{any: [x], alert: 'true'}]\n",
    "subscribers:\n  - email: a@example.org\n    rules: [{any: [x], min_upvotes: 010}]\n",
    "subscribers:\n  - email: a@example.org\n    rules: [{any: [x], min_upvotes: 1e3}]\n",
    "subscribers:\n  - email: a@example.org\n    rules: [{any: [x], min_upvotes: 1_000}]\n",
    "subscribers:\n  - email: a@example.org\n    rules: [{any: [2026-01-01, ~]}]\n",
    "subscribers:\n  - email: a@example.org\n    send_empty: on\n",
    "defaults: {max_papers: 0x10}\nsubscribers:\n  - email: a@example.org\n",
    "subscribers:\n  - email: a@example.org\n  - email: A@example.org\n",
    "subscribers:\n  - email: a@example.org\n    email: b@example.org\n",
    "rule_sets: {no: [{any: [x]}]}\nsubscribers:\n  - email: a@example.org\n    use: [no]\n",
    "subscribers:\n  - email: a@example.org\n    use: [nope]\n",
    'subscribers:\n  - email: a@example.org\n    rules: [{query: "a OR (b"}]\n',
    'defaults: {schedule: "*/5 * * * *"}\nsubscribers:\n  - email: a@example.org\n',
]


def outcome(load: object, text: str) -> object:
    try:
        return load(text)  # type: ignore[operator]
    except ConfigError as exc:
        return [str(p) for p in exc.problems]


@pytest.mark.parametrize("text", TRICKY)
def test_both_loaders_agree_on_tricky_files(text: str) -> None:
    assert outcome(lambda t: load_subscribers(t, file="s"), text) == outcome(pyyaml, text)


def test_the_rust_reading_is_used_for_a_clean_file(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "config/subscribers.example.yaml").read_text()
    used: list[bool] = []
    real = rules._quick_set
    monkeypatch.setattr(rules, "_quick_set", lambda *a: used.append(True) or real(*a))
    assert load_subscribers(text, file="s") == pyyaml(text)
    assert used == [quick_load(text) is not None]


def load_gen() -> object:
    spec = importlib.util.spec_from_file_location("bench_gen", ROOT / "bench" / "gen.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gen"] = module
    spec.loader.exec_module(module)
    return module


def test_a_generated_file_loads_identically_through_both_parsers() -> None:
    gen = load_gen()
    rng = random.Random(3)
    terms = gen.Skewed(rng, gen.vocabulary(rng, 300))  # type: ignore[attr-defined]
    people = gen.Skewed(rng, gen.authors(rng, 200))  # type: ignore[attr-defined]
    text = gen.subscribers_yaml(rng, 300, terms, people)  # type: ignore[attr-defined]
    quick = quick_load(text)
    assert quick is not None, "the generated file must take the fast reading"
    assert quick == load_yaml(text, file="s")[0]
    fast = rules._quick_set(quick, text, "s")
    assert fast is not None
    assert fast == pyyaml(text) == load_subscribers(text, file="s")
