"""yamlpos.py: YAML to plain values, positions of values and keys, pydantic errors as problems."""

from __future__ import annotations

from typing import Literal

import pydantic
import pytest

from digestd.config.positions import allowed_keys, dotted, load_yaml, problems_from_validation
from digestd.core.errors import ConfigError

DOC = """\
name: demo
count: 3
ratio: 0x10
items:
  - a: 1
    b: [yes, ~, 1.5, "7", 2024-01-01]
  - c: .inf
base: &base {p: 1, q: 2}
merged:
  <<: *base
  q: 3
empty:
"""


def load(text: str) -> object:
    return load_yaml(text, file="f.yaml")[0]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_yaml(text, file="f.yaml")
    return [str(p) for p in info.value.problems]


def test_values_are_plain_python() -> None:
    assert load(DOC) == {
        "name": "demo",
        "count": 3,
        "ratio": 16,
        "items": [{"a": 1, "b": [True, None, 1.5, "7", "2024-01-01"]}, {"c": float("inf")}],
        "base": {"p": 1, "q": 2},
        "merged": {"p": 1, "q": 3},
        "empty": None,
    }


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n...\n"])
def test_empty_document_is_none(text: str) -> None:
    assert load(text) is None


def test_positions_of_values_and_keys() -> None:
    _, marks = load_yaml(DOC, file="f.yaml")
    assert marks.position(("count",)) == (2, 8)
    assert marks.key_position(("count",)) == (2, 1)
    assert marks.position(("items", 0, "b", 3)) == (6, 22)
    assert marks.key_position(("items", 1, "c")) == (7, 5)
    assert marks.position(()) == (1, 1)


def test_missing_path_walks_up_to_the_nearest_ancestor() -> None:
    _, marks = load_yaml(DOC, file="f.yaml")
    assert marks.position(("items", 1, "nope", 4)) == marks.position(("items", 1))
    assert marks.position(("items", 9)) == marks.position(("items",))
    assert marks.key_position(("items", 0, "zzz")) == marks.position(("items", 0))


def test_syntax_error_has_line_column_and_pyyaml_text() -> None:
    (problem,) = problems("a: 1\nb: c: d\n")
    assert problem == "f.yaml:2:5: mapping values are not allowed in this context"


def test_unclosed_flow_sequence() -> None:
    (problem,) = problems("a: [1, 2\nb: 3\n")
    assert problem.startswith("f.yaml:2:")
    assert "did not find expected ',' or ']'" in problem


def test_duplicate_keys_all_reported() -> None:
    assert problems("a: 1\nb:\n  x: 1\n  x: 2\na: 3\n") == [
        "f.yaml:4:3: b.x: duplicate key",
        "f.yaml:5:1: a: duplicate key",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: !foo 3\n", "f.yaml:1:4: a: unsupported tag !foo"),
        ("? [1]\n: 2\n", "f.yaml:1:3: a mapping key must be a plain value"),
        ("a: &x [*x]\n", "f.yaml:1:8: a[0]: alias *x is undefined or refers to itself"),
        ("x: !!int abc\n", "f.yaml:1:4: x: invalid literal for int() with base 10: 'abc'"),
        ("- a\n---\n- b\n", "f.yaml:2:1: expected a single document, found another"),
        ("x: {<<: 3}\n", "f.yaml:1:9: x: a merge key (<<) needs a mapping"),
    ],
)
def test_structural_problems(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_dotted() -> None:
    assert dotted(("subscribers", 0, "rules", 1, "in")) == "subscribers[0].rules[1].in"
    assert dotted(()) == ""
    assert dotted((0, "a")) == "[0].a"


class Inner(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    where: list[Literal["title", "abstract"]] = pydantic.Field(default=["title"], alias="in")
    size: int = 1


class Outer(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str
    inner: list[Inner] = []
    extra: dict[str, Inner] | None = None


OUTER = """\
inner:
  - in: [titel]
    colour: red
  - size: many
"""


def validation_problems(text: str) -> list[str]:
    data, marks = load_yaml(text, file="o.yaml")
    with pytest.raises(pydantic.ValidationError) as info:
        Outer.model_validate(data)
    return [
        str(p) for p in problems_from_validation(info.value, marks, file="o.yaml", schema=Outer)
    ]


def test_problems_from_validation() -> None:
    assert validation_problems(OUTER) == [
        "o.yaml:1:1: name: required key is missing",
        "o.yaml:2:10: inner[0].in[0]: 'titel' is not one of title, abstract",
        "o.yaml:3:5: inner[0].colour: unknown key 'colour'; allowed: in, size",
        "o.yaml:4:11: inner[1].size: Input should be a valid integer, unable to parse string as an"
        " integer",
    ]


def test_shape_errors_name_no_private_class() -> None:
    assert validation_problems("name: x\ninner: [3]\n") == [
        "o.yaml:2:9: inner[0]: expected a mapping, got 3"
    ]


def test_unknown_key_without_schema_has_no_list() -> None:
    data, marks = load_yaml("name: x\nbogus: 1\n", file="o.yaml")
    with pytest.raises(pydantic.ValidationError) as info:
        Outer.model_validate(data)
    (problem,) = problems_from_validation(info.value, marks, file="o.yaml")
    assert str(problem) == "o.yaml:2:1: bogus: unknown key 'bogus'"


def test_allowed_keys_follows_lists_dicts_and_optionals() -> None:
    assert allowed_keys(Outer, ()) == {"name", "inner", "extra"}
    assert allowed_keys(Outer, ("inner", 3)) == {"in", "size"}
    assert allowed_keys(Outer, ("extra", "anything")) == {"in", "size"}
    assert allowed_keys(Outer, ("name",)) == set()


def test_large_file_loads() -> None:
    entry = '  - email: u{i}@example.org\n    rules:\n      - any: ["kv cache", t{i}]\n'
    text = "subscribers:\n" + "".join(entry.format(i=i) for i in range(20_000))
    data, marks = load_yaml(text, file="big.yaml")
    assert isinstance(data, dict)
    assert len(data["subscribers"]) == 20_000
    assert data["subscribers"][19_999]["rules"][0]["any"] == ["kv cache", "t19999"]
    assert marks.position(("subscribers", 19_999, "email")) == (3 * 19_999 + 2, 12)
