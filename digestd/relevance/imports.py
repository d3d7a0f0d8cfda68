"""`like:` lists: arXiv ids from BibTeX, a Zotero CSV export or a plain list, with positioned errors.

Pure: text in, ids and `ConfigProblem`s (file, line, column) out; reading the file is likes.py's.
An entry that names no arXiv paper (a journal article in a BibTeX library) is skipped and counted,
not an error; text that does not parse is an error at its line, and nothing of that file is used.
"""

from __future__ import annotations

import _csv
import csv
import io
import re
from dataclasses import dataclass
from typing import Literal

from digestd.core.errors import ConfigProblem
from digestd.core.model import is_arxiv_id

__all__ = ["Imported", "arxiv_id_of", "detect_format", "parse_likes"]

Format = Literal["bibtex", "zotero", "plain"]

# arXiv ids as people paste them: 'arXiv:2401.00001v2', an abs/pdf URL, the DataCite DOI.
_PREFIXES = re.compile(
    r"^(?:arxiv:|(?:https?://)?(?:www\.|export\.)?arxiv\.org/(?:abs|pdf)/|"
    r"(?:https?://(?:dx\.)?doi\.org/)?10\.48550/arxiv\.)",
    re.IGNORECASE,
)
_VERSION = re.compile(r"v\d+$")
_IN_TEXT = re.compile(
    r"(?:arxiv\.org/(?:abs|pdf)/|10\.48550/arxiv\.|arxiv:\s*)"
    r"(\d{4}\.\d{4,5}|[a-z]+(?:-[a-z]+)?(?:\.[A-Z]{2})?/\d{7})",
    re.IGNORECASE,
)


def arxiv_id_of(text: str) -> str | None:
    """'arXiv:2401.00001v2', 'https://arxiv.org/abs/2401.00001', '10.48550/arXiv.2401.00001' →
    '2401.00001'; None when `text` is not one arXiv id."""
    value = _PREFIXES.sub("", text.strip()).removesuffix(".pdf")
    value = _VERSION.sub("", value)
    return value if is_arxiv_id(value) else None


@dataclass(frozen=True, slots=True)
class Imported:
    ids: tuple[str, ...]  # in file order, each once
    problems: tuple[ConfigProblem, ...] = ()
    skipped: int = 0  # entries naming no arXiv paper


def detect_format(name: str, text: str) -> Format:
    lower = name.lower()
    if lower.endswith((".bib", ".bibtex")) or text.lstrip().startswith("@"):
        return "bibtex"
    if lower.endswith(".csv"):
        return "zotero"
    return "plain"


def parse_likes(text: str, *, file: str, fmt: Format | None = None) -> Imported:
    """The arXiv ids `text` (a like file's content) names; problems carry `file` and line numbers."""
    kind = fmt or detect_format(file, text)
    if kind == "bibtex":
        return _bibtex(text, file)
    if kind == "zotero":
        return _zotero(text, file)
    return _plain(text, file)


def _problem(file: str, line: int, message: str, column: int = 1) -> ConfigProblem:
    return ConfigProblem(file, line, column, "like", message)


def _done(ids: list[str], problems: list[ConfigProblem], skipped: int) -> Imported:
    if problems:  # a broken file is refused whole: half a library would teach the wrong things
        return Imported((), tuple(problems), skipped)
    return Imported(tuple(dict.fromkeys(ids)), (), skipped)


# -- plain: one id a line ----------------------------------------------------------------


