"""Plain, frozen values that flow through the pipeline: papers, rules, subscribers, matches, messages."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import IntEnum
from typing import Literal

from digestd.core.addresses import address_key

__all__ = [
    "ARXIV_ID",
    "FIELDS",
    "Authority",
    "Digest",
    "Field",
    "Match",
    "Outcome",
    "OutcomeStatus",
    "Paper",
    "is_arxiv_id",
    "ParseProblem",
    "ParseResult",
    "Reason",
    "ReasonKind",
    "Rendered",
    "Rule",
    "Similar",
    "Subscriber",
    "SubscriberSet",
    "Term",
    "Validators",
]

Field = Literal["title", "abstract"]
# Reasons that name a whole value rather than a term in a text field; "upvotes"/"comments" carry
# the comparison ("≥ 20"), "every" is a subscriber without rules (every new paper).
# "similar" carries the relevance score ("0.42") of `similar:` / `similar>=x`.
ReasonKind = Literal[
    "authors", "orgs", "categories", "sources", "upvotes", "comments", "every", "similar", "liked"
]
FIELDS: tuple[Field, ...] = ("title", "abstract")

# The one shape of an arXiv id, without its version: new style (2401.00001, 0704.0001) and old
# style (hep-th/9901001, math.GT/0309136). Ids become URL paths in e-mails: nothing else passes.
ARXIV_ID = r"(?:\d{4}\.\d{4,5}|[a-z]+(?:-[a-z]+)?(?:\.[A-Z]{2})?/\d{7})"
_ARXIV_ID = re.compile(ARXIV_ID)


def is_arxiv_id(value: str) -> bool:
    """True for an unversioned arXiv id ('2502.60001', 'hep-th/9901001'), False for anything else."""
    return _ARXIV_ID.fullmatch(value) is not None


class Authority(IntEnum):
    """How far a source's title, abstract and authors are believed (digestd.core.merge).

    arXiv is where the text comes from; Hugging Face copies it from arXiv's API; the RSS listing is
    arXiv's too but carries the abstract inside its description; a generic feed is anyone's claim.
    """

    UNKNOWN = 0
    FEED = 1
    ARXIV_RSS = 2
    HUGGINGFACE = 3
    ARXIV_API = 4


@dataclass(frozen=True, slots=True)
class Paper:
    """One paper, normalised once at the edge: arXiv id without version, whitespace collapsed."""

    id: str
    title: str
    abstract: str
    authors: tuple[str, ...] = ()
    upvotes: int = 0
    comments: int = 0
    published_at: datetime | None = None
    listed_on: date | None = None  # the Daily Papers day (paper.submittedOnDailyAt)
    organization: str | None = None
    ai_summary: str | None = None
    github_repo: str | None = None  # only http(s) URLs survive parsing
    project_page: str | None = None
    first_seen_at: datetime | None = None  # set by the store, not by sources
    categories: tuple[str, ...] = ()  # arXiv categories, primary first, when a source knows them
    sources: tuple[str, ...] = ()  # names of the configured sources that listed this paper
    version: int | None = None  # arXiv version (the N of vN) when the source says it
    on_huggingface: bool = False  # a Hugging Face listing had it: its HF page exists
    link: str | None = None  # the item's own page, for feed items that are not arXiv papers
    authority: Authority = Authority.UNKNOWN  # of the source whose text (title…) this holds

    @property
    def is_arxiv(self) -> bool:
        # Non-arXiv items get a `feed:` key; an id of any other shape never becomes a link.
        return is_arxiv_id(self.id)

    @property
    def primary_category(self) -> str | None:
        return self.categories[0] if self.categories else None

    @property
    def url(self) -> str:
        """Where the paper lives: its Hugging Face page when known, else arXiv, else its link."""
        if self.on_huggingface and self.is_arxiv:
            return f"https://huggingface.co/papers/{self.id}"
        if self.is_arxiv:
            return f"https://arxiv.org/abs/{self.id}"
        return self.link or ""

    @property
    def pdf_url(self) -> str | None:
        # Unversioned: arXiv serves the latest version, which is the one whose abstract we show.
        return f"https://arxiv.org/pdf/{self.id}" if self.is_arxiv else None


@dataclass(frozen=True, slots=True)
class ParseProblem:
    """An item of a source reply that could not be used; the rest of the batch goes on."""

    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class ParseResult:
    papers: tuple[Paper, ...]
    problems: tuple[ParseProblem, ...] = ()
    # Conditional-request state, saved by the pipeline only once the papers are stored.
    validators: tuple[Validators, ...] = ()
    not_modified: bool = False  # the server answered 304: nothing to store


@dataclass(frozen=True, slots=True)
class Validators:
    """What a server said identifies its reply (ETag, Last-Modified), kept per URL for the next poll."""

    url: str
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class Term:
    """A rule term, pre-folded: consecutive words, the last one a prefix when the term ended in '*'."""

    text: str
    words: tuple[str, ...]
    prefix: bool = False


# -- the `query:` tree (parsed by rules/query.py, walked by the evaluators) --------------

NameKind = Literal["authors", "orgs", "categories", "sources"]
Op = Literal[">=", "<=", ">", "<", "=", "!="]


@dataclass(frozen=True, slots=True)
class Text:
    """A term; `fields` None means the rule's `in:` fields."""

    term: Term
    fields: tuple[Field, ...] | None = None


