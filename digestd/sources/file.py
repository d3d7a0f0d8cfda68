"""`FileSource`: papers from a JSON file in the Daily Papers schema (the bundled offline sample)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

from digestd.core.errors import SourceError
from digestd.core.model import ParseResult
from digestd.sources.hf_json import parse_hf_daily

__all__ = ["FileSource"]


class FileSource:
    """Reads the whole file on every poll; `now` is ignored, the file is the listing."""

    def __init__(self, path: Path, *, name: str = "file") -> None:
        self.path = Path(path)
        self.name = name

    async def fetch(self, *, now: datetime) -> ParseResult:
        try:
            # A blocking read must not stall the event loop that also drives SMTP.
            raw = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise SourceError(f"cannot read {self.path}: {reason}", transient=False) from None
        try:
            return parse_hf_daily(raw)
        except SourceError as exc:
            raise SourceError(f"{self.path}: {exc}", transient=False) from None

    def __repr__(self) -> str:
        return f"FileSource({str(self.path)!r}, name={self.name!r})"
