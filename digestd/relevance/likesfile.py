"""Reading one `like:` file (BibTeX, Zotero CSV, one id a line) into arXiv ids, or clear problems.

The file's path is resolved against the subscribers file's folder; a missing, unreadable, huge or
non-UTF-8 file is a problem naming it, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

from digestd.core.errors import ConfigProblem
from digestd.relevance.imports import Imported, parse_likes

__all__ = ["MAX_LIKE_FILE", "read_like_file"]

MAX_LIKE_FILE = 20 << 20  # a library of 50,000 BibTeX entries; more is not a reading list


def read_like_file(name: str, *, base: Path) -> Imported:
    path = (base / Path(name).expanduser()).resolve()
    try:
        size = path.stat().st_size
        if size > MAX_LIKE_FILE:
            return _refused(
                name, f"{size} bytes, more than the {MAX_LIKE_FILE >> 20} MiB a like file may have"
            )
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        return _refused(name, f"no such file ({path})")
    except UnicodeDecodeError as exc:
        return _refused(name, f"not UTF-8 text (byte {exc.start})")
    except OSError as exc:
        return _refused(name, f"cannot read it ({exc.strerror or exc})")
    return parse_likes(text, file=name)


def _refused(name: str, message: str) -> Imported:
    return Imported((), (ConfigProblem(name, 0, 0, "like", message),))
