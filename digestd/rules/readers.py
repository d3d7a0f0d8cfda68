"""A self-registered reader's choices ("spec") → a `Subscriber`, checked by the subscribers file's
own validator, so a reader reads the very messages `digestd check` prints.

A spec is the YAML-shaped subscriber entry a reader chose, as `digestd subscribers export` writes
it into the admin's file (the address and name are kept beside it, not in it):

    {"use": ["llm-systems"],                     # topics: rule sets of the admin's file
     "rules": [{"any": ["kv cache"], "alert": true}, {"authors": ["Tri Dao"]},
               {"query": "title:serving"}],
     "schedule": "0 7 * * mon-fri", "timezone": "Europe/Berlin", "max_papers": 20}

`reader_spec` builds one from a form's fields; `validate_reader_spec` returns the `Subscriber`
the matcher will serve, or every problem (`ConfigProblem` with `field` relative to the spec, e.g.
`rules[2].query`, and line 0: a form has no lines).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from digestd.config.positions import Marks, load_yaml, problems_from_validation
from digestd.core.addresses import check_address
from digestd.core.errors import ConfigProblem
from digestd.core.model import Rule, Subscriber, SubscriberSet
from digestd.rules.schema import DefaultsModel, SubscriberModel
from digestd.rules.subscribers import subscriber_of

__all__ = [
    "MAX_NAME",
    "MAX_SPEC_BYTES",
    "MAX_TERMS",
    "ReaderDefaults",
    "check_reader_name",
    "reader_spec",
    "topic_problems",
    "validate_reader_spec",
]

# Generous for a person, far too small for a flood: a 1 MB keyword list is refused whole.
MAX_SPEC_BYTES = 16 * 1024
MAX_TERMS = 200
MAX_NAME = 100
_FORM = "<form>"
_SPEC_KEYS = frozenset({"use", "rules", "schedule", "timezone", "max_papers", "abstract_chars"})


@dataclass(frozen=True, slots=True)
class ReaderDefaults:
    """The admin's `signup.defaults`, as plain values (the rules never see the settings object)."""

    schedule: str = "0 7 * * mon-fri"
    timezone: str = "UTC"
    max_papers: int = 20


def reader_spec(
    *,
    topics: Sequence[str] = (),
    keywords: Sequence[str] = (),
    authors: Sequence[str] = (),
    query: str | None = None,
    alerts: bool = False,
    schedule: str | None = None,
    timezone: str | None = None,
    max_papers: int | None = None,
) -> dict[str, object]:
    """A form's fields → the YAML-shaped spec; empty fields are left out (the defaults apply)."""
    own: list[dict[str, object]] = []
    if keywords:
        own.append({"any": list(keywords)})
    if authors:
        own.append({"authors": list(authors)})
    if query:
        own.append({"query": query})
    if alerts:
        own = [{**rule, "alert": True} for rule in own]
    spec: dict[str, object] = {"use": list(topics), "rules": own}
    extra = {"schedule": schedule, "timezone": timezone, "max_papers": max_papers}
    spec.update({k: v for k, v in extra.items() if v is not None and v != ""})
    return spec


def check_reader_name(name: str | None) -> str | None:
    """A reader's display name, or None; it goes into a mail header and pages.

    :raises ValueError: control characters (CR/LF would forge headers) or more than `MAX_NAME`.
    """
    if name is None or not name.strip():
        return None
    if any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" for c in name):
        raise ValueError("a name may not contain line breaks or control characters")
    if "<" in name or ">" in name:
        raise ValueError("a name may not contain < or >")
    if len(name) > MAX_NAME:
        raise ValueError(f"a name may have at most {MAX_NAME} characters")
    return name.strip()


