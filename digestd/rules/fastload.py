"""The subscribers file's fast path: plain values → `SubscriberSet` without a model per entry.

It accepts only what the validating path (rules/subscribers.py) accepts, builds the same result,
and gives up (None) at the first doubt, so that every error is still found and positioned there.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import (
    ValidationError,
)

from digestd.core.addresses import check_address
from digestd.core.model import FIELDS, And, Rule, Similar, Subscriber, SubscriberSet, Term
from digestd.rules.query import Node, fold_name, shared_term
from digestd.rules.schema import (
    ABSTRACT_CHARS_MAX,
    RULE_KEYS,
    DefaultsModel,
    FileModel,
    LikeModel,
    RuleModel,
    SubscriberModel,
    author_key,
    check_author,
    check_cron,
    check_name,
    check_org,
    check_pattern,
    check_query,
    check_timezone,
    likes_of,
    parsed_query,
    rule_of,
    terms_of,
)

__all__ = ["fast_file"]


class _Bail(Exception):
    """The fast path met something it does not vouch for: the validating path decides and explains."""


_SUB_KEYS = frozenset(SubscriberModel.model_fields) - {"rules", "exclude", "use"} | {
    "rules",
    "exclude",
    "use",
}
_RULE_FIELDS = frozenset(["in", *(k for k in RuleModel.model_fields if k != "in_")])
_FILE_KEYS = frozenset(["defaults", "rule_sets", "subscribers"])


def fast_file(data: dict[str, object], file: str) -> SubscriberSet | None:
    """The common case without a pydantic model per subscriber and rule (100,000 subscribers load in
    seconds). It accepts only values the validating path accepts, builds the same result, and
    gives up (None) at the first doubt, so that every error is still found and positioned there."""
    if not _FILE_KEYS.issuperset(data):
        return None
    try:
        defaults = DefaultsModel.model_validate(data.get("defaults", {}))
        sets_raw = FileModel.model_validate({"rule_sets": data.get("rule_sets", {})}).rule_sets
    except ValidationError:
        return None
    sets = {name: tuple(map(rule_of, rules)) for name, rules in sets_raw.items()}
    raw = data.get("subscribers")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        return None
    try:
        if defaults.use and not all(name in sets for name in defaults.use):
            raise _Bail
        subs = tuple(_fast_subscriber(entry, defaults, sets) for entry in raw)
    except (_Bail, ValueError):
        return None
    return SubscriberSet(
        subscribers=subs, file=file, rule_sets=len(sets), named_sets=tuple(sets.items())
    )


def _mapping(value: object, keys: frozenset[str]) -> dict[str, object]:
    """A dict with only known keys and no null values (null means 'unset': the slow path knows)."""
    if type(value) is not dict or not keys.issuperset(value) or None in value.values():
        raise _Bail
    return value


def _text(value: object) -> str:
    if type(value) is not str:
        raise _Bail
    return value


def _texts(value: object) -> list[str]:
    items = [value] if type(value) is str else value
    if type(items) is not list or not items or not all(type(v) is str for v in items):
        raise _Bail
    return items


def _count(value: object, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _Bail
    return value


def _fast_subscriber(
    entry: object, defaults: DefaultsModel, sets: dict[str, tuple[Rule, ...]]
) -> Subscriber:
    raw = _mapping(entry, _SUB_KEYS)
    if "rules" in raw:
        own = raw["rules"]
        if type(own) is not list:
            raise _Bail
        rules = tuple(map(_fast_rule, own))
    else:
        rules = tuple(map(rule_of, defaults.rules or ()))
    for set_name in _texts(raw["use"]) if "use" in raw else defaults.use or ():
        if set_name not in sets:
            raise _Bail
        rules += sets[set_name]
    terms, query = _fast_exclude(raw, defaults)
    likes, like_files = _fast_likes(raw, defaults)
    zone, cron = raw.get("timezone"), raw.get("schedule")
    return Subscriber(
        email=check_address(_text(raw.get("email"))),
        name=_text(raw["name"]) if "name" in raw else None,
        timezone=check_timezone(_text(zone)) if zone is not None else defaults.timezone,
        schedule=check_cron(_text(cron)) if cron is not None else defaults.schedule,
        max_papers=_count(raw["max_papers"], 1, 1000)
        if "max_papers" in raw
        else defaults.max_papers,
        abstract_chars=_count(raw["abstract_chars"], 0, ABSTRACT_CHARS_MAX)
        if "abstract_chars" in raw
        else defaults.abstract_chars,
        rules=rules,
        exclude=terms,
        exclude_query=query,
        send_empty=_fast_alert(raw["send_empty"]) if "send_empty" in raw else False,
        likes=likes,
        like_files=like_files,
    )


def _fast_likes(
    raw: dict[str, object], defaults: DefaultsModel
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Plain arXiv ids only; a `{file: ...}` entry (or anything odd) goes to the validating path."""
    if "like" not in raw:
        return likes_of(defaults.like)
    return likes_of([LikeModel(id=v) for v in _texts(raw["like"])])


