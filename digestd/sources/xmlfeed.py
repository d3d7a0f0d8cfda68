"""Pure helpers shared by the XML sources: a strict gate in front of every feed, and arXiv ids.

The gate decides what "malformed" means once for every kind: an empty body, an HTML page served
with 200, bytes that are not in the declared encoding, XML errors (a truncated body is one), entity
declarations (entity-expansion bombs), or a root that is not a feed all raise `SourceError`, so a
poll never stores a half-read feed.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from urllib.parse import urlsplit

from digestd.core.errors import SourceError
from digestd.core.model import ARXIV_ID
from digestd.core.text import collapse

__all__ = [
    "arxiv_id_of_tag",
    "arxiv_id_of_url",
    "check_xml",
    "find_arxiv_id",
    "local",
    "split_version",
    "text_of",
    "utc",
]

_EXCERPT = 80
_XML_DECL = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_HTML_START = re.compile(rb"^\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html)[\s>]", re.I | re.S)
# New style (2401.00001, 0704.0001) and old style (hep-th/9901001, math.GT/0309136), then vN.
_VERSIONED = re.compile(rf"^({ARXIV_ID})(?:v(\d+))?$")
_IN_TEXT = re.compile(
    rf"(?:arxiv\.org/(?:abs|pdf|html)/|oai:arXiv\.org:|arXiv:|huggingface\.co/papers/)"
    rf"({ARXIV_ID})(?:v(\d+))?",
    re.IGNORECASE,
)
# The whole path of a paper's page on arXiv (abs, pdf, html) or on Hugging Face (papers).
_ARXIV_PATH = re.compile(rf"/(?:abs|pdf|html)/({ARXIV_ID})(?:v(\d+))?(?:\.pdf)?/?")
_HF_PATH = re.compile(rf"/papers/({ARXIV_ID})(?:v(\d+))?/?")
_TAG = re.compile(rf"(?i:oai:arXiv\.org:|arXiv:)({ARXIV_ID})(?:v(\d+))?")
_MAX_VERSION = 10_000


def check_xml(raw: bytes, *, roots: tuple[str, ...]) -> ET.Element:
    """The parsed root element, if `raw` is a well-formed XML document whose root is in `roots`.

    :raises SourceError: (not transient) naming what is wrong, with a short excerpt of the body.
    """
    if not raw.strip():
        raise SourceError("empty body", transient=False)
    if _HTML_START.match(raw[:4096]):
        raise SourceError(f"got an HTML page, not a feed: {_excerpt(raw)}", transient=False)
    if b"<!ENTITY" in raw:
        raise SourceError("feed declares XML entities; refused", transient=False)
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise SourceError(_xml_error(raw, exc), transient=False) from None
    except LookupError as exc:  # an encoding Python does not know, declared by the feed
        raise SourceError(f"unknown encoding declared ({exc})", transient=False) from None
    name = local(root.tag)
    if name.lower() == "html":
        raise SourceError(f"got an HTML page, not a feed: {_excerpt(raw)}", transient=False)
    if name not in roots:
        expected = " or ".join(f"<{r}>" for r in roots)
        raise SourceError(f"root element is <{name}>, expected {expected}", transient=False)
    return root


def _xml_error(raw: bytes, exc: ET.ParseError) -> str:
    line, column = exc.position
    declared = _XML_DECL.match(raw[:200])
    encoding = declared.group(1).decode("ascii") if declared else "utf-8"
    try:
        raw.decode(encoding)
    except LookupError:
        return f"unknown encoding {encoding!r} declared"
    except UnicodeDecodeError as bad:
        return f"body is not valid {encoding} at byte {bad.start} (wrong encoding?)"
    reason = str(exc).split(":")[0]
    if reason in ("no element found", "unclosed token"):
        return f"XML ends early at line {line}, column {column} (truncated body?)"
    return f"XML error at line {line}, column {column}: {reason}"


def _excerpt(raw: bytes) -> str:
    return repr(collapse(raw[:_EXCERPT].decode("utf-8", "replace")))


def local(tag: str) -> str:
    """`{namespace}name` → `name`: the arXiv feeds have changed namespaces before."""
    return tag.rpartition("}")[2]


def text_of(element: ET.Element | None) -> str:
    """The element's whole text, whitespace collapsed ('' when absent)."""
    if element is None:
        return ""
    return collapse("".join(element.itertext()).replace("\x00", " "))


def split_version(value: str) -> tuple[str, int | None] | None:
    """'2502.08807v2' → ('2502.08807', 2); '2502.08807' → (…, None); not an arXiv id → None."""
    found = _VERSIONED.match(value.strip())
    if found is None:
        return None
    return found.group(1), _version(found.group(2))


def find_arxiv_id(*texts: str | None) -> tuple[str, int | None] | None:
    """The first arXiv id (and version) named by an arXiv/HF URL, `oai:` GUID or `arXiv:` tag."""
    for text in texts:
        found = _IN_TEXT.search(text or "")
        if found:
            return found.group(1), _version(found.group(2))
    return None


def arxiv_id_of_url(url: str | None) -> tuple[str, int | None] | None:
    """The arXiv id (and version) of a link to a paper's own page on arXiv or Hugging Face.

    Only the host decides: `https://evil.example/x?arxiv.org/abs/2502.60001` names no paper, and
    neither does any path but the page's own (`/abs/ID`, `/pdf/ID`, `/html/ID`, `/papers/ID`).
    """
    try:
        parts = urlsplit((url or "").strip())
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if parts.scheme.lower() not in ("http", "https"):
        return None
    if host == "arxiv.org" or host.endswith(".arxiv.org"):
        found = _ARXIV_PATH.fullmatch(parts.path)
    elif host in ("huggingface.co", "www.huggingface.co"):
        found = _HF_PATH.fullmatch(parts.path)
    else:
        return None
    return (found.group(1), _version(found.group(2))) if found else None


def arxiv_id_of_tag(value: str | None) -> tuple[str, int | None] | None:
    """The arXiv id of a whole identifier such as `oai:arXiv.org:2502.08807v2` or `arXiv:2502.08807`."""
    found = _TAG.fullmatch((value or "").strip())
    return (found.group(1), _version(found.group(2))) if found else None


def _version(digits: str | None) -> int | None:
    return min(int(digits), _MAX_VERSION) if digits else None


def utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
