"""Jinja environments and `Digest → Rendered(subject, text, html)`, CSS inlined.

Paper text is untrusted (titles, abstracts, links come from submitters). Everything that reaches the
HTML template is either escaped by autoescape or is `Markup` built from escaped pieces (per paper in
mail/paperview.py); only http(s) links survive. The text part is a reading version of its own, not stripped HTML.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import css_inline
import jinja2

import digestd
from digestd.core.errors import ConfigError, ConfigProblem
from digestd.core.model import Digest, Match, Rendered
from digestd.core.text import clean_header
from digestd.mail.paperview import (
    HTML_ABSTRACT_CHARS,
    cached_paper_view,
    listed_view,
    safe_link,
    safe_url,
    wrap,
)

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
KEEP_WHOLE = 10  # papers kept whole when even the titles of all the others do not fit
SUBJECT_TITLE_CHARS = 120

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
    manage_url: str | None = None  # "Manage your subscription" (not on the web copy)
    web_url: str | None = None
    web_copy: bool = False  # rendering the page the web_url serves, not the mail
    max_papers: int | None = None  # the subscriber's cap, to explain `more`
    abstract_chars: int | None = None  # the subscriber's choice (0: titles only); None: no cap
    # Issue #16: ("more like this", "less like this") links per paper of `Digest.matches`, in
    # order; empty without a public URL, and never on the web copy (its URL may be shared).
    feedback: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Layout:
    """How much of each paper fits: the first `full` papers with abstracts cut at `abstract_chars`,
    the next `listed` by title only, the rest left out (the mail says so); of the papers beyond
    `max_papers` (`Digest.rest`), the first `beyond` titles. None: all of them."""

    abstract_chars: int = HTML_ABSTRACT_CHARS
    full: int | None = None
    listed: int | None = None
    beyond: int | None = None


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
    papers = [cached_paper_view(i, m, chars) for i, m in enumerate(matches[:n_full], start=1)]
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
        "manage_url": safe_link(ctx.manage_url),
        "web_url": safe_url(ctx.web_url),
        "web_copy": ctx.web_copy,
        "feedback": [] if ctx.web_copy else [_safe_pair(f) for f in ctx.feedback[:n_full]],
    }


def _safe_pair(links: tuple[str, str]) -> tuple[str | None, str | None]:
    return safe_link(links[0]), safe_link(links[1])


def _abstract_chars(layout: Layout, ctx: RenderContext) -> int:
    """The abstract length shown: the layout's, within the subscriber's `abstract_chars`."""
    cap = ctx.abstract_chars
    return layout.abstract_chars if cap is None else min(layout.abstract_chars, cap)


def _every_paper(matches: Sequence[Match]) -> bool:
    """A subscriber without rules: every paper came for that one reason (`match.EVERY_PAPER`)."""
    return bool(matches) and all(
        m.reasons and all(r.field == "every" for r in m.reasons) for m in matches
    )


# Thousands of subscribers get the same papers in one run: a whole identical HTML body is inlined
# once (a paper's view is cached in paperview). Bounded, so memory does not grow with subscribers.
@functools.lru_cache(maxsize=64)
def _inline(html: str) -> str:
    return str(_INLINER.inline(html))


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
