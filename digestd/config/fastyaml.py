"""A fast YAML reading for the common subscribers file, used only where it must equal PyYAML's.

Owned here: deciding whether the Rust parser `yaml_rs` (YAML 1.2) may stand in for the libyaml
event walk of `yamlpos.load_yaml` (YAML 1.1). The two differ only on plain scalars (`no`, `on`,
`010`, `1e3`, `1_000`, `1:20`, `.nAn`, `=`, `<<`) and on what each tolerates (tags, anchors, tabs,
control characters, several documents). A document whose text holds any such construct, anywhere,
even inside quotes, is left to PyYAML: a false alarm costs only time, never a different result.
Callers still validate the values strictly and fall back to the PyYAML path (which positions every
error) at the first doubt.
"""

from __future__ import annotations

from typing import Any

import re2
import yaml_rs

__all__ = ["quick_load"]

# A whole plain scalar that YAML 1.1 reads as a bool and 1.2 as text (true/false/null/~ agree), or
# as a merge or value key: it starts after a structural indicator (or at a line start) and ends at
# one, so words inside a phrase pass.
_WORD = (
    r"(?:^|[\[{,:?-])[ \t]*"
    r"(?:[yY](?:es|ES)?|[nN][oO]?|[oO](?:n|N|ff|FF)|On|Off|=|<<)"
    r"[ \t]*(?:$|[,\]}#:])"
)
# Numbers the two versions read differently, anywhere in the text: leading zeros, 0o/0x/0b,
# underscores, sexagesimal, exponents, and the .inf/.nan spellings.
_NUMBER = r"(?:^|[^\w])[-+]?(?:0[0-9_oOxXbB]|[0-9][0-9_.]*(?:_|:[0-9]|[eE]))|\.[iInN][nNaA][fFnN]"
# Constructs one parser may accept and the other not (or build differently): tags, anchors,
# aliases (not a cron's `* `, `*/5` or `*"`: such an alias needs an anchor, caught), merge keys,
# directives, document markers, tabs, and characters YAML does not print.
_SYNTAX = (
    r"(?:^|[\s\[{,])(?:!|&[^\s,\[\]{}/\"']|\*[^\s,\[\]{}/\"'])|^(?:%|---|\.\.\.)|\t"
    r"|[^\n\r\x{20}-\x{7e}\x{85}\x{a0}-\x{d7ff}\x{e000}-\x{fffd}\x{10000}-\x{10ffff}]"
)
# RE2 scans 40 MB in a tenth of a second; Python's engine needs seconds for this alternation.
_RISKY = re2.compile(f"(?m){_WORD}|{_NUMBER}|{_SYNTAX}")


def quick_load(text: str) -> dict[str, Any] | None:
    """The document as PyYAML's safe reading would build it, or None when that is not certain."""
    if _RISKY.search(text):
        return None
    try:
        value = yaml_rs.loads(text, parse_datetime=False)
    except (yaml_rs.YAMLDecodeError, ValueError, TypeError, OverflowError):
        return None
    return value if type(value) is dict else None