def _plain(text: str, file: str) -> Imported:
    ids: list[str] = []
    problems: list[ConfigProblem] = []
    for number, line in enumerate(text.splitlines(), 1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        found = arxiv_id_of(value)
        if found is None:
            shown = value if len(value) <= 60 else value[:57] + "..."
            problems.append(
                _problem(file, number, f"'{shown}' is not an arXiv id (like 2401.00001)")
            )
        else:
            ids.append(found)
    return _done(ids, problems, 0)


# -- Zotero CSV export -------------------------------------------------------------------

# Columns of Zotero's CSV export that may carry an arXiv id, most specific first.
_ZOTERO_COLUMNS = ("Archive Location", "DOI", "Url", "Extra", "Report Number")


def _zotero(text: str, file: str) -> Imported:
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    try:
        header = next(reader, None)
        if header is None or "Title" not in header:
            return _done([], [_problem(file, 1, "not a Zotero CSV export: no 'Title' column")], 0)
        columns = [header.index(c) for c in _ZOTERO_COLUMNS if c in header]
        if not columns:
            message = "no column that can hold an arXiv id (Url, DOI, Extra, Archive Location)"
            return _done([], [_problem(file, 1, message)], 0)
        return _zotero_rows(reader, header, columns, file)
    except csv.Error as exc:
        return _done([], [_problem(file, reader.line_num, f"CSV error: {exc}")], 0)


def _zotero_rows(reader: _csv.Reader, header: list[str], columns: list[int], file: str) -> Imported:
    ids: list[str] = []
    problems: list[ConfigProblem] = []
    skipped = 0
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            message = f"{len(row)} fields where the header has {len(header)}"
            problems.append(_problem(file, reader.line_num, message))
            continue
        found = next((f for i in columns if (f := _id_in(row[i])) is not None), None)
        if found is None:
            skipped += 1
        else:
            ids.append(found)
    return _done(ids, problems, skipped)


def _id_in(value: str) -> str | None:
    """An arXiv id anywhere in a field ('arXiv:2401.00001 [cs]', a URL, a DOI), or the field itself."""
    if (m := _IN_TEXT.search(value)) is not None:
        return arxiv_id_of(m.group(1))
    return None


# -- BibTeX --------------------------------------------------------------------------------

_ENTRY = re.compile(r"@\s*([A-Za-z]+)\s*([{(])")
_FIELD = re.compile(r"\s*([A-Za-z][\w:.+-]*)\s*=\s*")


@dataclass(frozen=True, slots=True)
class _Entry:
    kind: str
    line: int
    fields: dict[str, str]


class _BibError(ValueError):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def _bibtex(text: str, file: str) -> Imported:
    ids: list[str] = []
    skipped = 0
    try:
        entries = _entries(text)
    except _BibError as exc:
        line = text.count("\n", 0, exc.offset) + 1
        column = exc.offset - (text.rfind("\n", 0, exc.offset) + 1) + 1
        return _done([], [_problem(file, line, str(exc), column)], 0)
    for entry in entries:
        found = _bib_id(entry.fields)
        if found is None:
            skipped += 1
        else:
            ids.append(found)
    return _done(ids, [], skipped)


def _bib_id(fields: dict[str, str]) -> str | None:
    eprint = fields.get("eprint")
    archive = fields.get("archiveprefix", fields.get("eprinttype", "arxiv")).lower()
    if eprint and archive == "arxiv" and (found := arxiv_id_of(eprint)) is not None:
        return found
    for key in ("doi", "url", "journal", "note", "howpublished"):
        if key in fields and (found := _id_in(fields[key])) is not None:
            return found
    doi = fields.get("doi", "")
    return arxiv_id_of(doi) if doi.lower().startswith("10.48550/") else None


def _entries(text: str) -> list[_Entry]:
    out: list[_Entry] = []
    pos = 0
    while (m := _ENTRY.search(text, pos)) is not None:
        kind = m.group(1).lower()
        close = "}" if m.group(2) == "{" else ")"
        if kind in ("comment", "preamble", "string"):
            pos = _skip_braced(text, m.end() - 1, m.start())
            continue
        fields, pos = _entry_body(text, m.end(), close, m.start())
        out.append(_Entry(kind, text.count("\n", 0, m.start()) + 1, fields))
    return out


def _entry_body(text: str, pos: int, close: str, start: int) -> tuple[dict[str, str], int]:
    end_key = _find_any(text, pos, ",", close)
    if end_key < 0:
        raise _BibError("entry not closed (a '}' is missing)", start)
    pos = end_key + 1 if text[end_key] == "," else end_key
    fields: dict[str, str] = {}
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise _BibError("entry not closed (a '}' is missing)", start)
        if text[pos] == close:
            return fields, pos + 1
        m = _FIELD.match(text, pos)
        if m is None:
            raise _BibError("expected 'name = value' in the entry", pos)
        value, pos = _value(text, m.end(), start)
        fields[m.group(1).lower()] = " ".join(value.split())


def _value(text: str, pos: int, start: int) -> tuple[str, int]:
    """One field value: {braced}, "quoted", a number or a macro name, joined by #."""
    parts: list[str] = []
    while True:
        if pos >= len(text):
            raise _BibError("entry not closed (a '}' is missing)", start)
        c = text[pos]
        if c == "{":
            end = _skip_braced(text, pos, pos)
            parts.append(text[pos + 1 : end - 1])
        elif c == '"':
            end = _skip_quoted(text, pos)
            parts.append(text[pos + 1 : end - 1])
        elif m := re.compile(r"[\w.:-]+").match(text, pos):
            end = m.end()
            parts.append(m.group())
        else:
            raise _BibError('expected a value ({...}, "..." or a number)', pos)
        pos = end
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos < len(text) and text[pos] == "#":
            pos += 1
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            continue
        return "".join(parts), pos


def _skip_braced(text: str, pos: int, start: int) -> int:
    """The offset after the brace (or parenthesis) group opening at `pos`."""
    opener = text[pos]
    closer = "}" if opener == "{" else ")"
    depth = 0
    for i in range(pos, len(text)):
        if text[i] == opener:
            depth += 1
        elif text[i] == closer:
            depth -= 1
            if depth == 0:
                return i + 1
    raise _BibError(f"unbalanced '{opener}': no matching '{closer}'", start)


def _skip_quoted(text: str, pos: int) -> int:
    depth = 0
    for i in range(pos + 1, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == '"' and depth == 0:
            return i + 1
    raise _BibError('unterminated "quoted" value', pos)


def _find_any(text: str, pos: int, *chars: str) -> int:
    found = [i for c in chars if (i := text.find(c, pos)) >= 0]
    return min(found) if found else -1