@dataclass(frozen=True, slots=True)
class Name:
    """A whole-name atom: author, org, category or source, already folded (`value` may end in *)."""

    kind: NameKind
    value: str


@dataclass(frozen=True, slots=True)
class Compare:
    field: Literal["upvotes", "comments"]
    op: Op
    value: int

    def holds(self, actual: int) -> bool:
        op, v = self.op, self.value
        if op == ">=":
            return actual >= v
        if op == "<=":
            return actual <= v
        if op == ">":
            return actual > v
        if op == "<":
            return actual < v
        return actual == v if op == "=" else actual != v


@dataclass(frozen=True, slots=True)
class Similar:
    """`similar>=0.35` in a query, or the rule key `similar:`: the reader's relevance model scores
    the paper at least `min_score` (more than it, when `strict`). None: the reader's own threshold.
    Without a model (no likes yet) it never holds."""

    min_score: float | None = None
    strict: bool = False

    def holds(self, score: float, default: float) -> bool:
        bound = default if self.min_score is None else self.min_score
        return score > bound if self.strict else score >= bound


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]


Node = Text | Name | Compare | Similar | Not | And | Or


@dataclass(frozen=True, slots=True)
class Rule:
    """One subscriber rule; it holds when every key that is set holds."""

    any: tuple[Term, ...] = ()
    all: tuple[Term, ...] = ()
    none: tuple[Term, ...] = ()
    authors: tuple[str, ...] = ()  # folded full names
    min_upvotes: int | None = None
    fields: tuple[Field, ...] = FIELDS
    alert: bool = False
    orgs: tuple[str, ...] = ()  # folded like authors
    regex: tuple[str, ...] = ()  # RE2 patterns over the folded fields, checked at load time
    categories: tuple[str, ...] = ()  # casefolded; 'cs.*' matches a whole archive
    sources: tuple[str, ...] = ()  # casefolded names of configured sources
    query: Node | None = None


@dataclass(frozen=True, slots=True)
class Subscriber:
    email: str
    name: str | None = None
    timezone: str = "UTC"
    schedule: str = "0 7 * * mon-fri"
    max_papers: int = 20
    # Characters of each abstract a digest shows, cut at a word; 0: titles only. A few lines
    # on a phone: a 13-paper digest of nearly whole abstracts was 11,000 px tall there.
    abstract_chars: int = 300
    rules: tuple[Rule, ...] = ()
    send_empty: bool = False  # a short note, naming the quiet sources, when nothing matched
    # Applied after every rule: a paper hit by one of these terms, or holding this query, is dropped.
    exclude: tuple[Term, ...] = ()
    exclude_query: Node | None = None
    # `like:` in the subscribers file: arXiv ids, and files of them (BibTeX, Zotero CSV, one id a
    # line) read by digestd.relevance.imports; the file paths are kept as written.
    likes: tuple[str, ...] = ()
    like_files: tuple[str, ...] = ()

    @property
    def has_alerts(self) -> bool:
        return any(rule.alert for rule in self.rules)


@dataclass(frozen=True, slots=True)
class SubscriberSet:
    subscribers: tuple[Subscriber, ...]
    file: str = "<subscribers>"
    rule_sets: int = 0  # how many named rule sets the file defines (for `digestd check`)
    # The named rule sets themselves: the topics a self-registered reader may pick (issue 15).
    named_sets: tuple[tuple[str, tuple[Rule, ...]], ...] = field(
        default=(), compare=False, repr=False
    )

    # address key → the first entry with it; built at the first `by_email`. The reader pages
    # look up every request's address here on the event loop, and a scan of 20,000 entries
    # (20,000 address_key calls) cost tens of ms a request, more while compose holds the GIL.
    _by_key: dict[str, Subscriber] | None = field(
        default=None, init=False, compare=False, repr=False
    )

    def by_email(self, email: str) -> Subscriber | None:
        index = self._by_key
        if index is None:
            index = {}
            for s in self.subscribers:
                index.setdefault(address_key(s.email), s)
            object.__setattr__(self, "_by_key", index)  # a cache: the set itself never changes
        return index.get(address_key(email))


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a paper matched: which rule, and which term hit which field or which value held.

    `Reason(rule)` alone is a rule that held without naming anything (e.g. only `none:` terms)."""

    rule: int
    term: str | None = None
    field: Field | ReasonKind | None = None


@dataclass(frozen=True, slots=True)
class Match:
    paper: Paper
    reasons: tuple[Reason, ...] = ()
    alert: bool = False
    # Character spans (start, end) in the paper's original text to highlight, per field.
    highlights: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    # The reader's relevance score of the paper (digestd.relevance) when a model was asked; it
    # adds to the ranking score (rules/reference.py: score).
    relevance: float | None = None


@dataclass(frozen=True, slots=True)
class Digest:
    """What one subscriber gets in one message: the papers shown, and how many more matched."""

    subscriber: Subscriber
    kind: Literal["digest", "alert"]
    matches: tuple[Match, ...]
    more: int = 0  # matched but over max_papers
    # Those `more` papers, best first: listed by title (as the size budget allows) and whole on
    # the web copy; they count as delivered like the rest. Empty when only the count is known.
    rest: tuple[Match, ...] = ()


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str


OutcomeStatus = Literal["sent", "transient", "permanent", "in_doubt"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a transport made of one message; transports return it instead of raising for SMTP replies."""

    status: OutcomeStatus
    code: int | None = None
    reply: str = ""
