"""The subscribers file's schema: each value's check, the pydantic models, and model → `Rule`.

Shared by the validating path (rules/subscribers.py, which positions every problem) and the fast
path (rules/fastload.py, which must accept exactly what these checks accept).
"""

from __future__ import annotations

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
    field_validator,
    model_validator,
)

from digestd.core.addresses import check_address
from digestd.core.model import FIELDS, And, Rule, Similar, Subscriber, Term
from digestd.core.text import fold_words
from digestd.relevance.imports import arxiv_id_of
from digestd.rules.patterns import compile_pattern
from digestd.rules.query import Node, QuerySyntaxError, caret, fold_name, parse_query, shared_term

__all__ = [
    "ABSTRACT_CHARS_MAX",
    "RULE_KEYS",
    "DefaultsModel",
    "ExcludeModel",
    "FileModel",
    "LikeModel",
    "SimilarModel",
    "RuleModel",
    "SubscriberModel",
    "author_key",
    "check_author",
    "check_cron",
    "check_like",
    "check_name",
    "check_org",
    "check_pattern",
    "check_query",
    "check_timezone",
    "likes_of",
    "parsed_query",
    "rule_of",
    "similar_node",
    "terms_of",
]

_DEFAULTS = Subscriber(email="")
ABSTRACT_CHARS_MAX = 5000  # more than any abstract: 5000 means whole
# A fixed start: validating a cron expression must not read the clock.
_CRON_START = datetime(2000, 1, 1)


@lru_cache(maxsize=4096)
def check_cron(value: str) -> str:
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
def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown timezone '{value}' (use an IANA name like Europe/Berlin)"
        ) from None
    return value


@lru_cache(maxsize=1 << 16)
def author_key(value: str) -> str:
    return " ".join(fold_words(value))


def _check_term(value: str) -> str:
    if not shared_term(value).words:
        raise ValueError(f"the term '{value}' has no letters or digits")
    return value


def check_author(value: str) -> str:
    if not author_key(value):
        raise ValueError(f"the author '{value}' has no letters or digits")
    return value


def check_org(value: str) -> str:
    if not author_key(value):
        raise ValueError(f"the organisation '{value}' has no letters or digits")
    return value


def check_name(value: str) -> str:
    if not value.strip() or any(c.isspace() for c in value.strip()):
        raise ValueError(f"'{value}' is not a name (one word, like cs.LG or arxiv-cs)")
    return value


@lru_cache(maxsize=1 << 16)
def parsed_query(value: str) -> Node:
    return parse_query(value)


def check_query(value: str) -> str:
    try:
        parsed_query(value)
    except QuerySyntaxError as exc:
        raise ValueError(
            f"query error at column {exc.column}: {exc.message}\n{caret(value, exc.column)}"
        ) from None
    return value


def check_pattern(value: str) -> str:
    compile_pattern(value)
    return value


def check_like(value: str) -> str:
    """One `like:` entry: an arXiv id as people write it ('arXiv:2401.00001v2', a URL, the DOI)."""
    if arxiv_id_of(value) is None:
        raise ValueError(
            f"'{value}' is not an arXiv id (like '2401.00001', in quotes: YAML reads 2401.10000"
            " as the number 2401.1); a file goes as {file: path}"
        )
    return value


def _one_or_many(value: object) -> object:
    """A bare string where a list is expected is a one-item list."""
    return [value] if isinstance(value, str) else value


_Term = Annotated[str, AfterValidator(_check_term)]
_Terms = Annotated[list[_Term], Field(min_length=1)]
_Authors = Annotated[list[Annotated[str, AfterValidator(check_author)]], Field(min_length=1)]
_Orgs = Annotated[list[Annotated[str, AfterValidator(check_org)]], Field(min_length=1)]
_Names = Annotated[list[Annotated[str, AfterValidator(check_name)]], Field(min_length=1)]
_Patterns = Annotated[list[Annotated[str, AfterValidator(check_pattern)]], Field(min_length=1)]
_Query = Annotated[str, AfterValidator(check_query)]
_Fields = Annotated[list[Literal["title", "abstract"]], Field(min_length=1)]
_Cron = Annotated[str, AfterValidator(check_cron)]
_Zone = Annotated[str, AfterValidator(check_timezone)]
_MaxPapers = Annotated[int, Field(ge=1, le=1000)]
_AbstractChars = Annotated[int, Field(ge=0, le=ABSTRACT_CHARS_MAX)]
RULE_KEYS = (
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
    "similar",
)
# The rule keys that take a list (a bare string is a one-item list).
_LIST_KEYS = (*(k for k in RULE_KEYS if k not in ("query", "min_upvotes", "similar")), "in_")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)


