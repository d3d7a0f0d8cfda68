"""Logging for a service: one event per line on stderr (journald adds the time), key=value or JSON."""

from __future__ import annotations

import json
import logging
import sys
from typing import Literal

__all__ = ["setup_logging"]

_STD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info and record.levelno >= logging.ERROR:
            # Only the exception's type and text: a full traceback could carry locals such as secrets.
            exc = record.exc_info[1]
            line += f" exc_type={type(exc).__name__} exc={str(exc)!r}"
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
            exc = record.exc_info[1]
            event["exc_type"] = type(exc).__name__
            event["exc"] = str(exc)
        return json.dumps(event, default=str)


def setup_logging(level: str = "info", *, fmt: Literal["text", "json"] = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (apscheduler's "Added job", httpx's request lines) is not the operator's concern.
    for noisy in ("apscheduler", "httpx", "httpcore", "aiosmtplib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Malformed LaTeX in a paper is shown as it is (digestd.latex); pylatexenc's warning per parse
    # error would put a submitter's text in the log, once per paper and subscriber batch.
    logging.getLogger("pylatexenc").setLevel(logging.CRITICAL)
