"""Logging for a service: one event per line on stderr (journald adds the time), key=value or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Literal

__all__ = ["RateLimit", "describe", "setup_logging"]

_STD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info and record.levelno >= logging.ERROR:
            # Only the exception's type and text: a full traceback could carry locals such as secrets.
            kind, text = describe(record.exc_info[1])
            line += f" exc_type={kind} exc={text!r}"
        return line.replace("\n", "\\n")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event.update({k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS})
        if record.exc_info:
            event["exc_type"], event["exc"] = describe(record.exc_info[1])
        return json.dumps(event, default=str)


def describe(exc: BaseException | None) -> tuple[str, str]:
    """An exception's type and text. A task group's error says only "(1 sub-exception)": it is
    described by the exceptions inside it, the real causes."""
    leaves = list(_leaves(exc))
    shown = leaves[:3]
    kind = ",".join(dict.fromkeys(type(e).__name__ for e in shown))
    text = "; ".join(str(e) for e in shown)
    if len(leaves) > len(shown):
        text += f" (and {len(leaves) - len(shown)} more)"
    return kind, text


def _leaves(exc: BaseException | None) -> Iterator[BaseException | None]:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


class RateLimit(logging.Filter):
    """At most `burst` records of one kind (logger and message template) at once, then one per
    `every` seconds; the next one let through says how many were dropped. Without it, a listener out
    of file descriptors logs each failed accept(): hundreds of megabytes a minute."""

    def __init__(
        self, *, burst: int = 5, every: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst, self.every, self.clock = burst, every, clock
        self._kinds: dict[tuple[str, object], tuple[float, float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = self.clock()
        tokens, last, dropped = self._kinds.get(key, (float(self.burst), now, 0))
        tokens = min(float(self.burst), tokens + (now - last) / self.every)
        if tokens < 1:
            self._kinds[key] = (tokens, now, dropped + 1)
            return False
        self._kinds[key] = (tokens - 1, now, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} similar messages suppressed)"
        return True


def setup_logging(level: str = "info", *, fmt: Literal["text", "json"] = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (apscheduler's "Added job", httpx's request lines) is not the operator's concern.
    for noisy in ("apscheduler", "httpx", "httpcore", "aiosmtplib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # What hostile HTTP clients can make repeat: asyncio's accept() errors, uvicorn's complaints
    # about bad requests, the listener's own notes on its connection cap.
    for flooded in ("asyncio", "uvicorn.error", "digestd.web"):
        logger = logging.getLogger(flooded)
        logger.filters[:] = [f for f in logger.filters if not isinstance(f, RateLimit)]
        logger.addFilter(RateLimit())
