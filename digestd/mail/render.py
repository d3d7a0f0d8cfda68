"""Jinja environments and `Digest → Rendered(subject, text, html)`, CSS inlined.

Paper text is untrusted (titles, abstracts, links come from submitters). Everything that reaches the
HTML template is either escaped by autoescape or is `Markup` this module built from escaped pieces;
only http(s) links survive. The text part is a reading version of its own, not stripped HTML.
"""

from __future__ import annotations

import functools
import re
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import css_inline
import jinja2
from markupsafe import Markup, escape

import digestd
from digestd.core.errors import ConfigError, ConfigProblem
from digestd.core.model import Digest, Match, Paper, Reason, Rendered
from digestd.core.text import clean_header, collapse

__all__ = [
    "HTML_BUDGET",
    "Environments",
    "Layout",
    "RenderContext",
    "check_templates",
    "make_environments",
    "render_digest",
    "templates_dir",
]

HTML_TEMPLATE = "digest.html.j2"
TEXT_TEMPLATE = "digest.txt.j2"

# Gmail clips at ~102 KB of HTML and the clipped tail holds the unsubscribe link (delivery.md §1.5).
HTML_BUDGET = 90_000
# Abstract lengths tried, longest first, before papers are listed by title only.
ABSTRACT_STEPS = (600, 250, 0)
LISTED_TITLE_CHARS = 160
KEEP_WHOLE = 10  # papers kept whole when even the titles of all the others do not fit
MAX_AUTHORS = 8
TEXT_ABSTRACT_CHARS = 600
# Gmail clips a message at ~102 KB of HTML (delivery.md §1.5); long abstracts are cut in HTML too.
HTML_ABSTRACT_CHARS = 1500
TITLE_CHARS = 300
SUBJECT_TITLE_CHARS = 120
TEXT_WIDTH = 72

# Length-preserving: every control or line break becomes one space, so highlight spans stay valid.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# keep_at_rules keeps only the @media blocks (dark mode, narrow screens) in a <style>; the rest is
# inlined because several clients drop <style> entirely.
_INLINER = css_inline.CSSInliner(
    load_remote_stylesheets=False, keep_style_tags=False, keep_at_rules=True
)


@dataclass(frozen=True, slots=True)
class Environments:
    html: jinja2.Environment
    text: jinja2.Environment


@dataclass(frozen=True, slots=True)
class RenderContext:
    """What a message says besides the papers; the caller computes it (render reads no clock)."""

    site_name: str
    date_label: str
    unsubscribe_url: str | None = None
    manage_note: str = ""
    web_url: str | None = None
    web_copy: bool = False  # rendering the page the web_url serves, not the mail
    max_papers: int | None = None  # the subscriber's cap, to explain `more`
    abstract_chars: int | None = None  # the subscriber's choice (0: titles only); None: no cap


@dataclass(frozen=True, slots=True)
class Layout:
    """How much of each paper fits: the first `full` papers with abstracts cut at `abstract_chars`,
    the next `listed` by title only, the rest left out (the mail says so); of the papers beyond
    `max_papers` (`Digest.rest`), the first `beyond` titles. None: all of them."""

    abstract_chars: int = HTML_ABSTRACT_CHARS
    full: int | None = None
    listed: int | None = None
    beyond: int | None = None


@dataclass(frozen=True, slots=True)
class Link:
    label: str
    url: str


@dataclass(frozen=True, slots=True)
class PaperView:
    """One paper as the templates see it: plain strings for text, `Markup` built here for HTML."""

    number: int
    title: str
    title_html: Markup
    authors: str
    url: str
    pdf_url: str | None  # None for feed items that are not arXiv papers
    links: tuple[Link, ...]
    upvotes: int
    comments: int
    organization: str | None
    tldr: str | None
    abstract_html: Markup
    abstract_text: str
    why: str
    abstract_cut: bool = False  # the abstract ends in "…": the HTML links to the whole one


def templates_dir() -> Path:
    """The bundled templates: inside the package in a wheel, at the repo root in a checkout."""
    packaged = Path(digestd.__file__).parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(digestd.__file__).parent.parent / "templates"


def make_environments(extra_dir: Path | None = None) -> Environments:
    """Both environments, looking in `extra_dir` first so an admin can override any template."""
    dirs = [extra_dir] if extra_dir is not None else []
    loader = jinja2.ChoiceLoader(
        [jinja2.FileSystemLoader(str(d)) for d in [*dirs, templates_dir()]]
    )
    # autoescape=True, not select_autoescape: the latter looks at the last suffix, `.j2`.
    return Environments(html=_environment(loader, True), text=_environment(loader, False))


