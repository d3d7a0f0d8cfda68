"""rules.py: the subscribers file, its defaults, and every way it can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from digestd.core.addresses import check_address
from digestd.core.errors import ConfigError
from digestd.core.model import FIELDS, Rule, Subscriber, Term
from digestd.rules.subscribers import load_subscribers, summarize

EXAMPLE = """\
defaults:
  schedule: "0 7 * * mon-fri"
  timezone: UTC
  max_papers: 20
subscribers:
  - email: alice@example.org
    name: Alice
    timezone: Europe/Berlin
    rules:
      - any: ["kv cache", "attention offloading"]
      - all: [fpga, accelerator]
        none: [survey]
      - authors: ["Mei Tanaka"]
        alert: true
      - any: ["llm*"]
        min_upvotes: 10
        in: [title]
  - email: bob@example.org
"""

ROOT = Path(__file__).resolve().parents[2]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_subscribers(text, file="subs.yaml")
    return [str(p) for p in info.value.problems]


def one_rule(rule_yaml: str) -> str:
    """A file with one subscriber whose single rule is `rule_yaml` (indented at column 9)."""
    return f"subscribers:\n  - email: a@example.org\n    rules:\n      - {rule_yaml}\n"


def test_example_loads() -> None:
    sset = load_subscribers(EXAMPLE, file="subs.yaml")
    assert sset.file == "subs.yaml"
    alice, bob = sset.subscribers
    assert alice == Subscriber(
        email="alice@example.org",
        name="Alice",
        timezone="Europe/Berlin",
        schedule="0 7 * * mon-fri",
        max_papers=20,
        rules=(
            Rule(
                any=(
                    Term("kv cache", ("kv", "cache")),
                    Term("attention offloading", ("attention", "offloading")),
                )
            ),
            Rule(
                all=(Term("fpga", ("fpga",)), Term("accelerator", ("accelerator",))),
                none=(Term("survey", ("survey",)),),
            ),
            Rule(authors=("mei tanaka",), alert=True),
            Rule(any=(Term("llm*", ("llm",), prefix=True),), min_upvotes=10, fields=("title",)),
        ),
    )
    assert bob == Subscriber(email="bob@example.org")
    assert sset.by_email("ALICE@example.org") is alice


def test_defaults_are_inherited_and_overridden() -> None:
    text = """\
defaults: {schedule: "30 8 * * *", timezone: Asia/Tokyo, max_papers: 5}
subscribers:
  - email: a@example.org
  - email: b@example.org
    schedule: "0 9 * * 1"
    max_papers: 1000