class SimilarModel(_Strict):
    """`similar: {min_score: 0.35}`; `similar: true` (no min_score) is the reader's default."""

    min_score: Annotated[float, Field(ge=0, le=1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _true(cls, value: object) -> object:
        if value is True:
            return {}
        if isinstance(value, dict):
            return value
        raise ValueError("similar takes true or {min_score: 0.35} (a score from 0 to 1)")


class LikeModel(_Strict):
    """One `like:` entry: an arXiv id, or `{file: path}` (BibTeX, Zotero CSV, one id a line)."""

    id: Annotated[str, AfterValidator(check_like)] | None = None
    file: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain(cls, value: object) -> object:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return {"id": str(value)}  # YAML reads 2401.00001 as a number: keep its text
        return value

    @model_validator(mode="after")
    def _one(self) -> LikeModel:
        if (self.id is None) == (self.file is None):
            raise ValueError("a like is an arXiv id or {file: path}")
        return self


class RuleModel(_Strict):
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
    similar: SimilarModel | None = None
    in_: _Fields | None = Field(default=None, alias="in")
    alert: bool = False

    @field_validator(*_LIST_KEYS, mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _one_or_many(value)

    @model_validator(mode="after")
    def _not_empty(self) -> RuleModel:
        if all(getattr(self, key) is None for key in RULE_KEYS):
            raise ValueError(f"a rule needs at least one of {', '.join(RULE_KEYS)}")
        return self


class ExcludeModel(_Strict):
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
    def _not_empty(self) -> ExcludeModel:
        if self.terms is None and self.query is None:
            raise ValueError("exclude needs terms or a query")
        return self


_Use = list[str]  # [] opts out of defaults.use


class _RuleKeys(_Strict):
    """The keys that pick papers, the same under `defaults` and on a subscriber."""

    rules: list[RuleModel] | None = None
    use: _Use | None = None
    exclude: ExcludeModel | None = None
    like: list[LikeModel] | None = None  # [] opts out of defaults.like

    @field_validator("use", "like", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _one_or_many(value)


class DefaultsModel(_RuleKeys):
    schedule: _Cron = _DEFAULTS.schedule
    timezone: _Zone = _DEFAULTS.timezone
    max_papers: _MaxPapers = _DEFAULTS.max_papers
    abstract_chars: _AbstractChars = _DEFAULTS.abstract_chars


class SubscriberModel(_RuleKeys):
    email: Annotated[str, AfterValidator(check_address)]
    name: str | None = None
    schedule: _Cron | None = None
    timezone: _Zone | None = None
    max_papers: _MaxPapers | None = None
    abstract_chars: _AbstractChars | None = None
    send_empty: bool = False


class FileModel(_Strict):
    defaults: DefaultsModel = Field(default_factory=DefaultsModel)
    rule_sets: dict[str, Annotated[list[RuleModel], Field(min_length=1)]] = Field(
        default_factory=dict
    )
    subscribers: list[SubscriberModel] | None = None


def terms_of(values: list[str] | None) -> tuple[Term, ...]:
    return tuple(map(shared_term, values or ()))


def _names(values: list[str] | None, kind: str) -> tuple[str, ...]:
    if not values:
        return ()
    return tuple(fold_name(v, kind) for v in values or ())  # type: ignore[arg-type]


def similar_node(value: SimilarModel) -> Similar:
    """The `similar:` key's value → the query node it adds to its rule."""
    return Similar(min_score=value.min_score)


def _query(raw: RuleModel) -> Node | None:
    """The rule's query, with `similar:` ANDed to it (a rule holds when every key holds)."""
    query = parsed_query(raw.query) if raw.query is not None else None
    if raw.similar is None:
        return query
    node = similar_node(raw.similar)
    return node if query is None else And((query, node))


def likes_of(values: list[LikeModel] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A `like:` list → (arXiv ids, unversioned, each once; file paths as written)."""
    ids = [arxiv_id_of(v.id) for v in values or () if v.id is not None]
    files = [v.file for v in values or () if v.file is not None]
    return tuple(dict.fromkeys(i for i in ids if i)), tuple(dict.fromkeys(files))


def rule_of(raw: RuleModel) -> Rule:
    return Rule(
        any=terms_of(raw.any),
        all=terms_of(raw.all),
        none=terms_of(raw.none),
        authors=tuple(map(author_key, raw.authors or ())),
        min_upvotes=raw.min_upvotes,
        fields=tuple(dict.fromkeys(raw.in_)) if raw.in_ else FIELDS,
        alert=raw.alert,
        orgs=tuple(map(author_key, raw.orgs or ())),
        regex=tuple(raw.regex or ()),
        categories=_names(raw.categories, "categories"),
        sources=_names(raw.sources, "sources"),
        query=_query(raw),
    )
