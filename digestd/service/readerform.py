"""The reader's form ↔ the subscriber mapping the reader repository stores.

The form's values are first checked for what only a form can get wrong (sizes, control
characters, a topic that is not offered, an hour out of range); what remains is the mapping the
admin could have written in subscribers.yaml, and that is validated by the very validator that
loads the YAML, whose messages are shown beside the field they name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from digestd.core.errors import ConfigProblem
from digestd.rules.readers import reader_spec

__all__ = [
    "LABELS",
    "WEEKDAYS",
    "FormValues",
    "errors_of",
    "spec_of",
    "values_from_form",
    "values_from_spec",
]

WEEKDAYS = (
    ("mon", "Monday"), ("tue", "Tuesday"), ("wed", "Wednesday"), ("thu", "Thursday"),
    ("fri", "Friday"), ("sat", "Saturday"), ("sun", "Sunday"),
)  # fmt: skip
LABELS = {
    "email": "Email address", "name": "Name", "topics": "Topics", "keywords": "Keywords",
    "authors": "Authors to follow", "query": "Query", "alerts": "Alerts", "hour": "Hour",
    "weekday": "Day of the week", "timezone": "Time zone", "max_papers": "Papers per mail",
    "schedule": "Schedule", "form": "Form",
}  # fmt: skip
MAX_ITEMS = 50  # keywords, authors
MAX_ITEM = 100  # characters of one keyword or author
MAX_QUERY = 1000
MAX_NAME = 100
MAX_EMAIL = 254
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_SPLIT = re.compile(r"[\n,;]")
_DAILY = re.compile(r"0 (\d{1,2}) \* \* \*")
_WEEKLY = re.compile(r"0 (\d{1,2}) \* \* (mon|tue|wed|thu|fri|sat|sun)")
# Monday to Friday: the example defaults' schedule, so a reader can keep it (and edit it back).
_WORKDAYS = re.compile(r"0 (\d{1,2}) \* \* mon-fri")
_FREQUENCIES = ("daily", "workdays", "weekly")


@dataclass(frozen=True, slots=True)
class FormValues:
    """What the form shows, as text (so a wrong value is shown back as typed)."""

    email: str = ""
    name: str = ""
    topics: tuple[str, ...] = ()
    keywords: str = ""
    authors: str = ""
    query: str = ""
    alerts: bool = False
    frequency: str = "daily"
    hour: int = 7
    weekday: str = "mon"
    timezone: str = "UTC"
    max_papers: str = "20"
    zone_chosen: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)  # spec keys the form does not edit


def values_from_form(form: Any, *, defaults: FormValues) -> FormValues:
    """The submitted fields (`form`: a formguard.Form); unknown or missing ones keep `defaults`."""
    hour = form.get("hour", str(defaults.hour))
    return replace(
        defaults,
        email=form.get("email", defaults.email).strip(),
        name=form.get("name", defaults.name).strip(),
        topics=tuple(dict.fromkeys(form.all("topics"))),
        keywords=form.get("keywords"),
        authors=form.get("authors"),
        query=form.get("query").strip(),
        alerts=form.get("alerts") == "on",
        frequency=_frequency(form.get("frequency")),
        hour=int(hour) if hour.isdigit() and len(hour) <= 2 else -1,
        weekday=form.get("weekday", defaults.weekday),
        timezone=form.get("timezone", defaults.timezone),
        max_papers=form.get("max_papers", defaults.max_papers).strip(),
        zone_chosen=True,
    )


def values_from_spec(spec: Mapping[str, Any], *, email: str, name: str | None) -> FormValues:
    """A stored reader's choices (rules/readers.py's spec: `use`, own `rules`, schedule…), shown
    for editing; keys the form does not edit are kept as they are."""
    schedule = str(spec.get("schedule", "0 7 * * *"))
    daily, weekly = _DAILY.fullmatch(schedule), _WEEKLY.fullmatch(schedule)
    workdays = _WORKDAYS.fullmatch(schedule)
    keywords: list[str] = []
    authors: list[str] = []
    query = ""
    alerts = False
    for rule in spec.get("rules") or ():
        if isinstance(rule, Mapping):
            keywords += list(rule.get("any") or ())
            authors += list(rule.get("authors") or ())
            query = str(rule.get("query") or query)
            alerts = alerts or bool(rule.get("alert"))
    known = {"use", "rules", "schedule", "timezone", "max_papers"}
    timed = weekly or daily or workdays
    hour = timed.group(1) if timed is not None else "7"
    return FormValues(
        email=email,
        name=name or "",
        topics=tuple(str(t) for t in spec.get("use") or ()),
        keywords="\n".join(keywords),
        authors="\n".join(authors),
        query=query,
        alerts=alerts,
        frequency="weekly" if weekly else "workdays" if workdays else "daily",
        hour=int(hour),
        weekday=weekly.group(2) if weekly else "mon",
        timezone=str(spec.get("timezone", "UTC")),
        max_papers=str(spec.get("max_papers", 20)),
        zone_chosen=True,
        extra={k: v for k, v in spec.items() if k not in known},
    )


def spec_of(
    values: FormValues, *, topics: Iterable[str], zones: Sequence[str], max_papers: int = 1000
) -> tuple[dict[str, Any], dict[str, str]]:
    """The subscriber mapping of `values`, and the problems only the form can have (field →
    message). The mapping is validated further by the subscribers file's validator."""
    errors: dict[str, str] = {}
    if len(values.name) > MAX_NAME or _CONTROL.search(values.name):
        errors["name"] = f"a name is one line of at most {MAX_NAME} characters"
    offered = set(topics)
    if any(t not in offered for t in values.topics):
        errors["topics"] = "pick from the topics listed"
    keywords = _items(values.keywords, "keywords", errors)
    authors = _items(values.authors, "authors", errors)
    if len(values.query) > MAX_QUERY or _CONTROL.search(values.query):
        errors["query"] = f"a query is one line of at most {MAX_QUERY} characters"
    if not 0 <= values.hour <= 23:
        errors["hour"] = "pick an hour from the list"
    if values.frequency == "weekly" and values.weekday not in dict(WEEKDAYS):
        errors["weekday"] = "pick a day from the list"
    if values.timezone not in zones:
        errors["timezone"] = "pick a time zone from the list"
    count = values.max_papers
    if not (count.isdigit() and len(count) <= 4 and 1 <= int(count) <= max_papers):
        errors["max_papers"] = f"a whole number from 1 to {max_papers}"
    if not (values.topics or keywords or authors or values.query):
        errors["topics"] = "choose a topic, or give keywords, authors or a query"
    day = {"weekly": values.weekday, "workdays": "mon-fri"}.get(values.frequency, "*")
    spec = reader_spec(
        topics=values.topics,
        keywords=keywords,
        authors=authors,
        query=values.query or None,
        alerts=values.alerts,
        schedule=f"0 {max(values.hour, 0)} * * {day}",
        timezone=values.timezone,
        max_papers=int(count) if "max_papers" not in errors else None,
    )
    return {**values.extra, **spec}, errors