def _fast_exclude(
    raw: dict[str, object], defaults: DefaultsModel
) -> tuple[tuple[Term, ...], Node | None]:
    if "exclude" not in raw:
        exclude = defaults.exclude
        if exclude is None:
            return (), None
        return terms_of(exclude.terms), parsed_query(exclude.query) if exclude.query else None
    value = raw["exclude"]
    if type(value) in (str, list):
        return _fast_terms(value), None
    found = _mapping(value, frozenset(["terms", "query"]))
    if not found:
        raise _Bail
    terms = _fast_terms(found["terms"]) if "terms" in found else ()
    query = _fast_query(found["query"]) if "query" in found else None
    return terms, query


def _fast_terms(value: object) -> tuple[Term, ...]:
    terms = tuple(map(shared_term, _texts(value)))
    if not all(t.words for t in terms):
        raise _Bail
    return terms


def _fast_query(value: object) -> Node:
    return parsed_query(check_query(_text(value)))


def _fast_fields(value: object) -> tuple[str, ...]:
    fields = _texts(value)
    if not _FIELD_NAMES.issuperset(fields):
        raise _Bail
    return tuple(dict.fromkeys(fields))


def _fast_alert(value: object) -> bool:
    if type(value) is not bool:
        raise _Bail
    return value


def _checked(check: Callable[[str], str], then: Callable[[str], str]) -> Callable[[object], object]:
    return lambda value: tuple(then(check(v)) for v in _texts(value))


_FIELD_NAMES = frozenset(FIELDS)
_RULE_KEY_SET = frozenset(RULE_KEYS)
# Rule key → (Rule attribute, converter); only the keys a rule sets are looked at.
_FAST_KEYS: dict[str, tuple[str, Callable[[object], object]]] = {
    "any": ("any", _fast_terms),
    "all": ("all", _fast_terms),
    "none": ("none", _fast_terms),
    "authors": ("authors", _checked(check_author, author_key)),
    "orgs": ("orgs", _checked(check_org, author_key)),
    "regex": ("regex", _checked(check_pattern, str)),
    "categories": ("categories", _checked(check_name, lambda v: fold_name(v, "categories"))),
    "sources": ("sources", _checked(check_name, lambda v: fold_name(v, "sources"))),
    "query": ("query", _fast_query),
    "min_upvotes": ("min_upvotes", lambda v: _count(v, 0, 1 << 62)),
    "in": ("fields", _fast_fields),
    "alert": ("alert", _fast_alert),
}


def _fast_similar(value: object) -> Similar:
    if value is True:
        return Similar()
    found = _mapping(value, frozenset(["min_score"]))
    if not found:
        raise _Bail
    score = found["min_score"]
    if type(score) not in (int, float) or not 0 <= score <= 1:  # type: ignore[operator]
        raise _Bail
    return Similar(min_score=float(score))  # type: ignore[arg-type]


def _fast_rule(entry: object) -> Rule:
    raw = _mapping(entry, _RULE_FIELDS)
    if _RULE_KEY_SET.isdisjoint(raw):
        raise _Bail
    values = {}
    for key, value in raw.items():
        if key != "similar":
            name, convert = _FAST_KEYS[key]
            values[name] = convert(value)
    if "similar" in raw:  # ANDed to the query, as rule_of does
        node = _fast_similar(raw["similar"])
        query = values.get("query")
        values["query"] = node if query is None else And((query, node))  # type: ignore[arg-type]
    return Rule(**values)  # type: ignore[arg-type]