"""
    a, b = load_subscribers(text, file="s").subscribers
    assert (a.schedule, a.timezone, a.max_papers) == ("30 8 * * *", "Asia/Tokyo", 5)
    assert (b.schedule, b.timezone, b.max_papers) == ("0 9 * * 1", "Asia/Tokyo", 1000)


def test_without_defaults_the_model_defaults_apply() -> None:
    (a,) = load_subscribers("subscribers:\n  - email: a@example.org\n", file="s").subscribers
    assert a == Subscriber(email="a@example.org")


def test_bare_strings_are_one_item_lists_and_fields_deduplicated() -> None:
    text = one_rule('any: "kv cache"\n        authors: "Anika García"\n        in: [title, title]')
    (rule,) = load_subscribers(text, file="s").subscribers[0].rules
    assert rule.any == (Term("kv cache", ("kv", "cache")),)
    assert rule.authors == ("anika garcia",)
    assert rule.fields == ("title",)
    assert FIELDS == ("title", "abstract")


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "subscribers: []\n", "defaults: {}\n"])
def test_empty_sets(text: str) -> None:
    assert load_subscribers(text, file="s").subscribers == ()


def test_the_shipped_example_files_load() -> None:
    for name in ("config/subscribers.example.yaml", "config/demo/subscribers.yaml"):
        path = ROOT / name
        if path.exists():
            assert load_subscribers(path.read_text(), file=name).subscribers


def test_yaml_syntax_error() -> None:
    assert problems("subscribers:\n  - email: a@example.org\n   name: x\n") == [
        "subs.yaml:3:4: did not find expected '-' indicator (while parsing a block collection)"
    ]


def test_not_a_mapping() -> None:
    assert problems("- a@example.org\n") == [
        "subs.yaml:1:1: the subscribers file must be a mapping with a 'subscribers' list"
    ]


def test_unknown_key_points_at_the_key() -> None:
    text = "subscribers:\n  - email: a@example.org\n    timezon: UTC\n"
    assert problems(text) == [
        "subs.yaml:3:5: subscribers[0].timezon: unknown key 'timezon'; allowed: abstract_chars,"
        " email, exclude, like, max_papers, name, rules, schedule, send_empty, timezone, use"
    ]


def test_unknown_rule_key_lists_rule_keys() -> None:
    assert problems(one_rule("any: [x]\n        titles: [y]")) == [
        "subs.yaml:5:9: subscribers[0].rules[0].titles: unknown key 'titles'; allowed: alert, all,"
        " any, authors, categories, in, min_upvotes, none, orgs, query, regex, similar, sources"
    ]


@pytest.mark.parametrize(
    ("email", "why"),
    [
        ("alice", "expected one local@domain"),
        ("a b@example.org", "expected one local@domain"),
        ("a@example.org, b@example.org", "expected one local@domain"),
        ("Bob <bob@example.org>", "expected one local@domain"),
        ("a@@example.org", "expected one local@domain"),
        (
            "a@exa_mple.org",
            "the domain label 'exa_mple' is not a host name (letters, digits, hyphens)",
        ),
        ("a@example.1", "the domain 'example.1' ends in a number, not a name"),
        ("a..b@example.org", "the local part 'a..b' is not a plain dot-atom"),
    ],
)
def test_bad_email(email: str, why: str) -> None:
    assert problems(f'subscribers:\n  - email: "{email}"\n') == [
        f"subs.yaml:2:12: subscribers[0].email: '{email}' is not a valid email address ({why})"
    ]


def test_email_rejects_controls_and_length() -> None:
    for bad in ("a@example.org\r\nBcc: x@y.org", "a\u2028b@example.org", "a@" + "x" * 250 + ".org"):
        with pytest.raises(ValueError, match="not a valid email address"):
            check_address(bad)


@pytest.mark.parametrize(
    ("email", "sent_as"),
    [
        ("a@example.org", "a@example.org"),
        ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
        ("alice@localhost", "alice@localhost"),
        ("a@bücher.de", "a@xn--bcher-kva.de"),
        ("a@Bücher.DE", "a@xn--bcher-kva.DE"),
    ],
)
def test_good_email(email: str, sent_as: str) -> None:
    assert check_address(email) == sent_as


@pytest.mark.parametrize(
    ("email", "why"),
    [
        ("\u0430lice@example.org", "the local part '\u0430lice' is not ASCII; that needs SMTPUTF8"),
        ("\u00e5@example.org", "the local part '\u00e5' is not ASCII; that needs SMTPUTF8"),
        ("al\u200bice@example.org", "it contains U+200B, an invisible or control character"),
        ("alice@exam\u200bple.org", "it contains U+200B, an invisible or control character"),
        (
            "alice@b\u00fccher_.de",
            "the domain label 'b\u00fccher_' is not a valid internationalised",
        ),
    ],
)
def test_i13_addresses_the_builder_refuses_are_refused_with_position(email: str, why: str) -> None:
    """What `build_message` would refuse never loads: the same check, the same words."""
    (problem,) = problems(f'subscribers:\n  - email: "{email}"\n')
    assert problem.startswith(f"subs.yaml:2:12: subscribers[0].email: {email!r} is not a valid")
    assert why in problem
    with pytest.raises(ValueError, match="not a valid email address"):
        check_address(email)


def test_i13_an_idn_address_and_its_a_labels_are_one_subscriber() -> None:
    text = "subscribers:\n  - email: a@b\u00fccher.de\n  - email: A@XN--BCHER-KVA.de\n"
    assert problems(text) == [
        "subs.yaml:3:12: subscribers[1].email: duplicate email 'A@XN--BCHER-KVA.de'"
        " (first at line 2)"
    ]


def test_i13_loaded_address_is_what_the_message_carries() -> None:
    sset = load_subscribers("subscribers:\n  - email: a@bücher.de\n", file="subs.yaml")
    (sub,) = sset.subscribers
    assert sub.email == "a@xn--bcher-kva.de" == check_address(sub.email)


def test_duplicate_email_is_case_insensitive() -> None:
    text = "subscribers:\n  - email: a@example.org\n  - email: A@Example.ORG\n"
    assert problems(text) == [
        "subs.yaml:3:12: subscribers[1].email: duplicate email 'A@Example.ORG' (first at line 2)"
    ]


def test_i14_addresses_that_share_a_store_key_are_duplicates() -> None:
    # The store keys " a@example.org" and "a@example.org" alike (`address_key` strips), so the
    # loader must refuse the second rather than let two entries share one subscriber's rows.
    text = 'subscribers:\n  - email: a@example.org\n  - email: " A@example.org"\n'
    assert problems(text) == [
        "subs.yaml:3:12: subscribers[1].email: duplicate email ' A@example.org' (first at line 2)"
    ]


@pytest.mark.parametrize(
    ("cron", "why"),
    [
        ("0 7 * * mon-fry", "is not a valid cron expression (Bad day-of-week)"),
        ("61 * * * *", "is not a valid cron expression (Bad minute)"),
        ("@daily", "is not a 5-field cron expression (minute hour day month weekday)"),
        ("0 7 * * * *", "is not a 5-field cron expression (minute hour day month weekday)"),
    ],
)
def test_bad_cron(cron: str, why: str) -> None:
    assert problems(f'defaults:\n  schedule: "{cron}"\n') == [
        f"subs.yaml:2:13: defaults.schedule: '{cron}' {why}"
    ]


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe", "../etc/passwd", ""])
def test_bad_timezone_names_the_value(zone: str) -> None:
    text = f'subscribers:\n  - email: a@example.org\n    timezone: "{zone}"\n'
    assert problems(text) == [
        f"subs.yaml:3:15: subscribers[0].timezone: unknown timezone '{zone}'"
        " (use an IANA name like Europe/Berlin)"
    ]


def test_in_must_name_fields() -> None:
    assert problems(one_rule("any: [x]\n        in: [titel]")) == [
        "subs.yaml:5:14: subscribers[0].rules[0].in[0]: 'titel' is not one of title, abstract"
    ]


@pytest.mark.parametrize("value", [0, 1001, -3])
def test_max_papers_range(value: int) -> None:
    (problem,) = problems(f"defaults:\n  max_papers: {value}\n")
    assert problem.startswith("subs.yaml:2:15: defaults.max_papers: Input should be")


def test_empty_rule() -> None:
    assert problems(one_rule("alert: true")) == [
        "subs.yaml:4:9: subscribers[0].rules[0]: a rule needs at least one of any, all, none,"
        " authors, orgs, regex, categories, sources, query, min_upvotes, similar"
    ]


def test_empty_term_and_author() -> None:
    assert problems(one_rule('any: ["kv cache", "--"]\n        authors: ["  "]')) == [
        "subs.yaml:4:27: subscribers[0].rules[0].any[1]: the term '--' has no letters or digits",
        "subs.yaml:5:19: subscribers[0].rules[0].authors[0]: the author '  ' has no letters or"
        " digits",
    ]


def test_empty_list_is_an_error() -> None:
    (problem,) = problems(one_rule("any: []"))
    assert problem.startswith(
        "subs.yaml:4:14: subscribers[0].rules[0].any: List should have at least 1"
    )


def test_wrong_shapes() -> None:
    text = "subscribers:\n  - email: a@example.org\n    rules: {any: [x]}\n  - 42\n"
    assert problems(text) == [
        "subs.yaml:3:12: subscribers[0].rules: expected a list, got {'any': ['x']}",
        "subs.yaml:4:5: subscribers[1]: expected a mapping, got 42",
    ]


def test_every_problem_is_reported_at_once_in_file_order() -> None:
    text = """\
