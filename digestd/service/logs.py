"""Logging for a service: one event per line on stderr (journald adds the time), key=value or JSON.

The project logs `"event words key=%s key=%d", args`; the JSON form turns that into
`{"ts", "level", "logger", "event", key: value…}`, each value typed from its argument.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, Literal

from digestd.core.redact import redact
from digestd.core.text import strip_controls

__all__ = ["RateLimit", "describe", "divert", "setup_logging"]

_STD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")
_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.S)
# A field whose name says it holds a secret is never written, whatever logs it.
_SECRET = re.compile(r"password|passwd|secret|token|authorization|api_?key|cookie", re.I)
_CORE = ("ts", "level", "logger", "event")


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info and record.levelno >= logging.ERROR:
            # Only the exception's type and text: a full traceback could carry locals such as secrets.
            kind, text = describe(record.exc_info[1])
            line += f" exc_type={kind} exc={text!r}"
        # Every line, whoever wrote it: no credentials of a URL, no terminal escapes from a peer.
        return strip_controls(redact(line).replace("\n", "\\n"))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event, fields = _parse(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS}
        if record.exc_info:
            kind, text = describe(record.exc_info[1])
            extras["exc_type"], extras["exc"] = kind, redact(text)
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact(strip_controls(event)),
        }
        line["ts"] = line["ts"].replace("+00:00", "Z")
        for key, value in {**fields, **extras}.items():
            name = key if key not in _CORE else f"field_{key}"  # never overwrite the frame
            if _SECRET.search(key):
                value = "<redacted>"
            elif isinstance(value, str):  # a URL with credentials, a server's control bytes
                value = redact(strip_controls(value))
            line[name] = value
        return json.dumps(line, default=str)


def _parse(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """The event words and the `key=value` fields of a record, values typed from the arguments."""
    args = record.args if isinstance(record.args, tuple) else None
    if not isinstance(record.msg, str) or args is None:
        return record.getMessage(), {}
    # Without arguments logging leaves a '%' alone: so must the parse.
    fmt = record.msg if args else record.msg.replace("%", "%%")
    try:
        return _parse_format(fmt, list(args))
    except (TypeError, ValueError, IndexError):  # a format that does not fit its arguments
        return record.getMessage(), {}


def _parse_format(fmt: str, args: list[object]) -> tuple[str, dict[str, Any]]:
    words: list[str] = []
    fields: dict[str, Any] = {}
    for token in fmt.split(" "):
        specs = [m.group() for m in _SPEC.finditer(token) if m.group() != "%%"]
        mine, args = args[: len(specs)], args[len(specs) :]
        text = token % tuple(mine) if specs or "%%" in token else token
        field = _FIELD.fullmatch(token)
        if field is None:
            words.append(text)
            continue
        key, spec = field.groups()
        whole = len(mine) == 1 and spec in specs  # `key=%s`: the argument is the whole value
        fields[key] = _typed(mine[0], spec) if whole else text[len(key) + 1 :]
    if args:
        raise TypeError("more arguments than placeholders")
    return " ".join(w for w in words if w), fields


def _typed(value: object, spec: str) -> object:
    """A plain value as itself (JSON true, 3, "text"); anything else as logging would show it."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return spec % (value,)


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


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, unless a live display asked for the lines (`divert`) so they do not tear it."""

    sink: Callable[[str], None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.sink is None:
            super().emit(record)
            return
        try:
            self.sink(self.format(record))
        except Exception:
            self.handleError(record)


def divert(sink: Callable[[str], None]) -> Callable[[], None]:
    """Send every log line to `sink` (e.g. the console drawing progress bars) until undone."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, _Handler)]
    for handler in handlers:
        handler.sink = sink

    def undo() -> None:
        for handler in handlers:
            handler.sink = None

    return undo


def setup_logging(
    level: str = "info", *, fmt: Literal["text", "json"] = "text", stream: IO[str] | None = None
) -> None:
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (apscheduler's "Added job", httpx's request lines) is not the operator's concern.
    for noisy in ("apscheduler", "httpx", "httpcore", "aiosmtplib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Malformed LaTeX in a paper is shown as it is (digestd.core.latex); pylatexenc's warning per parse
    # error would put a submitter's text in the log, once per paper and subscriber batch.
    logging.getLogger("pylatexenc").setLevel(logging.CRITICAL)
    # What hostile HTTP clients can make repeat: asyncio's accept() errors, uvicorn's complaints
    # about bad requests, the listener's own notes on its connection cap.
    for flooded in ("asyncio", "uvicorn.error", "digestd.service.web"):
        logger = logging.getLogger(flooded)
        logger.filters[:] = [f for f in logger.filters if not isinstance(f, RateLimit)]
        logger.addFilter(RateLimit())
