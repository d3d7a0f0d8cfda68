"""The short note a `send_empty: true` subscriber gets when nothing matched: which sources were quiet.

Sources have rhythms (arXiv announces Sunday to Thursday evenings US Eastern, Hugging Face skips
weekends), so "nothing matched" is far more useful with "arXiv had nothing new" next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import escape

from digestd.core.model import Rendered, Subscriber
from digestd.core.periods import local_time
from digestd.core.text import clean_header

__all__ = ["SourceActivity", "empty_note"]


@dataclass(frozen=True, slots=True)
class SourceActivity:
    """What one source did since the subscriber's previous digest."""

    name: str
    new: int  # papers no source had listed before
    error: str | None = None  # its latest poll failed with this
    last_new_at: datetime | None = None


def empty_note(
    sub: Subscriber, activity: Sequence[SourceActivity], *, since: datetime, site_name: str
) -> Rendered:
    """Subject, text and HTML of the note; `since` is when the period it covers began."""
    quiet = [a.name for a in activity if a.new == 0]
    lines = [_line(a, sub.timezone) for a in activity]
    when = local_time(since, sub.timezone)  # every time shown is the reader's
    hello = f"Hello {clean_header(sub.name, limit=100)}, n" if sub.name else "N"
    intro = f"{hello}o new paper matched your rules since {when}."
    quiet_line = (
        f"Sources with nothing new: {', '.join(quiet)}."
        if quiet
        else "Every source had new papers."
    )
    text = "\n".join([intro, "", quiet_line, "", *(f"  - {line}" for line in lines), ""])
    items = "".join(f"<li>{escape(line)}</li>" for line in lines)
    html = (
        f"<!doctype html><html><body><p>{escape(intro)}</p><p>{escape(quiet_line)}</p>"
        f"<ul>{items}</ul></body></html>"
    )
    subject = clean_header(f"{site_name}: nothing new matched your rules", limit=200)
    return Rendered(subject=subject, text=text, html=html)


def _line(a: SourceActivity, timezone: str) -> str:
    noun = "paper" if a.new == 1 else "papers"
    parts = [f"{a.name}: {a.new} new {noun}"]
    if a.last_new_at is not None and a.new == 0:
        parts.append(f"last new paper {local_time(a.last_new_at, timezone)}")
    if a.error:
        parts.append(f"failing: {clean_header(a.error, limit=160)}")
    return "; ".join(parts)
