"""The subscribers file: YAML → validated, pre-folded `SubscriberSet`, or every problem at once.

Owned here: the file's schema (kept private), defaults inheritance, address/cron/timezone checks,
duplicate addresses, and the one-screen summary `digestd check` prints.
"""

from __future__ import annotations

import re
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

from digestd.errors import ConfigError, ConfigProblem
from digestd.model import FIELDS, Rule, Subscriber, SubscriberSet
from digestd.text import fold_words, make_term
from digestd.yamlpos import Marks, dotted, gc_paused, load_yaml, problems_from_validation

__all__ = ["load_subscribers", "summarize", "validate_email"]

_DEFAULTS = Subscriber(email="")
# A fixed start: validating a cron expression must not read the clock.
_CRON_START = datetime(2000, 1, 1)
_LOCAL = re.compile(r"[^\s@,<>()\[\];:\\\"]+")
_LABEL = re.compile(r"[^\W_](?:(?:[^\W_]|-)*[^\W_])?")
_TLD = re.compile(r"[^\W\d_]{2,}|xn--[a-z0-9-]+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def validate_email(value: str) -> str:
    """Accept exactly one plain address `local@domain.tld`; the error says what is wrong."""
    if len(value) > 254:
        raise ValueError(
            f"'{value[:40]}…' is not a valid email address (longer than 254 characters)"
        )
    if _CONTROL.search(value) or not _plain_address(value):
        raise ValueError(f"'{value}' is not a valid email address (expected one local@domain.tld)")
    return value


def _plain_address(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    if not at or len(local) > 64 or not _LOCAL.fullmatch(local):
        return False
    labels = domain.split(".")
    return (
        len(labels) >= 2
        and all(_LABEL.fullmatch(label) for label in labels)
        and bool(_TLD.fullmatch(labels[-1]))
    )


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


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown timezone '{value}' (use an IANA name like Europe/Berlin)"
        ) from None
    return value


# Subscribers share terms and authors; a Term is frozen, so one instance can serve them all.
_term = lru_cache(maxsize=1 << 16)(make_term)


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


def _one_or_many(value: object) -> object:
    """A bare string where a list is expected is a one-item list."""
    return [value] if isinstance(value, str) else value


_Term = Annotated[str, AfterValidator(_check_term)]
_Terms = Annotated[list[_Term], Field(min_length=1)]
_Authors = Annotated[list[Annotated[str, AfterValidator(_check_author)]], Field(min_length=1)]
_Fields = Annotated[list[Literal["title", "abstract"]], Field(min_length=1)]
_Cron = Annotated[str, AfterValidator(_check_cron)]
_Zone = Annotated[str, AfterValidator(_check_timezone)]
_MaxPapers = Annotated[int, Field(ge=1, le=1000)]
_RULE_KEYS = ("any", "all", "none", "authors", "min_upvotes")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)


class _Rule(_Strict):
    any: _Terms | None = None
    all: _Terms | None = None
    none: _Terms | None = None
    authors: _Authors | None = None
    min_upvotes: Annotated[int, Field(ge=0)] | None = None
    in_: _Fields | None = Field(default=None, alias="in")
    alert: bool = False

    @field_validator("any", "all", "none", "authors", "in_", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _one_or_many(value)

    @model_validator(mode="after")
    def _not_empty(self) -> _Rule:
        if all(getattr(self, key) is None for key in _RULE_KEYS):
            raise ValueError(f"a rule needs at least one of {', '.join(_RULE_KEYS)}")
        return self


class _Defaults(_Strict):
    schedule: _Cron = _DEFAULTS.schedule
    timezone: _Zone = _DEFAULTS.timezone
    max_papers: _MaxPapers = _DEFAULTS.max_papers


class _Subscriber(_Strict):
    email: Annotated[str, AfterValidator(validate_email)]
    name: str | None = None
    schedule: _Cron | None = None
    timezone: _Zone | None = None
    max_papers: _MaxPapers | None = None
    rules: list[_Rule] | None = None
    send_empty: bool = False


class _File(_Strict):
    defaults: _Defaults = Field(default_factory=_Defaults)
    subscribers: list[_Subscriber] | None = None


def load_subscribers(text: str, *, file: str) -> SubscriberSet:
    """Parse and validate a subscribers file; an empty file is an empty set.

    :raises ConfigError: with every problem as FILE:LINE:COLUMN: field: message.
    """
    data, marks = load_yaml(text, file=file)
    with gc_paused():
        return _validate(data, marks, file)


def _validate(data: object, marks: Marks, file: str) -> SubscriberSet:
    if data is None:
        return SubscriberSet(subscribers=(), file=file)
    if not isinstance(data, dict):
        message = "the subscribers file must be a mapping with a 'subscribers' list"
        raise ConfigError([ConfigProblem(file, *marks.position(()), "", message)])
    problems = _duplicates(data.get("subscribers"), marks, file)
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        problems += problems_from_validation(exc, marks, file=file, schema=_File)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line, p.column)))
    subs = tuple(_subscriber(s, parsed.defaults) for s in parsed.subscribers or ())
    return SubscriberSet(subscribers=subs, file=file)


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
        key = email.casefold()
        if key not in first:
            first[key] = i
            continue
        path = ("subscribers", i, "email")
        line = marks.position(("subscribers", first[key], "email"))[0]
        message = f"duplicate email '{email}' (first at line {line})"
        problems.append(ConfigProblem(file, *marks.position(path), dotted(path), message))
    return problems


def _subscriber(raw: _Subscriber, defaults: _Defaults) -> Subscriber:
    return Subscriber(
        email=raw.email,
        name=raw.name,
        timezone=raw.timezone or defaults.timezone,
        schedule=raw.schedule or defaults.schedule,
        max_papers=raw.max_papers or defaults.max_papers,
        rules=tuple(_rule(r) for r in raw.rules or ()),
        send_empty=raw.send_empty,
    )


def _rule(raw: _Rule) -> Rule:
    return Rule(
        any=tuple(map(_term, raw.any or ())),
        all=tuple(map(_term, raw.all or ())),
        none=tuple(map(_term, raw.none or ())),
        authors=tuple(map(_author, raw.authors or ())),
        min_upvotes=raw.min_upvotes,
        fields=tuple(dict.fromkeys(raw.in_)) if raw.in_ else FIELDS,
        alert=raw.alert,
    )


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
    }
