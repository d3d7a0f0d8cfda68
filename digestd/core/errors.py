"""The exception tree: every error digestd raises on purpose carries data and a hint."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "DigestdError",
    "SourceError",
]


class DigestdError(Exception):
    """Root of every error digestd raises on purpose; the CLI prints these without a traceback."""

    hint: str = ""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One error in an admin's file, in the form `FILE:LINE:COLUMN: field: message` (1-based)."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        # Line 0: a problem with no place in a file (an environment variable, say).
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ConfigError(DigestdError):
    """Settings or subscribers that do not validate; carries every problem found, not only the first."""

    hint = "fix the files and run `digestd check`"

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SourceError(DigestdError):
    """A poll that failed: nothing from it is stored or marked as seen."""

    hint = "the next poll retries; check the source URL and network"

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        self.transient = transient
        self.status = status
        super().__init__(message)
