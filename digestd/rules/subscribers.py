"""The subscribers file: YAML → validated, pre-folded `SubscriberSet`, or every problem at once.

Owned here: loading (the fast path first, rules/fastload.py), defaults inheritance, duplicate
addresses and unknown rule sets at their positions, and what `digestd check` prints (summary,
address notes). The schema and each value's check live in rules/schema.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydantic import (
    ValidationError,
)

from digestd.config.fastyaml import quick_load
from digestd.config.positions import Marks, dotted, load_yaml, problems_from_validation
from digestd.core.addresses import address_key, address_warning, check_address, parse_mailbox
from digestd.core.errors import ConfigError, ConfigProblem
from digestd.core.gcpause import gc_paused
from digestd.core.model import Rule, Subscriber, SubscriberSet
from digestd.rules.fastload import fast_file
from digestd.rules.schema import (
    DefaultsModel,
    FileModel,
    SubscriberModel,
    likes_of,
    parsed_query,
    rule_of,
    terms_of,
)

__all__ = [
    "address_notes",
    "may_have_address_notes",
    "load_subscribers",
    "subscriber_address_paths",
    "subscriber_of",
    "summarize",
]


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
    return fast_file(data, file)


def _validate(data: object, marks: Marks, file: str, *, fast: bool = True) -> SubscriberSet:
    if data is None:
        return SubscriberSet(subscribers=(), file=file)
    if not isinstance(data, dict):
        message = "the subscribers file must be a mapping with a 'subscribers' list"
        raise ConfigError([ConfigProblem(file, *marks.position(()), "", message)])
    problems = _duplicates(data.get("subscribers"), marks, file) + _unknown_sets(data, marks, file)
    if fast and not problems and (found := fast_file(data, file)) is not None:
        return found
    try:
        parsed = FileModel.model_validate(data)
    except ValidationError as exc:
        problems += problems_from_validation(exc, marks, file=file, schema=FileModel)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line, p.column)))
    sets = {name: tuple(map(rule_of, rules)) for name, rules in parsed.rule_sets.items()}
    subs = tuple(_subscriber(s, parsed.defaults, sets) for s in parsed.subscribers or ())
    return SubscriberSet(
        subscribers=subs, file=file, rule_sets=len(sets), named_sets=tuple(sets.items())
    )


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
        # An ASCII address is sent as written (stripped) or refused: its key needs no check.
        key = address_key(email if email.isascii() else _sent_as(email))
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
    raw: SubscriberModel, defaults: DefaultsModel, sets: dict[str, tuple[Rule, ...]]
) -> Subscriber:
    """Own keys win over defaults key by key; then the rules of each used set follow the own rules."""
    own = raw.rules if raw.rules is not None else defaults.rules
    rules = tuple(rule_of(r) for r in own or ())
    for name in raw.use if raw.use is not None else defaults.use or ():
        rules += sets[name]
    exclude = raw.exclude if raw.exclude is not None else defaults.exclude
    likes, like_files = likes_of(raw.like if raw.like is not None else defaults.like)
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
        exclude=terms_of(exclude.terms) if exclude else (),
        exclude_query=parsed_query(exclude.query) if exclude and exclude.query else None,
        send_empty=raw.send_empty,
        likes=likes,
        like_files=like_files,
    )


# A self-registered reader's entry is built exactly as a file's (rules/readers.py).
subscriber_of = _subscriber


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
        "with likes": sum(1 for s in subs if s.likes or s.like_files),
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
    # The fast reading when it is certain (100,000 addresses: PyYAML with positions took seconds);
    # positions are composed only for an address that has a note, which is rare.
    quick = quick_load(text)
    data, marks = (quick, Marks(text)) if quick is not None else load_yaml(text, file=file)
    notes: list[ConfigProblem] = []
    for path in paths(data):
        raw = _value_at(data, path)
        if not isinstance(raw, str):
            continue
        try:
            sent = parse_mailbox(raw)[1]
        except ValueError:
            continue
        found = []
        if sent != raw.strip().removesuffix(">").rpartition("<")[2].strip():
            found.append(f"sent as {sent!r} (IDNA A-labels)")
        if (warning := address_warning(sent)) is not None:
            found.append(f"warning: {warning}")
        if found:
            where = (file, *marks.position(path), dotted(path))
            notes += [ConfigProblem(*where, message) for message in found]
    return notes


def may_have_address_notes(text: str, subs: SubscriberSet) -> bool:
    """Whether `address_notes` can say anything of the subscribers file `subs` was loaded from.

    Its notes are an IDN domain rewritten (a domain with non-ASCII letters: none in an ASCII text)
    and a single-label domain (seen on the loaded, checked addresses). When neither can occur,
    `digestd check` need not read the YAML a second time (seconds at 100,000 subscribers).
    """
    if not text.isascii():
        return True
    return any("." not in sub.email.rpartition("@")[2] for sub in subs.subscribers)


def _value_at(data: object, path: YamlPath) -> object:
    for step in path:
        if isinstance(step, int) and isinstance(data, list) and step < len(data):
            data = data[step]
        elif isinstance(step, str) and isinstance(data, dict):
            data = data.get(step)
        else:
            return None
    return data
