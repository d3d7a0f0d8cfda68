"""One pipeline per state file: `run` and `run --once` hold an exclusive lock while they run.

Two pipelines on one file would each compose and send (every digest twice, with different
Message-IDs under `--once`). The lock is `flock` on a sidecar `<state>.lock`, not on the database
itself, whose byte-range locks belong to SQLite. The kernel drops it when its holder exits in
any way (a crash, `kill -9`), so there is never a stale lock to clean up; the file stays and
holds the last holder's pid, for the message the next contender prints. Read-only commands
(`status`, `preview`, `check`) and one-row admin changes (`unsubscribe`…) do not take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from digestd.core.errors import DigestdError

__all__ = ["EXIT_LOCKED", "LockUnavailable", "StateLocked", "lock_path", "run_lock"]

# sysexits.h EX_CANTCREAT: the state file cannot be taken for writing (75, EX_TEMPFAIL, already
# means "messages remain queued"). systemd's Restart=on-failure retries it like any failure.
EXIT_LOCKED = 73


class StateLocked(DigestdError):
    """Another `digestd run` holds the state file."""

    hint = "one run per state file: wait for it to finish, or stop it first"


class LockUnavailable(DigestdError):
    """The lock file cannot be created or opened (a read-only directory, say)."""

    hint = "the state file's directory must be writable by the user digestd runs as"


def lock_path(state: Path) -> Path:
    return state.with_name(state.name + ".lock")


@contextlib.contextmanager
def run_lock(state: Path | str) -> Iterator[None]:
    """Hold the state file's run lock for the body; :raises StateLocked: someone else holds it.

    A PostgreSQL state (a URL) takes no file lock: several daemons may share one database, and
    the database's own locks keep them from doing the same work twice.
    """
    if isinstance(state, str) or str(state) == ":memory:":  # nobody else can open it
        yield
        return
    path = lock_path(state)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC: a compose worker (spawned: fork + exec) must not inherit and outlive it.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise LockUnavailable(f"the run lock {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateLocked(
                f"the state file {state} is in use by another digestd run ({_holder(fd)})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """'pid 1234' from the lock file, as its holder wrote it; 'pid unknown' if it has not yet."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f"pid {text}" if text.isdigit() else "pid unknown"
