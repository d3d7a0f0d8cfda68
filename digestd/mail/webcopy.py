"""Web copies stored as one shared body per distinct page plus each subscriber's values.

A run's web copies differ only in the personalised slots (`personal.SLOTS`): the page is rendered
once per shape with placeholder tokens, so storing that page once (content-addressed) and each
copy as its values replaces a compress and a ~10 KB write per subscriber with a small row. The
page served is `fill_page(body, slots, fills)`, which is exactly what `render_personal` returns.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["WebBody", "body_for", "fill_page", "stored_page"]


@dataclass(frozen=True, slots=True)
class WebBody:
    """A page with placeholder tokens: its hash, compressed bytes and JSON slot → token map."""

    hash: str
    html: bytes
    slots: str


@functools.lru_cache(maxsize=64)  # one entry per shape in a run; the template str hashes once
def body_for(template: str, slots: tuple[tuple[str, str], ...]) -> WebBody:
    """The stored form of `template`, whose placeholders are `slots` ((slot, token) pairs)."""
    slot_json = json.dumps(dict(slots), separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(template.encode("utf-8"))
    digest.update(b"\0" + slot_json.encode("utf-8"))
    # Level 6 now: a body is compressed once per shape, not once per subscriber.
    return WebBody(digest.hexdigest(), zlib.compress(template.encode("utf-8"), 6), slot_json)


def fill_page(template: str, slots: Mapping[str, str], fills: Mapping[str, str]) -> str:
    """`template` with each slot's token replaced by the subscriber's value ("" when unset)."""
    for slot, token in slots.items():
        template = template.replace(token, fills.get(slot, ""))
    return template


def stored_page(whole: bytes | None, template: bytes | None, slots: str, fills: str) -> str:
    """The page a stored copy serves: `whole` (a page stored entire, compressed) or the shared
    `template` (compressed) filled with the reader's `fills` (JSON) at its `slots` (JSON)."""
    if whole is not None:
        return zlib.decompress(whole).decode("utf-8")
    assert template is not None  # a copy is stored whole or as a template with fills
    return fill_page(
        zlib.decompress(template).decode("utf-8"), json.loads(slots), json.loads(fills)
    )