def _items(text: str, name: str, errors: dict[str, str]) -> list[str]:
    items = [i.strip() for i in _SPLIT.split(text)]
    items = list(dict.fromkeys(i for i in items if i))
    if len(items) > MAX_ITEMS:
        errors[name] = f"at most {MAX_ITEMS} entries (this has {len(items)})"
    elif any(len(i) > MAX_ITEM or _CONTROL.search(i) for i in items):
        errors[name] = f"each entry is one line of at most {MAX_ITEM} characters"
    return items


# The subscriber file's keys → the form field that holds them.
_FIELD_OF = {
    "email": "email", "name": "name", "use": "topics", "topics": "topics", "any": "keywords",
    "keywords": "keywords", "authors": "authors", "query": "query", "alert": "alerts",
    "alerts": "alerts", "schedule": "schedule", "timezone": "timezone", "max_papers": "max_papers",
}  # fmt: skip


def errors_of(problems: Iterable[ConfigProblem | str]) -> dict[str, str]:
    """The validator's problems, each placed at the form field its path names (first one wins)."""
    errors: dict[str, str] = {}
    for problem in problems:
        path = problem.field if isinstance(problem, ConfigProblem) else ""
        message = problem.message if isinstance(problem, ConfigProblem) else str(problem)
        parts = [p for p in re.split(r"[.\[\]]", path) if p and not p.isdigit()]
        name = next((_FIELD_OF[p] for p in reversed(parts) if p in _FIELD_OF), "form")
        errors.setdefault(name, message)
    return errors


def _frequency(chosen: str) -> str:
    """The form's "daily", "workdays" or "weekly"; anything else is daily."""
    return chosen if chosen in _FREQUENCIES else "daily"
