"""LaTeX in titles and abstracts as readable Unicode text: "M$^3$ViT" → "M³ViT", "$\\alpha$" → "α".

arXiv abstracts are written in LaTeX and Hugging Face copies them as they are. Only what is
LaTeX is converted: math between `$…$` (pandoc's rule: no space just inside the dollars, no digit
right after the closing one, so "$5 and $6" stays), `$$…$$`, `\\(…\\)`, and commands outside math
(`\\times`, `\\textbf{…}`, `\\%`). Everything else is left alone: a bare "%", "&" or "~" in an
abstract is prose, not a comment, an alignment tab or a no-break space. The converter is
pylatexenc's `LatexNodes2Text`; its result is plain text (the templates escape it), never HTML.

The stored text stays raw (faithful to the source); papers are converted where they leave the
store for matching and rendering (`pipeline`), so rules match, and highlights point into, the
text the reader sees.
"""

from __future__ import annotations

import functools
import re
from dataclasses import replace

from pylatexenc.latex2text import LatexNodes2Text

from digestd.core.model import Paper

__all__ = ["readable", "readable_paper"]

_MATH = re.compile(
    r"\$\$(?P<display>[^$]+?)\$\$"  # $$…$$
    r"|(?<![\\$])\$(?P<inline>[^\s$](?:[^$]*?[^\s$\\])?)\$(?![\d$])"  # $…$, pandoc's rule
    r"|\\\((?P<paren>.+?)\\\)"  # \(…\)
)
# A command with its braced arguments, or an escaped special character, outside math.
_COMMAND = re.compile(r"\\[A-Za-z]+\*?(?:\{[^{}$]*\})*|\\[%&_#${}]")
_SCRIPT = re.compile(r"([\^_])(?:\{([^{}]*)\}|(\\[A-Za-z]+|[^\s{}\\]))")
_SUPERSCRIPT = str.maketrans("0123456789+-=()nijkmrtx", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱʲᵏᵐʳᵗˣ")
_SUBSCRIPT = str.maketrans("0123456789+-=()aeijkmnoprstx", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑᵢⱼₖₘₙₒₚᵣₛₜₓ")
_SPACES = re.compile(r"\s+")
# Far more than any abstract holds (arXiv caps them at 1,920 characters): a text past either is
# shown as it is, so a hostile one costs a regex scan, not thousands of parser runs.
_MAX_CHARS = 10_000
_MAX_PIECES = 200


@functools.lru_cache(maxsize=1)
def _converter() -> LatexNodes2Text:
    return LatexNodes2Text(math_mode="text", strict_latex_spaces=False)


def readable_paper(paper: Paper) -> Paper:
    """`paper` with its title and abstract as `readable` text (the same object when unchanged)."""
    title, abstract = readable(paper.title), readable(paper.abstract)
    if title is paper.title and abstract is paper.abstract:
        return paper
    return replace(paper, title=title, abstract=abstract)


@functools.lru_cache(maxsize=8192)  # every subscriber of a run sees the same papers
def readable(text: str) -> str:
    """`text` with its LaTeX as Unicode text; `text` itself when it holds none."""
    if "$" not in text and "\\" not in text:
        return text
    if len(text) > _MAX_CHARS or text.count("$") + text.count("\\") > 2 * _MAX_PIECES:
        return text
    out: list[str] = []
    pos = 0
    for found in _MATH.finditer(text):
        out.append(_commands(text[pos : found.start()]))
        out.append(_math(found.group("display") or found.group("inline") or found.group("paren")))
        pos = found.end()
    out.append(_commands(text[pos:]))
    converted = "".join(out)
    return text if converted == text else converted


def _commands(text: str) -> str:
    return _COMMAND.sub(lambda m: _convert(m.group()), text) if "\\" in text else text


def _math(source: str) -> str:
    # Scripts first (their bodies may hold commands), then each command on its own: the converter
    # eats the space after a command ("4 \\times 4" would read "4 ×4").
    text = _commands(_SCRIPT.sub(_script, source))
    if "\\" in text or "{" in text:
        text = _convert(text)
    return _SPACES.sub(" ", text).strip()


def _script(found: re.Match[str]) -> str:
    """x^{2} → x², x_i → xᵢ when Unicode has every character; else "^(…)" / "_(…)" as text."""
    mark, body = found.group(1), found.group(2) or found.group(3) or ""
    if mark == "^" and body in ("'", "′", "\\prime"):
        return "′"
    if body.startswith("\\"):  # _\theta: the symbol, then mapped if it can be
        body = _convert(body)
        if body.startswith("\\"):  # _\mathrm{…}: a command with arguments, left whole
            return found.group()
    table = _SUPERSCRIPT if mark == "^" else _SUBSCRIPT
    if body and all(ord(c) in table for c in body):
        return body.translate(table)
    return f"{mark}{body}" if len(body) == 1 else f"{mark}({_convert(body)})"


def _convert(source: str) -> str:
    """pylatexenc's reading of one piece; the piece itself when it reads as nothing."""
    try:
        text = str(_converter().latex_to_text(source))
    except Exception:  # a converter bug must not stop a digest: show the source
        return source
    text = text.replace("\u00a0", " ")
    return text if text.strip() else source
