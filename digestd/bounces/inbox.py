"""Where bounces arrive: the `Inbox` protocol and the Maildir a local MTA delivers to.

Only new mail is read (`new/`); after the store has recorded a message it is finished: a handled
one per `processed` (flagged seen in `cur/`, moved to a folder, or deleted), one left alone moves to
`cur/` unflagged, as a mail reader does with mail it has shown, so the admin still sees it unread.
A crash between recording and finishing reads it again; the store counts it once (its digest).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

__all__ = ["Incoming", "Inbox", "MaildirInbox", "Processed"]

Processed = Literal["flag", "move", "delete"]


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message read: `key` names it in its mailbox, `data` is its bytes (maybe cut short at
    the size cap plus one byte, so the parser knows it was too large)."""

    key: str
    data: bytes


class Inbox(Protocol):
    """A mailbox of bounces; blocking calls (the daemon runs them in a thread)."""

    def fetch(self, limit: int) -> Sequence[Incoming]: ...
    def finish(self, item: Incoming, *, handled: bool) -> None: ...
    def close(self) -> None: ...


class MaildirInbox:
    """A Maildir: `new/` is read, `cur/` and `.<move_to>/` (Maildir++) receive what was read."""

    def __init__(
        self, path: Path, *, processed: Processed = "flag", move_to: str = "Processed",
        max_bytes: int = 2 * 1024 * 1024,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.processed = processed
        self.move_to = move_to
        self.max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"MaildirInbox(path={str(self.path)!r})"

    def fetch(self, limit: int) -> list[Incoming]:
        new = self.path / "new"
        try:
            names = sorted(n for n in os.listdir(new) if not n.startswith("."))[:limit]
        except FileNotFoundError:
            return []  # nothing delivered yet: the MTA creates the Maildir on first delivery
        found: list[Incoming] = []
        for name in names:
            try:
                with open(new / name, "rb") as handle:
                    data = handle.read(self.max_bytes + 1)
            except OSError:
                # Taken by another reader, not a file, or not readable by us: the others are
                # still read; an unreadable one stays in new/ for the admin.
                continue
            found.append(Incoming(name, data))
        return found

    def finish(self, item: Incoming, *, handled: bool) -> None:
        source = self.path / "new" / item.key
        base = item.key.split(":", 1)[0]
        if not handled:
            target = self.path / "cur" / f"{base}:2,"
        elif self.processed == "delete":
            source.unlink(missing_ok=True)
            return
        elif self.processed == "move":
            folder = self.path / f".{self.move_to}"
            for sub in ("tmp", "new", "cur"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            target = folder / "cur" / f"{base}:2,S"
        else:
            target = self.path / "cur" / f"{base}:2,S"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except FileNotFoundError:
            return  # finished already (a second reader, or a crash after the move)

    def close(self) -> None:
        return None