defaults:
  timezone: Nowhere/Land
subscribers:
  - email: alice@example.org
    rules:
      - any: [x]
        in: [titel]
      - alert: true
  - email: not-an-address
  - email: ALICE@example.org
    max_papers: 0
  - name: no email
"""
    assert problems(text) == [
        "subs.yaml:2:13: defaults.timezone: unknown timezone 'Nowhere/Land'"
        " (use an IANA name like Europe/Berlin)",
        "subs.yaml:7:14: subscribers[0].rules[0].in[0]: 'titel' is not one of title, abstract",
        "subs.yaml:8:9: subscribers[0].rules[1]: a rule needs at least one of any, all, none,"
        " authors, orgs, regex, categories, sources, query, min_upvotes, similar",
        "subs.yaml:9:12: subscribers[1].email: 'not-an-address' is not a valid email address"
        " (expected one local@domain)",
        "subs.yaml:10:12: subscribers[2].email: duplicate email 'ALICE@example.org'"
        " (first at line 4)",
        "subs.yaml:11:17: subscribers[2].max_papers: Input should be greater than or equal to 1",
        "subs.yaml:12:5: subscribers[3].email: required key is missing",
    ]


def test_config_error_message_is_every_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_subscribers("subscribers:\n  - {email: x}\n  - {email: y}\n", file="s.yaml")
    assert str(info.value).splitlines() == [str(p) for p in info.value.problems]
    assert len(info.value.problems) == 2


def test_summarize() -> None:
    sset = load_subscribers(EXAMPLE, file="s")
    assert summarize(sset) == {
        "subscribers": 2,
        "without rules (get every paper)": 1,
        "rules": 4,
        "alert rules": 1,
        "timezones": 2,
        "schedules": 1,
        "rule sets": 0,
        "query rules": 0,
        "regex rules": 0,
        "with exclusions": 0,
        "with likes": 0,
    }


def test_twenty_thousand_subscribers_load() -> None:
    entry = (
        "  - email: user{i}@example.org\n"
        "    rules:\n"
        '      - any: ["kv cache", "topic {i}"]\n'
        "      - authors: [Mei Tanaka]\n"
        "        alert: true\n"
    )
    text = "subscribers:\n" + "".join(entry.format(i=i) for i in range(20_000))
    sset = load_subscribers(text, file="big.yaml")
    assert len(sset.subscribers) == 20_000
    assert sset.subscribers[-1].rules[0].any[1] == Term("topic 19999", ("topic", "19999"))


def test_i13_abstract_chars_per_subscriber_and_default() -> None:
    text = (
        "defaults:\n  abstract_chars: 200\nsubscribers:\n  - email: a@example.org\n"
        "  - email: b@example.org\n    abstract_chars: 0\n"
    )
    a, b = load_subscribers(text, file="subs.yaml").subscribers
    assert (a.abstract_chars, b.abstract_chars) == (200, 0)
    (c,) = load_subscribers("subscribers:\n  - email: c@example.org\n", file="s").subscribers
    assert 0 < c.abstract_chars <= 400  # a few lines by default, not the whole abstract
    bad = "subscribers:\n  - email: a@example.org\n    abstract_chars: -1\n"
    assert problems(bad)[0].startswith("subs.yaml:3:21: subscribers[0].abstract_chars:")
