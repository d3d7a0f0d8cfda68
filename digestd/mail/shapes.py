"""Personalised renders at the cost of a string substitution: `render_personal` ≡ `render_digest`.

Thousands of subscribers get the same papers in one run, and their mails differ only in a few
values: the greeting's name, the unsubscribe, manage and web-copy links, and each paper's "more /
less like this" links (issue #16: one slot pair per paper, signed per reader and paper). Rendering and CSS-inlining
~40 KB of HTML per subscriber cost ~1 ms; here each distinct *shape* (papers, layout, kind, run-wide
context, which of those values are present) is rendered once with unique placeholder tokens, and
each subscriber's mail is that template with the tokens replaced by their values.

The result is byte for byte what `render_digest` returns, which is checked rather than assumed:

* A value goes through the fast path only when it is *plain*: no `& < > " '`, no-break space or
  control character. Such text is the same after Jinja's escaping and after css_inline's HTML
  serialisation, in any context (text, attribute, raw text), so substituting it verbatim is exact.
  Anything else (`O'Brien`, a URL with `&`) is rendered the slow way.
* A template must use each value verbatim. An override template could filter one (`| upper`,
  `| length`, a wrap whose breaks depend on its length); so each shape is rendered with two token
  sets of different lengths, and only when both agree once mapped back is the template kept.
  Otherwise that shape is rendered the slow way, every time.

Tokens carry a random per-process nonce, so paper text cannot contain one. The caches are bounded:
memory does not grow with the number of subscribers.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from digestd.core.model import Digest, Match, Paper, Reason, Rendered, Subscriber
from digestd.core.text import clean_header
from digestd.mail.paperview import safe_link, safe_url
from digestd.mail.parts import Personal
from digestd.mail.render import (
    HTML_BUDGET,
    TEXT_TEMPLATE,
    Environments,
    Layout,
    RenderContext,
    _trial,
    fit_sizes,
    render_digest,
    subject,
)

__all__ = ["SLOTS", "TOKENS", "is_plain", "page_template", "personal_template", "render_personal"]

SLOTS = ("name", "unsubscribe", "web", "manage")
_NAME_LIMIT = 100  # as render._values cuts subscriber names
_UNPLAIN = re.compile("[&<>\"'\u00a0\x00-\x1f\x7f-\x9f]")
_NONCE = secrets.token_hex(8)

_Spans = tuple[tuple[int, int], ...]
_MatchKey = tuple[Paper, tuple[Reason, ...], tuple[tuple[str, _Spans], ...], bool]


@dataclass(frozen=True, slots=True)
class _Tokens:
    """One placeholder per slot; the URL ones pass `safe_link`/`safe_url`, the name `clean_header`.
    `feedback`: one ("more", "less") pair per paper (issue #16), slots `fb{i}+` / `fb{i}-`."""

    name: str
    unsubscribe: str
    web: str
    manage: str
    feedback: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def make(tag: str, papers: int = 0) -> _Tokens:
        stem = f"{tag}{_NONCE}"
        return _Tokens(
            name=f"Zname{stem}Z",
            unsubscribe=f"https://u{stem}.invalid/{tag}",
            web=f"https://w{stem}.invalid/{tag}{tag}",
            manage=f"https://m{stem}.invalid/{tag}{tag}{tag}",
            # Fixed width: no placeholder is a prefix of another.
            feedback=tuple(
                (f"https://f{stem}.invalid/{tag}{i:04d}p", f"https://f{stem}.invalid/{tag}{i:04d}n")
                for i in range(papers)
            ),
        )

    def as_map(self) -> dict[str, str]:
        found = {
            "name": self.name,
            "unsubscribe": self.unsubscribe,
            "web": self.web,
            "manage": self.manage,
        }
        for i, (more, less) in enumerate(self.feedback):
            found[f"fb{i}+"], found[f"fb{i}-"] = more, less
        return found


@dataclass(frozen=True, slots=True)
class _Set:
    """The A and B tokens for shapes of `papers` feedback pairs, and what maps one onto the other."""

    a: _Tokens
    a_pattern: re.Pattern[str]
    b_pattern: re.Pattern[str]
    b_to_a: Mapping[str, str]
    a_bytes: Mapping[str, int]


@functools.lru_cache(maxsize=128)  # one per number of papers in a message (≤ max_papers)
def _set(papers: int) -> _Set:
    a, b = _Tokens.make("a", papers), _Tokens.make("bbbbbbb", papers)  # B: a different length
    a_map, b_map = a.as_map(), b.as_map()
    return _Set(
        a=a,
        a_pattern=re.compile("|".join(re.escape(t) for t in a_map.values())),
        b_pattern=re.compile("|".join(re.escape(t) for t in b_map.values())),
        b_to_a={b_map[slot]: token for slot, token in a_map.items()},
        a_bytes={slot: len(token.encode("utf-8")) for slot, token in a_map.items()},
    )


_A = _set(0).a
TOKENS = tuple(_A.as_map().items())  # (slot, placeholder) pairs of every web copy's HTML


@dataclass(frozen=True, slots=True)
class _Shape:
    """Everything a render depends on except the slot values (and only whether each is set)."""

    envs: Environments
    kind: str
    content: _Content
    rest: _Content  # the papers beyond max_papers, listed by title
    more: int
    ctx: RenderContext  # the slot fields replaced by None or the A tokens
    has_name: bool
    budget: int | None
    _hash: int = field(default=0, compare=False, repr=False)

    def __post_init__(self) -> None:
        # `_template`'s cache looks a shape up several times per message: hash its papers once.
        key = (self.envs, self.kind, self.content, self.rest, self.more, self.ctx)
        object.__setattr__(self, "_hash", hash((key, self.has_name, self.budget)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class _Template:
    """One layout of one shape rendered with the A tokens."""

    html: str
    text: str
    html_bytes: int
    counts: Mapping[str, int]  # occurrences of each slot's token in the HTML, for sizes


def render_personal(
    digest: Digest, envs: Environments, ctx: RenderContext, *, budget: int | None = HTML_BUDGET
) -> Rendered:
    """`render_digest(digest, envs, ctx, budget=budget)`, from a cached template when possible."""
    found = personal_template(digest, envs, ctx, budget=budget)
    return found.rendered() if isinstance(found, Personal) else found


def personal_template(
    digest: Digest, envs: Environments, ctx: RenderContext, *, budget: int | None = HTML_BUDGET
) -> Personal | Rendered:
    """`render_personal`'s message as its cached template plus this subscriber's values, or the
    full render when the template cannot serve (then a `Rendered`)."""
    values = slot_values(digest, ctx)
    if values is None:
        return render_digest(digest, envs, ctx, budget=budget)
    shape = _shape(digest, envs, ctx, values, budget)
    tokens = _set(len(ctx.feedback))

    def size(layout: Layout) -> int:
        found = _template(shape, layout)
        if found is None:
            raise _Unsubstitutable
        return found.html_bytes + sum(
            n * (len(values[slot].encode("utf-8")) - tokens.a_bytes[slot])
            for slot, n in found.counts.items()
            if n
        )

    try:
        layout = (
            fit_sizes(
                size,
                len(digest.matches),
                budget,
                cap=ctx.abstract_chars,
                beyond=len(digest.rest),
            )
            if budget is not None
            else Layout()
        )
        template = _template(shape, layout)
        if template is None:
            raise _Unsubstitutable
    except _Unsubstitutable:
        return render_digest(digest, envs, ctx, budget=budget)
    fills = tuple((token, values[slot]) for slot, token in tokens.a.as_map().items())
    return Personal(subject(digest), template.text, template.html, fills)


def page_template(
    digest: Digest, envs: Environments, ctx: RenderContext
) -> tuple[str, dict[str, str]] | None:
    """The unbudgeted HTML as (template, values): its tokens filled with the values give
    `render_personal`'s HTML (the web copy stores the template once, the values per reader).

    None when this digest takes the full render (a value is not plain, or the template does not
    use one verbatim); the caller then stores the whole page.
    """
    values = slot_values(digest, ctx)
    if values is None:
        return None
    found = _template(_shape(digest, envs, ctx, values, None), Layout())
    return None if found is None else (found.html, values)


class _Unsubstitutable(Exception):
    """The template does not use a slot verbatim: this shape is rendered the slow way."""


def slot_values(digest: Digest, ctx: RenderContext) -> dict[str, str] | None:
    """The subscriber's value for each slot ("" when unset), or None when one is not plain."""
    found = _slot_values(
        digest.subscriber.name or "", ctx.unsubscribe_url, ctx.web_url, ctx.manage_url
    )
    if found is None:
        return None
    values = dict(zip(SLOTS, found, strict=True))
    if ctx.feedback and not _feedback_plain(ctx.feedback):
        return None
    for i, (more, less) in enumerate(ctx.feedback):
        values[f"fb{i}+"], values[f"fb{i}-"] = more, less
    return values


_FEEDBACK_TAIL = re.compile(r"/feedback/[A-Za-z0-9_-]+")


def _feedback_plain(pairs: tuple[tuple[str, str], ...]) -> bool:
    """Every link is one checked base plus `/feedback/` and a base64url token: then each is what
    `safe_link` leaves as is, plain, without a placeholder (one URL parse, not one per link)."""
    first = pairs[0][0]
    base = first[: first.rfind("/feedback/")]
    if not base or safe_link(first) != first or not is_plain(base) or _NONCE in base:
        return False
    n = len(base)
    return all(
        u.startswith(base) and _FEEDBACK_TAIL.fullmatch(u, n) is not None
        for pair in pairs
        for u in pair
    )


@functools.lru_cache(maxsize=8)  # a message asks twice: for the mail, then for its web copy
def _slot_values(
    name: str, unsubscribe: str | None, web: str | None, manage: str | None
) -> tuple[str, ...] | None:
    clean = clean_header(name, limit=_NAME_LIMIT)
    unsub, page, prefs = unsubscribe or "", web or "", manage or ""
    # The templates see safe_link/safe_url of the links; a value they would change goes slow.
    if unsub and safe_link(unsub) != unsub or page and safe_url(page) != page:
        return None
    if prefs and safe_link(prefs) != prefs:
        return None
    values = (clean, unsub, page, prefs)  # in SLOTS order
    if any(not is_plain(v) or _NONCE in v for v in values):
        return None
    return values


def is_plain(value: str) -> bool:
    """Whether `value` reads the same after HTML escaping and re-serialisation, in any context."""
    return _UNPLAIN.search(value) is None


def _shape(
    digest: Digest,
    envs: Environments,
    ctx: RenderContext,
    values: Mapping[str, str],
    budget: int | None,
) -> _Shape:
    return _Shape(
        envs=envs,
        kind=digest.kind,
        content=_content(digest.matches),
        rest=_content(digest.rest),
        more=digest.more,
        ctx=_tokened_ctx(ctx, values, _set(len(ctx.feedback)).a),
        has_name=bool(values["name"]),
        budget=budget,
    )


@dataclass(frozen=True, slots=True, eq=False)
class _Content:
    """The papers of a shape as hashable keys, hashed once."""

    keys: tuple[_MatchKey, ...]
    hash: int

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, _Content) and self.hash == other.hash and self.keys == other.keys
        )

    def __hash__(self) -> int:
        return self.hash


# Every digest of a compose batch holds the same `Match` objects (one answer per list of papers):
# keyed by their ids, each entry keeping them alive so that no id is reused while it stands.
_CONTENTS: dict[tuple[int, ...], tuple[tuple[Match, ...], _Content]] = {}
_CONTENTS_MAX = 16


def _content(matches: tuple[Match, ...]) -> _Content:
    """`_match_key` of each match, hashed: ~10 papers' keys and hash, once per batch."""
    ids = tuple(map(id, matches))
    found = _CONTENTS.get(ids)
    if found is not None:
        return found[1]
    keys = tuple(_match_key(m) for m in matches)
    content = _Content(keys, hash(keys))
    if len(_CONTENTS) >= _CONTENTS_MAX:
        _CONTENTS.clear()
    _CONTENTS[ids] = (matches, content)
    return content


def _match_key(m: Match) -> _MatchKey:
    return (m.paper, m.reasons, tuple(sorted(m.highlights.items())), m.alert)


def _tokened_ctx(ctx: RenderContext, values: Mapping[str, str], tokens: _Tokens) -> RenderContext:
    return replace(
        ctx,
        unsubscribe_url=tokens.unsubscribe if values["unsubscribe"] else None,
        web_url=tokens.web if values["web"] else None,
        manage_url=tokens.manage if values["manage"] else None,
        feedback=tokens.feedback if ctx.feedback else (),
    )


@functools.lru_cache(maxsize=256)
def _template(shape: _Shape, layout: Layout) -> _Template | None:
    """The shape in `layout` with the A tokens, or None when the B render disagrees."""
    tokens = _set(len(shape.ctx.feedback))
    html_a, text_a = _render(shape, layout, tokens.a)
    html_b, text_b = _render(shape, layout, _Tokens.make("bbbbbbb", len(shape.ctx.feedback)))
    # An A token in the B render came from elsewhere (paper text): substituting it would be wrong.
    if tokens.a_pattern.search(html_b) or tokens.a_pattern.search(text_b):
        return None

    def to_a(found: re.Match[str]) -> str:
        return tokens.b_to_a[found.group()]

    if tokens.b_pattern.sub(to_a, html_b) != html_a or tokens.b_pattern.sub(to_a, text_b) != text_a:
        return None
    counts = {slot: html_a.count(token) for slot, token in tokens.a.as_map().items()}
    return _Template(html_a, text_a, len(html_a.encode("utf-8")), counts)


def _render(shape: _Shape, layout: Layout, tokens: _Tokens) -> tuple[str, str]:
    """Both parts of the shape in `layout`, the slots holding `tokens`."""
    present = {
        "name": tokens.name if shape.has_name else "",
        "unsubscribe": tokens.unsubscribe if shape.ctx.unsubscribe_url else "",
        "web": tokens.web if shape.ctx.web_url else "",
        "manage": tokens.manage if shape.ctx.manage_url else "",
    }
    digest = Digest(
        subscriber=Subscriber(email="slot@invalid", name=present["name"] or None),
        kind="alert" if shape.kind == "alert" else "digest",
        matches=tuple(_match(key) for key in shape.content.keys),
        more=shape.more,
        rest=tuple(_match(key) for key in shape.rest.keys),
    )
    ctx = _tokened_ctx(shape.ctx, present, tokens)
    values, html = _trial(digest, shape.envs, ctx, layout)
    text = shape.envs.text.get_template(TEXT_TEMPLATE).render(values)
    return html, text


def _match(key: _MatchKey) -> Match:
    paper, reasons, highlights, alert = key
    return Match(paper=paper, reasons=reasons, highlights=dict(highlights), alert=alert)
