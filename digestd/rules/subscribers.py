"""The subscribers file: YAML → validated, pre-folded `SubscriberSet`, or every problem at once.

Owned here: the file's schema (kept private), defaults inheritance, address/cron/timezone checks,
duplicate addresses, and the one-screen summary `digestd check` prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from digestd.config.fastyaml import quick_load
from digestd.config.positions import Marks, dotted, load_yaml, problems_from_validation
from digestd.core.addresses import address_key, address_warning, check_address, parse_mailbox
from digestd.core.errors import ConfigError, ConfigProblem
from digestd.core.gcpause import gc_paused
from digestd.core.model import FIELDS, Rule, Subscriber, SubscriberSet, Term
from digestd.core.text import fold_words
from digestd.rules.patterns import compile_pattern
from digestd.rules.query import Node, QuerySyntaxError, caret, fold_name, parse_query, shared_term

__all__ = [
    "address_notes",
    "load_subscribers",
    "subscriber_address_paths",
    "summarize",
    "validate_email",
]

_DEFAULTS = Subscriber(email="")
_ABSTRACT_CHARS_MAX = 5000  # more than any abstract: 5000 means whole
# A fixed start: validating a cron expression must not read the clock.
_CRON_START = datetime(2000, 1, 1)


def validate_email(value: str) -> str:
    """The address as mail will carry it (IDN domains as A-labels): the mail builder's own check,
    so a file that loads never holds an address the builder refuses.

    :raises ValueError: saying what is wrong.
    """
    return check_address(value)


@lru_cache(maxsize=4096)
def _check_cron(value: str) -> str:
    if len(value.split()) != 5:
        raise ValueError(
            f"'{value}' is not a 5-field cron expression (minute hour day month weekday)"
        )
    try:
        CronSim(value, _CRON_START)
    except CronSimError as exc:
        raise ValueError(f"'{value}' is not a valid cron expression ({exc})") from None
    return value


@lru_cache(maxsize=4096)
def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown timezone '{value}' (use an IANA name like Europe/Berlin)"
        ) from None
    return value


_term = shared_term


@lru_cache(maxsize=1 << 16)
def _author(value: str) -> str:
    return " ".join(fold_words(value))


def _check_term(value: str) -> str:
    if not _term(value).words:
        raise ValueError(f"the term '{value}' has no letters or digits")
    return value


def _check_author(value: str) -> str:
    if not _author(value):
        raise ValueError(f"the author '{value}' has no letters or digits")
    return value


def _check_org(value: str) -> str:
    if not _author(value):
        raise ValueError(f"the organisation '{value}' has no letters or digits")
    return value


def _check_name(value: str) -> str:
    if not value.strip() or any(c.isspace() for c in value.strip()):
        raise ValueError(f"'{value}' is not a name (one word, like cs.LG or arxiv-cs)")
    return value


@lru_cache(maxsize=1 << 16)
def _query(value: str) -> Node:
    return parse_query(value)


def _check_query(value: str) -> str:
    try:
        _query(value)
    except QuerySyntaxError as exc:
        raise ValueError(
            f"query error at column {exc.column}: {exc.message}\n{caret(value, exc.column)}"
        ) from None
    return value


def _check_pattern(value: str) -> str:
    compile_pattern(value)
    return value


def _one_or_many(value: object) -> object:
    """A bare string where a list is expected is a one-item list."""
    return [value] if isinstance(value, str) else value


_Term = Annotated[str, AfterValidator(_check_term)]
_Terms = Annotated[list[_Term], Field(min_length=1)]
_Authors = Annotated[list[Annotated[str, AfterValidator(_check_author)]], Field(min_length=1)]
_Orgs = Annotated[list[Annotated[str, AfterValidator(_check_org)]], Field(min_length=1)]
_Names = Annotated[list[Annotated[str, AfterValidator(_check_name)]], Field(min_length=1)]
_Patterns = Annotated[list[Annotated[str, AfterValidator(_check_pattern)]], Field(min_length=1)]
_Query = Annotated[str, AfterValidator(_check_query)]
_Fields = Annotated[list[Literal["title", "abstract"]], Field(min_length=1)]
_Cron = Annotated[str, AfterValidator(_check_cron)]
_Zone = Annotated[str, AfterValidator(_check_timezone)]
_MaxPapers = Annotated[int, Field(ge=1, le=1000)]
_AbstractChars = Annotated[int, Field(ge=0, le=_ABSTRACT_CHARS_MAX)]
_RULE_KEYS = (
    "any",
    "all",
    "none",
    "authors",
    "orgs",
    "regex",
    "categories",
    "sources",
    "query",
    "min_upvotes",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)


class _Rule(_Strict):
    any: _Terms | None = None
    all: _Terms | None = None
    none: _Terms | None = None
    authors: _Authors | None = None
    min_upvotes: Annotated[int, Field(ge=0)] | None = None
    orgs: _Orgs | None = None
    regex: _Patterns | None = None
    categories: _Names | None = None
    sources: _Names | None = None
    query: _Query | None = None
    in_: _Fields | None = Field(default=None, alias="in")
    alert: bool = False

    @field_validator(
        "any",
        "all",
        "none",
        "authors",
        "orgs",
        "regex",
        "categories",
        "sources",
        "in_",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: object) -> object:
        return _one_or_many(value)

    @model_validator(mode="after")
    def _not_empty(self) -> _Rule:
        if all(getattr(self, key) is None for key in _RULE_KEYS):
            raise ValueError(f"a rule needs at least one of {', '.join(_RULE_KEYS)}")
        return self


class _Exclude(_Strict):
    """`exclude: {terms: [...], query: "..."}`; a plain list is its `terms`."""

    terms: _Terms | None = None
    query: _Query | None = None

    @field_validator("terms", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _one_or_many(value)

    @model_validator(mode="before")
    @classmethod
    def _plain_list(cls, value: object) -> object:
        return {"terms": value} if isinstance(value, list | str) else value

    @model_validator(mode="after")
    def _not_empty(self) -> _Exclude:
        if self.terms is None and self.query is None:
            raise ValueError("exclude needs terms or a query")
        return self


_Use = list[str]  # [] opts out of defaults.use


class _RuleKeys(_Strict):
    """The keys that pick papers, the same under `defaults` and on a subscriber."""

    rules: list[_Rule] | None = None
    use: _Use | None = None
    exclude: _Exclude | None = None

    @field_validator("use", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _one_or_many(value)


class _Defaults(_RuleKeys):
    schedule: _Cron = _DEFAULTS.schedule
    timezone: _Zone = _DEFAULTS.timezone
    max_papers: _MaxPapers = _DEFAULTS.max_papers
    abstract_chars: _AbstractChars = _DEFAULTS.abstract_chars


class _Subscriber(_RuleKeys):
    email: Annotated[str, AfterValidator(validate_email)]
    name: str | None = None
    schedule: _Cron | None = None
    timezone: _Zone | None = None
    max_papers: _MaxPapers | None = None
    abstract_chars: _AbstractChars | None = None
    send_empty: bool = False


class _File(_Strict):
    defaults: _Defaults = Field(default_factory=_Defaults)
    rule_sets: dict[str, Annotated[list[_Rule], Field(min_length=1)]] = Field(default_factory=dict)
    subscribers: list[_Subscriber] | None = None


def load_subscribers(text: str, *, file: str) -> SubscriberSet:
    """Parse and validate a subscribers file; an empty file is an empty set.

    :raises ConfigError: with every problem as FILE:LINE:COLUMN: field: message.
    """
    with gc_paused():
        quick = quick_load(text)
        if quick is not None and (found := _quick_set(quick, text, file)) is not None:
            return found
    data, marks = load_yaml(text, file=file)
    with gc_paused():
        return _validate(data, marks, file)


def _quick_set(data: dict[str, object], text: str, file: str) -> SubscriberSet | None:
    """The Rust parser's reading (equal to PyYAML's, see quickyaml), taken only when the strict fast
    path vouches for every value; any problem is left to the PyYAML path, which positions it."""
    marks = Marks(text)  # composed only if a check below finds a problem; then we give up anyway
    if _duplicates(data.get("subscribers"), marks, file) or _unknown_sets(data, marks, file):
        return None
    return _fast_file(data, file)


def _validate(data: object, marks: Marks, file: str, *, fast: bool = True) -> SubscriberSet:
    if data is None:
        return SubscriberSet(subscribers=(), file=file)
    if not isinstance(data, dict):
        message = "the subscribers file must be a mapping with a 'subscribers' list"
        raise ConfigError([ConfigProblem(file, *marks.position(()), "", message)])
    problems = _duplicates(data.get("subscribers"), marks, file) + _unknown_sets(data, marks, file)
    if fast and not problems and (found := _fast_file(data, file)) is not None:
        return found
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        problems += problems_from_validation(exc, marks, file=file, schema=_File)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line, p.column)))
    sets = {name: tuple(map(_rule, rules)) for name, rules in parsed.rule_sets.items()}
    subs = tuple(_subscriber(s, parsed.defaults, sets) for s in parsed.subscribers or ())
    return SubscriberSet(subscribers=subs, file=file, rule_sets=len(sets))


def _unknown_sets(data: dict[str, object], marks: Marks, file: str) -> list[ConfigProblem]:
    """Every `use:` entry naming no rule set, at its position; read from the raw data so that it is
    reported together with any other problem of the file."""
    sets = data.get("rule_sets")
    known = sorted(str(k) for k in sets) if isinstance(sets, dict) else []
    users: list[tuple[tuple[str | int, ...], object]] = [(("defaults",), data.get("defaults"))]
    subscribers = data.get("subscribers")
    if isinstance(subscribers, list):
        users += [(("subscribers", i), entry) for i, entry in enumerate(subscribers)]
    problems = []
    names = ", ".join(known) or "none defined; add a top-level rule_sets mapping"
    for base, entry in users:
        use = entry.get("use") if isinstance(entry, dict) else None
        for j, name in enumerate(use if isinstance(use, list) else [use] if use else []):
            if isinstance(name, str) and name not in known:
                path = (*base, "use", j) if isinstance(use, list) else (*base, "use")
                message = f"unknown rule set '{name}' (known: {names})"
                problems.append(ConfigProblem(file, *marks.position(path), dotted(path), message))
    return problems


def _duplicates(subscribers: object, marks: Marks, file: str) -> list[ConfigProblem]:
    """Addresses seen twice (case-insensitively), reported at the second one."""
    if not isinstance(subscribers, list):
        return []
    first: dict[str, int] = {}
    problems = []
    for i, entry in enumerate(subscribers):
        email = entry.get("email") if isinstance(entry, dict) else None
        if not isinstance(email, str):
            continue
        key = address_key(_sent_as(email))
        if key not in first:
            first[key] = i
            continue
        path = ("subscribers", i, "email")
        line = marks.position(("subscribers", first[key], "email"))[0]
        message = f"duplicate email '{email}' (first at line {line})"
        problems.append(ConfigProblem(file, *marks.position(path), dotted(path), message))
    return problems


def _sent_as(email: str) -> str:
    """The address as mail carries it (`bücher.de` and `xn--bcher-kva.de` are one subscriber)."""
    try:
        return check_address(email)
    except ValueError:
        return email  # refused at its own position


def _subscriber(
    raw: _Subscriber, defaults: _Defaults, sets: dict[str, tuple[Rule, ...]]
) -> Subscriber:
    """Own keys win over defaults key by key; then the rules of each used set follow the own rules."""
    own = raw.rules if raw.rules is not None else defaults.rules
    rules = tuple(_rule(r) for r in own or ())
    for name in raw.use if raw.use is not None else defaults.use or ():
        rules += sets[name]
    exclude = raw.exclude if raw.exclude is not None else defaults.exclude
    return Subscriber(
        email=raw.email,
        name=raw.name,
        timezone=raw.timezone or defaults.timezone,
        schedule=raw.schedule or defaults.schedule,
        max_papers=raw.max_papers or defaults.max_papers,
        abstract_chars=defaults.abstract_chars
        if raw.abstract_chars is None
        else raw.abstract_chars,
        rules=rules,
        exclude=_terms(exclude.terms) if exclude else (),
        exclude_query=_query(exclude.query) if exclude and exclude.query else None,
        send_empty=raw.send_empty,
    )


def _terms(values: list[str] | None) -> tuple[Term, ...]:
    return tuple(map(_term, values or ()))


def _names(values: list[str] | None, kind: str) -> tuple[str, ...]:
    if not values:
        return ()
    return tuple(fold_name(v, kind) for v in values or ())  # type: ignore[arg-type]


def _rule(raw: _Rule) -> Rule:
    return Rule(
        any=_terms(raw.any),
        all=_terms(raw.all),
        none=_terms(raw.none),
        authors=tuple(map(_author, raw.authors or ())),
        min_upvotes=raw.min_upvotes,
        fields=tuple(dict.fromkeys(raw.in_)) if raw.in_ else FIELDS,
        alert=raw.alert,
        orgs=tuple(map(_author, raw.orgs or ())),
        regex=tuple(raw.regex or ()),
        categories=_names(raw.categories, "categories"),
        sources=_names(raw.sources, "sources"),
        query=_query(raw.query) if raw.query is not None else None,
    )


class _Bail(Exception):
    """The fast path met something it does not vouch for: the validating path decides and explains."""


_SUB_KEYS = frozenset(_Subscriber.model_fields) - {"rules", "exclude", "use"} | {
    "rules",
    "exclude",
    "use",
}
_RULE_FIELDS = frozenset(["in", *(k for k in _Rule.model_fields if k != "in_")])
_FILE_KEYS = frozenset(["defaults", "rule_sets", "subscribers"])


def _fast_file(data: dict[str, object], file: str) -> SubscriberSet | None:
    """The common case without a pydantic model per subscriber and rule (100,000 subscribers load in
    seconds). It accepts only values the validating path accepts, builds the same result, and
    gives up (None) at the first doubt, so that every error is still found and positioned there."""
    if not _FILE_KEYS.issuperset(data):
        return None
    try:
        defaults = _Defaults.model_validate(data.get("defaults", {}))
        sets_raw = _File.model_validate({"rule_sets": data.get("rule_sets", {})}).rule_sets
    except ValidationError:
        return None
    sets = {name: tuple(map(_rule, rules)) for name, rules in sets_raw.items()}
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
    return SubscriberSet(subscribers=subs, file=file, rule_sets=len(sets))


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
    entry: object, defaults: _Defaults, sets: dict[str, tuple[Rule, ...]]
) -> Subscriber:
    raw = _mapping(entry, _SUB_KEYS)
    if "rules" in raw:
        own = raw["rules"]
        if type(own) is not list:
            raise _Bail
        rules = tuple(map(_fast_rule, own))
    else:
        rules = tuple(map(_rule, defaults.rules or ()))
    for set_name in _texts(raw["use"]) if "use" in raw else defaults.use or ():
        if set_name not in sets:
            raise _Bail
        rules += sets[set_name]
    terms, query = _fast_exclude(raw, defaults)
    zone, cron = raw.get("timezone"), raw.get("schedule")
    return Subscriber(
        email=validate_email(_text(raw.get("email"))),
        name=_text(raw["name"]) if "name" in raw else None,
        timezone=_check_timezone(_text(zone)) if zone is not None else defaults.timezone,
        schedule=_check_cron(_text(cron)) if cron is not None else defaults.schedule,
        max_papers=_count(raw["max_papers"], 1, 1000)
        if "max_papers" in raw
        else defaults.max_papers,
        abstract_chars=_count(raw["abstract_chars"], 0, _ABSTRACT_CHARS_MAX)
        if "abstract_chars" in raw
        else defaults.abstract_chars,
        rules=rules,
        exclude=terms,
        exclude_query=query,
        send_empty=_fast_alert(raw["send_empty"]) if "send_empty" in raw else False,
    )


def _fast_exclude(
    raw: dict[str, object], defaults: _Defaults
) -> tuple[tuple[Term, ...], Node | None]:
    if "exclude" not in raw:
        exclude = defaults.exclude
        if exclude is None:
            return (), None
        return _terms(exclude.terms), _query(exclude.query) if exclude.query else None
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
    terms = tuple(map(_term, _texts(value)))
    if not all(t.words for t in terms):
        raise _Bail
    return terms


def _fast_query(value: object) -> Node:
    return _query(_check_query(_text(value)))


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
_RULE_KEY_SET = frozenset(_RULE_KEYS)
# Rule key → (Rule attribute, converter); only the keys a rule sets are looked at.
_FAST_KEYS: dict[str, tuple[str, Callable[[object], object]]] = {
    "any": ("any", _fast_terms),
    "all": ("all", _fast_terms),
    "none": ("none", _fast_terms),
    "authors": ("authors", _checked(_check_author, _author)),
    "orgs": ("orgs", _checked(_check_org, _author)),
    "regex": ("regex", _checked(_check_pattern, str)),
    "categories": ("categories", _checked(_check_name, lambda v: fold_name(v, "categories"))),
    "sources": ("sources", _checked(_check_name, lambda v: fold_name(v, "sources"))),
    "query": ("query", _fast_query),
    "min_upvotes": ("min_upvotes", lambda v: _count(v, 0, 1 << 62)),
    "in": ("fields", _fast_fields),
    "alert": ("alert", _fast_alert),
}


def _fast_rule(entry: object) -> Rule:
    raw = _mapping(entry, _RULE_FIELDS)
    if _RULE_KEY_SET.isdisjoint(raw):
        raise _Bail
    values = {}
    for key, value in raw.items():
        name, convert = _FAST_KEYS[key]
        values[name] = convert(value)
    return Rule(**values)  # type: ignore[arg-type]


def summarize(sset: SubscriberSet) -> dict[str, int]:
    """Counts for `digestd check`: subscribers, rules, alert rules, timezones, schedules."""
    subs = sset.subscribers
    return {
        "subscribers": len(subs),
        "without rules (get every paper)": sum(1 for s in subs if not s.rules),
        "rules": sum(len(s.rules) for s in subs),
        "alert rules": sum(1 for s in subs for r in s.rules if r.alert),
        "timezones": len({s.timezone for s in subs}),
        "schedules": len({s.schedule for s in subs}),
        "rule sets": sset.rule_sets,
        "query rules": sum(1 for s in subs for r in s.rules if r.query is not None),
        "regex rules": sum(1 for s in subs for r in s.rules if r.regex),
        "with exclusions": sum(1 for s in subs if s.exclude or s.exclude_query is not None),
    }


YamlPath = tuple[str | int, ...]


def subscriber_address_paths(data: object) -> list[YamlPath]:
    """Where the subscribers file holds addresses: every `subscribers[i].email`."""
    subs = data.get("subscribers") if isinstance(data, dict) else None
    return [("subscribers", i, "email") for i in range(len(subs))] if isinstance(subs, list) else []


def address_notes(
    text: str, *, file: str, paths: Callable[[object], Iterable[YamlPath]]
) -> list[ConfigProblem]:
    """What `digestd check` says of the addresses it accepted, at their positions: a single-label
    domain that only a relay on the network can route, an IDN domain sent as its A-labels.

    `paths` names where the file holds addresses ("addr" or "Name <addr>"); a refused one is left
    to the loader's error.
    """
    data, marks = load_yaml(text, file=file)
    notes: list[ConfigProblem] = []
    for path in paths(data):
        raw = _value_at(data, path)
        if not isinstance(raw, str):
            continue
        try:
            sent = parse_mailbox(raw)[1]
        except ValueError:
            continue
        where = (file, *marks.position(path), dotted(path))
        if sent != raw.strip().removesuffix(">").rpartition("<")[2].strip():
            notes.append(ConfigProblem(*where, f"sent as {sent!r} (IDNA A-labels)"))
        if (warning := address_warning(sent)) is not None:
            notes.append(ConfigProblem(*where, f"warning: {warning}"))
    return notes


def _value_at(data: object, path: YamlPath) -> object:
    for step in path:
        if isinstance(step, int) and isinstance(data, list) and step < len(data):
            data = data[step]
        elif isinstance(step, str) and isinstance(data, dict):
            data = data.get(step)
        else:
            return None
    return data