def _environment(loader: jinja2.BaseLoader, autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=loader,
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["indent_wrap"] = wrap  # for the text part: `{{ line | indent_wrap }}`
    return env


def check_templates(envs: Environments) -> None:
    """Compile the templates now so a broken override fails `digestd check`, not the first send.

    :raises ConfigError: with the file and line of the first syntax error in each template.
    """
    problems = []
    for env, name in ((envs.html, HTML_TEMPLATE), (envs.text, TEXT_TEMPLATE)):
        try:
            env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            where = exc.filename or name
            problems.append(ConfigProblem(where, exc.lineno or 1, 1, "template", exc.message or ""))
        except jinja2.TemplateNotFound as exc:
            problems.append(ConfigProblem(name, 1, 1, "template", f"not found: {exc.name}"))
    if problems:
        raise ConfigError(problems)


def render_digest(
    digest: Digest, envs: Environments, ctx: RenderContext, *, budget: int | None = HTML_BUDGET
) -> Rendered:
    """Both parts; the HTML kept under `budget` bytes (None: no limit, e.g. for the web copy).

    Over budget, abstracts are shortened first, then the last papers are listed by title only,
    then the last titles are left out; the mail says what it left out, in both parts.
    """
    trials: dict[Layout, tuple[dict[str, object], str]] = {}  # the chosen one is not redone
    layout = fit(digest, envs, ctx, budget, trials) if budget is not None else Layout()
    values, html = trials.get(layout) or _trial(digest, envs, ctx, layout)
    text = envs.text.get_template(TEXT_TEMPLATE).render(values)
    return Rendered(subject=subject(digest), text=text, html=html)


def _trial(
    digest: Digest, envs: Environments, ctx: RenderContext, layout: Layout
) -> tuple[dict[str, object], str]:
    values = _values(digest, ctx, layout)
    return values, _inline(envs.html.get_template(HTML_TEMPLATE).render(values))


def fit(
    digest: Digest,
    envs: Environments,
    ctx: RenderContext,
    budget: int,
    trials: dict[Layout, tuple[dict[str, object], str]] | None = None,
) -> Layout:
    """The richest layout whose HTML fits in `budget` bytes; trial renders go to `trials`."""
    cache = trials if trials is not None else {}

    def size(layout: Layout) -> int:
        if layout not in cache:
            cache[layout] = _trial(digest, envs, ctx, layout)
        return len(cache[layout][1].encode("utf-8"))

    return fit_sizes(
        size, len(digest.matches), budget, cap=ctx.abstract_chars, beyond=len(digest.rest)
    )


def fit_sizes(
    size: Callable[[Layout], int],
    n: int,
    budget: int,
    *,
    cap: int | None = None,
    beyond: int = 0,
) -> Layout:
    """`fit` over any measure of a layout's HTML bytes (`personal` measures cached templates).

    `cap`: the subscriber's `abstract_chars`; shorter steps only are tried (longer ones are the
    same mail). `beyond`: titles over `max_papers`, the first thing to give way (the web copy
    holds them all).
    """
    if size(Layout()) <= budget:
        return Layout()
    if beyond:
        some = _largest(lambda k: size(Layout(beyond=k)) <= budget, beyond)
        if some is not None:
            return Layout(beyond=some)
    none = 0 if beyond else None  # the same layouts as without any when there are none
    steps = (chars for chars in ABSTRACT_STEPS if cap is None or chars < cap)
    for layout in (Layout(abstract_chars=chars, beyond=none) for chars in steps):
        if size(layout) <= budget:
            return layout
    zero = Layout(abstract_chars=0, beyond=none)
    full = _largest(lambda k: size(replace(zero, full=k)) <= budget, n)
    if full is not None:
        return replace(zero, full=full)
    # Not even every title fits: the top papers stay whole, then as many titles as fit.
    whole = min(n, KEEP_WHOLE)
    top = _largest(lambda k: size(replace(zero, full=k, listed=0)) <= budget, whole) or 0
    listed = _largest(lambda k: size(replace(zero, full=top, listed=k)) <= budget, n)
    return replace(zero, full=top, listed=listed or 0)


def _largest(fits: Callable[[int], bool], n: int) -> int | None:
    """The largest k in [0, n] with fits(k), assuming fits is monotone; None when not even 0."""
    if not fits(0):
        return None
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _values(digest: Digest, ctx: RenderContext, layout: Layout) -> dict[str, object]:
    matches = digest.matches
    n_full = len(matches) if layout.full is None else min(layout.full, len(matches))
    rest = matches[n_full:]
    n_listed = len(rest) if layout.listed is None else min(layout.listed, len(rest))
    chars = _abstract_chars(layout, ctx)
    papers = [_cached_view(i, m, chars) for i, m in enumerate(matches[:n_full], start=1)]
    listed = [listed_view(i, m) for i, m in enumerate(rest[:n_listed], start=n_full + 1)]
    beyond = digest.rest if layout.beyond is None else digest.rest[: layout.beyond]
    top = papers[0].title if papers else (listed[0].title if listed else "")
    return {
        "kind": digest.kind,
        "ctx": ctx,
        "papers": papers,
        "listed": listed,
        "left_out": len(rest) - n_listed,
        # Shortened to fit, beyond what the reader chose: the mail says so.
        "shortened": chars < _abstract_chars(Layout(), ctx)
        and any(len(m.paper.abstract) > chars for m in matches[:n_full]),
        "more": digest.more,
        "beyond": [listed_view(i, m) for i, m in enumerate(beyond, start=len(matches) + 1)],
        "beyond_left": digest.more - len(beyond),
        "total": len(matches) + digest.more,
        "max_papers": ctx.max_papers,
        "every_paper": _every_paper(matches),
        "subscriber_name": clean_header(digest.subscriber.name or "", limit=100),
        "preheader": top or f"No new papers from {ctx.site_name}",
        "unsubscribe_url": safe_link(ctx.unsubscribe_url),
        "web_url": safe_url(ctx.web_url),
        "web_copy": ctx.web_copy,
    }


def _abstract_chars(layout: Layout, ctx: RenderContext) -> int:
    """The abstract length shown: the layout's, within the subscriber's `abstract_chars`."""
    cap = ctx.abstract_chars
    return layout.abstract_chars if cap is None else min(layout.abstract_chars, cap)


def _every_paper(matches: Sequence[Match]) -> bool:
    """A subscriber without rules: every paper came for that one reason (`match.EVERY_PAPER`)."""
    return bool(matches) and all(
        m.reasons and all(r.field == "every" for r in m.reasons) for m in matches
    )


# Thousands of subscribers get the same papers in one run: a paper's view (escaping, highlighting,
# wrapping) and a whole identical HTML body are computed once. Bounded, so memory does not grow
# with the number of subscribers.
@functools.lru_cache(maxsize=64)
def _inline(html: str) -> str:
    return str(_INLINER.inline(html))


def _cached_view(number: int, m: Match, abstract_chars: int) -> PaperView:
    highlights = tuple(sorted(m.highlights.items()))
    return _view(number, m.paper, highlights, m.reasons, abstract_chars)


@functools.lru_cache(maxsize=4096)
def _view(
    number: int,
    paper: Paper,
    highlights: tuple[tuple[str, tuple[tuple[int, int], ...]], ...],
    reasons: tuple[Reason, ...],
    abstract_chars: int,
) -> PaperView:
    match = Match(paper=paper, reasons=reasons, highlights=dict(highlights))
    return paper_view(number, match, abstract_chars=abstract_chars)


def subject(digest: Digest) -> str:
    """A one-line, bounded subject; untrusted titles pass `clean_header` first."""
    total = len(digest.matches) + digest.more
    top = clean_header(digest.matches[0].paper.title, limit=SUBJECT_TITLE_CHARS) if total else ""
    if digest.kind == "alert":
        extra = f" (+{total - 1} more)" if total > 1 else ""
        line = f"Alert: {top}{extra}" if top else "Alert: no papers"
    elif not top:
        line = "Paper digest: no new papers"
    else:
        noun = "paper" if total == 1 else "papers"
        line = f"Paper digest: {total} new {noun} — {top}"
    return clean_header(line, limit=200)


def paper_view(number: int, m: Match, *, abstract_chars: int = HTML_ABSTRACT_CHARS) -> PaperView:
    p = m.paper
    title = clean_header(p.title, limit=TITLE_CHARS)
    abstract_html = (
        highlight(p.abstract, m.highlights.get("abstract", ()), abstract_chars)
        if abstract_chars
        else Markup("")
    )
    text_chars = min(TEXT_ABSTRACT_CHARS, abstract_chars)
    abstract_text = wrap(shorten(collapse(_CONTROL.sub(" ", p.abstract)), text_chars))
    return PaperView(
        number=number,
        title=title,
        title_html=highlight(p.title, m.highlights.get("title", ()), TITLE_CHARS),
        authors=authors_line(p.authors),
        url=p.url,
        pdf_url=p.pdf_url,
        links=links(p.github_repo, p.project_page),
        upvotes=p.upvotes,
        comments=p.comments,
        organization=clean_header(p.organization, limit=100) if p.organization else None,
        tldr=clean_header(p.ai_summary, limit=500) if p.ai_summary else None,
        abstract_html=abstract_html,
        abstract_text=abstract_text if text_chars else "",
        why=why(m.reasons),
        abstract_cut=0 < abstract_chars < len(p.abstract),
    )


@dataclass(frozen=True, slots=True)
class ListedView:
    """A paper that only fits as a title with its link."""

    number: int
    title: str
    url: str
    upvotes: int


def listed_view(number: int, m: Match) -> ListedView:
    p = m.paper
    return ListedView(number, clean_header(p.title, limit=LISTED_TITLE_CHARS), p.url, p.upvotes)


def highlight(text: str, spans: Iterable[tuple[int, int]], limit: int) -> Markup:
    """`text` escaped piece by piece, each span wrapped in <mark>; cut at a word before `limit`."""
    clean = _CONTROL.sub(" ", text)
    cut = _cut_point(clean, limit)
    out: list[str] = []
    pos = 0
    for start, end in _merge(spans, cut):
        out += [escape(clean[pos:start]), Markup("<mark>"), escape(clean[start:end])]
        out.append(Markup("</mark>"))
        pos = end
    out.append(escape(clean[pos:cut]))
    if cut < len(clean):
        out.append(Markup("…"))
    return Markup("").join(out)


def _cut_point(text: str, limit: int) -> int:
    if len(text) <= limit:
        return len(text)
    space = text.rfind(" ", 0, limit)
    return space if space > limit // 2 else limit


def _merge(spans: Iterable[tuple[int, int]], cut: int) -> list[tuple[int, int]]:
    """Spans sorted, clipped to [0, cut) and merged where they overlap or touch."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted((max(0, s), min(e, cut)) for s, e in spans):
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def authors_line(authors: Sequence[str]) -> str:
    names = [clean_header(a, limit=100) for a in authors]
    if len(names) > MAX_AUTHORS:
        return ", ".join(names[:MAX_AUTHORS]) + " et al."
    return ", ".join(names)


def safe_url(url: str | None) -> str | None:
    """`url` when it is an absolute http(s) URL without spaces or controls; None otherwise."""
    if not url or _CONTROL.search(url) or " " in url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def safe_link(url: str | None) -> str | None:
    """`safe_url`, or a plain `mailto:` link (the unsubscribe fallback without a web listener)."""
    if url and url.startswith("mailto:") and not _CONTROL.search(url) and " " not in url:
        return url if re.fullmatch(r"mailto:[^\s<>\"']+", url) else None
    return safe_url(url)


def links(github: str | None, project: str | None) -> tuple[Link, ...]:
    found = [Link("Code", u) for u in [safe_url(github)] if u]
    found += [Link("Project page", u) for u in [safe_url(project)] if u]
    return tuple(found)


def why(reasons: Sequence[Reason]) -> str:
    """'“kv cache” in title; author “Jane Doe”; ≥ 20 upvotes', each reason once, in order.

    Always words: a reader does not know their rules by number."""
    parts: list[str] = []
    for r in reasons:
        part = _reason(r)
        if part not in parts:
            parts.append(part)
    return "; ".join(parts)


_NAMED = {
    "authors": "author",
    "orgs": "organisation",
    "categories": "category",
    "sources": "listed by",
}


def _reason(r: Reason) -> str:
    term = clean_header(r.term, limit=80) if r.term else None
    if r.field == "every":
        return "new today, most upvoted first"
    if r.field in ("upvotes", "comments") and term:
        return f"{term} {r.field}"
    if r.field in _NAMED:
        label = _NAMED[r.field]
        return f"{label} “{term}”" if term else label
    if term and r.field:
        return f"“{term}” in {r.field}"
    if term:
        return f"“{term}”"
    # A rule that names nothing it looks for (only `none:` terms): it let the paper through.
    return f"nothing your rule {r.rule + 1} excludes"


def shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: _cut_point(text, limit)].rstrip(" ,;:") + "…"


@functools.lru_cache(maxsize=4096)  # the same paper's lines are wrapped for every subscriber
def wrap(text: str, indent: str = "   ") -> str:
    return textwrap.fill(
        text,
        width=TEXT_WIDTH,
        initial_indent=indent,
        subsequent_indent=indent,
        break_on_hyphens=False,
    )
