"""The pure core stays pure: no I/O imports, no clock reads. Checked on the source, not by convention."""

import ast
import re
from pathlib import Path

import pytest

# The source tree beside these tests, not the installed copy (CI installs a wheel): the checks are
# about the code in this checkout, and ARCHITECTURE.md sits at its root.
PACKAGE = Path(__file__).resolve().parents[1] / "digestd"
PURE = [
    "mail/parts.py",
    "mail/assemble.py",
    "store/protocols.py",
    "core/model.py",
    "core/errors.py",
    "core/text.py",
    "core/addresses.py",
    "config/positions.py",
    "config/sections.py",
    "rules/subscribers.py",
    "rules/schema.py",
    "rules/fastload.py",
    "rules/readers.py",
    "config/fastyaml.py",
    "rules/reference.py",
    "rules/query.py",
    "rules/patterns.py",
    "rules/matcher.py",
    "rules/membership.py",
    "core/periods.py",
    "mail/render.py",
    "mail/paperview.py",
    "mail/mime.py",
    "mail/webcopy.py",
    "sources/hf_json.py",
    "mail/linktokens.py",
    "mail/pagetokens.py",
    "service/readerform.py",
    "mail/listheaders.py",
    "core/observer.py",
    "sources/xmlfeed.py",
    "sources/arxiv_xml.py",
    "sources/feed_xml.py",
    "core/redact.py",
    "core/merge.py",
    "mail/empty_note.py",
    "mail/shapes.py",
    "core/latex.py",
    "sources/base.py",
    "deliver/transports/base.py",
    "bounces/verp.py",
    "bounces/parse.py",
    "relevance/features.py",
    "relevance/model.py",
    "relevance/persist.py",
    "relevance/explain.py",
    "relevance/imports.py",
]
# The shells: the only modules that may read the clock (they pass `now` down).
CLOCK_READERS = {"service/clock.py"}
BANNED_IMPORTS = {
    "asyncio",
    "sqlite3",
    "socket",
    "smtplib",
    "mailbox",
    "httpx",
    "aiosmtplib",
    "apscheduler",
    "pydantic_settings",
    "subprocess",
    "urllib.request",
}
BANNED_CALLS = {("datetime", "now"), ("datetime", "utcnow"), ("time", "time"), ("date", "today")}


def imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def clock_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if (name, node.func.attr) in BANNED_CALLS:
                found.append(f"{name}.{node.func.attr}() at line {node.lineno}")
    return found


@pytest.mark.parametrize("module", PURE)
def test_pure_module_has_no_io_and_no_clock(module: str) -> None:
    path = PACKAGE / module
    # A listed module that is gone fails: a rename must carry its check along, not lose it.
    assert path.exists(), f"{module} is listed as pure but does not exist"
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = {
        name
        for name in imports(tree)
        if name.split(".")[0] in BANNED_IMPORTS or name in BANNED_IMPORTS
    }
    assert not bad, f"{module} imports {sorted(bad)}"
    assert not clock_calls(tree), f"{module} reads the clock: {clock_calls(tree)}"


def test_only_the_shells_read_the_clock() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).as_posix() in CLOCK_READERS:
            continue
        assert not clock_calls(ast.parse(path.read_text())), path


# An address folded by hand (`email.lower()`, `.casefold()`, `.strip().lower()`) is a second key.
_ADDRESS_FOLD = re.compile(
    r"\b(?:e?mail|address|addr)\w*\)?(?:\.strip\(\))?\.(?:lower|casefold)\(\)"
)


def test_i14_only_core_addresses_folds_an_address() -> None:
    """Every place an address becomes a key calls `address_key`, so all of them agree."""
    found = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "core" / "addresses.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _ADDRESS_FOLD.search(line)
    ]
    assert found == []


# ARCHITECTURE.md's module table: one row per module under digestd/, `path` in the first cell
# (relative to digestd/, package __init__.py files left out), the kind in the last.
ARCHITECTURE = PACKAGE.parent / "ARCHITECTURE.md"
_ROW = re.compile(r"^\|\s*`([\w/]+\.py)`\s*\|.*\|\s*(\w+)[^|]*\|\s*$")


def table_rows() -> dict[str, str]:
    """Module path → kind, from every table row whose first cell is a `….py` path."""
    lines = ARCHITECTURE.read_text(encoding="utf-8").splitlines()
    return {m[1]: m[2] for line in lines if (m := _ROW.match(line))}


def modules() -> set[str]:
    return {
        p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"
    }


def test_i14_architecture_table_names_every_module_and_only_those() -> None:
    rows = table_rows()
    assert sorted(modules() - rows.keys()) == [], "modules missing from ARCHITECTURE.md's table"
    assert sorted(rows.keys() - modules()) == [], "ARCHITECTURE.md names modules that do not exist"


def test_i14_architecture_table_marks_pure_exactly_the_checked_modules() -> None:
    """A row says `pure` exactly when the module is in PURE, so the doc claims only what is checked."""
    pure_rows = {path for path, kind in table_rows().items() if kind == "pure"}
    assert sorted(pure_rows ^ set(PURE)) == []