def validate_reader_spec(
    spec: Mapping[str, object],
    *,
    email: str,
    name: str | None = None,
    sets: Mapping[str, tuple[Rule, ...]] | None = None,
    topics: Mapping[str, str] | None = None,
    defaults: ReaderDefaults = ReaderDefaults(),
) -> Subscriber | list[ConfigProblem]:
    """The reader's `Subscriber`, or every problem found (never raises on hostile input).

    `sets` are the admin's rule sets by name; `topics` those a reader may pick (`signup.topics`;
    None: any of `sets`). Values are checked by rules/schema.py's models, the subscribers file's.
    """
    problems = _shape_problems(spec, email, name)
    if any(p.field in ("", "rules") for p in problems):
        return problems  # too big to look into
    try:
        raw = SubscriberModel.model_validate({**spec, "email": email, "name": None})
    except ValidationError as exc:
        found = problems_from_validation(exc, Marks(), file=_FORM, schema=SubscriberModel)
        problems += [ConfigProblem(_FORM, 0, 0, p.field, p.message) for p in found]
    if problems:
        return problems
    raw = raw.model_copy(update={"name": check_reader_name(name)})
    sets = sets or {}
    allowed = topics if topics is not None else sets
    unknown = [t for t in raw.use or () if t not in allowed or t not in sets]
    if unknown:
        known = ", ".join(sorted(k for k in allowed if k in sets)) or "none offered"
        message = f"unknown topic '{unknown[0]}' (known: {known})"
        return [ConfigProblem(_FORM, 0, 0, "use", message)]
    base = DefaultsModel(
        schedule=defaults.schedule, timezone=defaults.timezone, max_papers=defaults.max_papers
    )
    return subscriber_of(raw, base, dict(sets))


def _shape_problems(
    spec: Mapping[str, object], email: str, name: str | None
) -> list[ConfigProblem]:
    """What no schema message covers: size, unknown keys, the address and the name."""
    problems: list[ConfigProblem] = []

    def problem(field: str, message: str) -> None:
        problems.append(ConfigProblem(_FORM, 0, 0, field, message))

    try:
        size = len(json.dumps(spec, ensure_ascii=False).encode())
    except (TypeError, ValueError):
        return [ConfigProblem(_FORM, 0, 0, "", "the choices are not plain values")]
    if size > MAX_SPEC_BYTES:
        problem("", f"too long: {size} bytes of rules (at most {MAX_SPEC_BYTES})")
    if (terms := _count_terms(spec)) > MAX_TERMS:
        problem("rules", f"too many terms: {terms} (at most {MAX_TERMS})")
    for key in sorted(set(spec) - _SPEC_KEYS):
        problem(str(key), f"unknown key (allowed: {', '.join(sorted(_SPEC_KEYS))})")
    try:
        check_address(email)
    except ValueError as exc:
        problem("email", str(exc))
    for key in ("email", "name"):
        if key in spec:
            problem(key, "is not part of the rules")
    try:
        check_reader_name(name)
    except ValueError as exc:
        problem("name", str(exc))
    return problems


def _count_terms(spec: Mapping[str, object]) -> int:
    rules = spec.get("rules")
    if not isinstance(rules, list):
        return 0
    count = 0
    for rule in rules:
        for value in rule.values() if isinstance(rule, dict) else ():
            count += len(value) if isinstance(value, list) else 1
    return count


def topic_problems(
    topics: Mapping[str, str], sset: SubscriberSet, *, text: str, file: str
) -> list[ConfigProblem]:
    """`signup.topics` naming no rule set of the subscribers file, at their place in the settings
    file (`text`), for `digestd check` and reloads."""
    known = {name for name, _ in sset.named_sets}
    unknown = [name for name in topics if name not in known]
    if not unknown:
        return []
    _, marks = load_yaml(text, file=file)
    names = ", ".join(sorted(known)) or "none defined; add a top-level rule_sets mapping"
    return [
        ConfigProblem(
            file,
            *marks.key_position(("signup", "topics", name)),
            f"signup.topics.{name}",
            f"unknown rule set '{name}' in {sset.file} (known: {names})",
        )
        for name in unknown
    ]
