"""A self-registered reader's choices are checked by the subscribers file's own validator: the
same messages as `digestd check`, and hostile input refused with a clear message, never raised."""

from __future__ import annotations

import pytest

from digestd.core.errors import ConfigError, ConfigProblem
from digestd.core.model import Subscriber
from digestd.rules.readers import (
    MAX_SPEC_BYTES,
    ReaderDefaults,
    reader_spec,
    validate_reader_spec,
)
from digestd.rules.subscribers import load_subscribers

FILE = """\
rule_sets:
  llm-systems:
    - any: ["kv cache", "paged attention"]
  vision:
    - any: [diffusion]
subscribers: []
"""
SETS = dict(load_subscribers(FILE, file="subscribers.yaml").named_sets)
TOPICS = {"llm-systems": "LLM systems"}


def problems(spec: dict[str, object], **kw: object) -> list[ConfigProblem]:
    found = validate_reader_spec(spec, email=kw.pop("email", "ann@example.org"), **kw)  # type: ignore[arg-type]
    assert isinstance(found, list), found
    return found


def test_a_form_becomes_a_subscriber_with_the_topics_rules() -> None:
    spec = reader_spec(
        topics=["llm-systems"], keywords=["speculative decoding"], authors=["Tri Dao"],
        query="title:serving", alerts=True, timezone="Europe/Berlin", max_papers=5,
    )  # fmt: skip
    sub = validate_reader_spec(spec, email="Ann@Example.org", name="Ann", sets=SETS, topics=TOPICS)
    assert isinstance(sub, Subscriber)
    assert (sub.email, sub.name, sub.timezone, sub.max_papers) == (
        "Ann@Example.org", "Ann", "Europe/Berlin", 5,
    )  # fmt: skip
    assert [r.alert for r in sub.rules] == [True, True, True, False]  # own rules, then the topic
    assert sub.rules[3] == SETS["llm-systems"][0]


def test_the_signup_defaults_fill_what_the_reader_left_out() -> None:
    defaults = ReaderDefaults(schedule="0 6 * * *", timezone="Asia/Tokyo", max_papers=7)
    sub = validate_reader_spec(reader_spec(keywords=["x1"]), email="a@b.org", defaults=defaults)
    assert isinstance(sub, Subscriber)
    assert (sub.schedule, sub.timezone, sub.max_papers) == ("0 6 * * *", "Asia/Tokyo", 7)


def test_messages_are_the_subscribers_files_own() -> None:
    bad_query = '"kv cache" OR (fpga AND accelerator'
    yaml = f"subscribers:\n  - email: a@b.org\n    rules:\n      - query: '{bad_query}'\n"
    with pytest.raises(ConfigError) as exc:
        load_subscribers(yaml, file="s.yaml")
    from_file = exc.value.problems[0].message
    found = problems(reader_spec(query=bad_query))
    assert [(p.field, p.message) for p in found] == [("rules[0].query", from_file)]
    assert "column 36" in from_file and "^" in from_file


def test_every_problem_is_reported_with_its_field() -> None:
    spec = reader_spec(keywords=["!!!"], schedule="every day", timezone="Mars/Olympus")
    fields = {p.field for p in problems({**spec, "max_papers": 0})}
    assert fields == {"rules[0].any[0]", "schedule", "timezone", "max_papers"}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Ann\r\nBcc: victim@example.org", "line breaks or control characters"),
        ("Ann\x1b[31m", "line breaks or control characters"),
        ("<script>alert(1)</script>", "may not contain < or >"),
        ("A" * 101, "at most 100 characters"),
    ],
)
def test_hostile_names_are_refused(name: str, message: str) -> None:
    found = problems(reader_spec(keywords=["kv cache"]), name=name)
    assert [p.field for p in found] == ["name"] and message in found[0].message


def test_a_one_megabyte_keyword_list_is_refused_whole() -> None:
    spec = reader_spec(keywords=["transformer"] * 100_000)
    found = problems(spec)
    assert found[0].message.startswith("too long:") and str(MAX_SPEC_BYTES) in found[0].message


def test_too_many_terms_are_refused() -> None:
    found = problems(reader_spec(keywords=[f"w{i}" for i in range(201)]))
    assert [(p.field, p.message) for p in found] == [("rules", "too many terms: 201 (at most 200)")]


def test_unknown_keys_bad_addresses_and_non_values_are_problems() -> None:
    assert problems({"rules": [], "send_to": "x"})[0].field == "send_to"
    assert problems({"rules": [], "email": "x@y.org"})[0].field == "email"
    assert problems(reader_spec(), email="not an address")[0].field == "email"
    assert (
        problems({"rules": [{"any": [object()]}]})[0].message == "the choices are not plain values"
    )


def test_only_offered_topics_may_be_picked() -> None:
    found = problems(reader_spec(topics=["vision"]), sets=SETS, topics=TOPICS)
    assert [(p.field, p.message) for p in found] == [
        ("use", "unknown topic 'vision' (known: llm-systems)")
    ]


def test_html_in_a_keyword_is_a_term_like_in_the_file() -> None:
    sub = validate_reader_spec(reader_spec(keywords=["<b>kv</b> cache"]), email="a@b.org")
    assert isinstance(sub, Subscriber) and sub.rules[0].any[0].words == ("b", "kv", "b", "cache")
