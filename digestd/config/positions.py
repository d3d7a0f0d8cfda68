"""YAML text → plain values plus where each value sits; pydantic errors → `ConfigProblem`s.

Owned here: parsing admin files (settings, subscribers) so that every complaint can name
`FILE:LINE:COLUMN: field`. Values are built straight from libyaml's events (the fast path, run on
every load); positions are found only when a problem needs one, by composing the node tree then.
"""

from __future__ import annotations

import re
import reprlib
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pydantic
import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from digestd.core.errors import ConfigError, ConfigProblem
from digestd.core.gcpause import gc_paused

__all__ = [
    "Marks",
    "Path",
    "allowed_keys",
    "decode",
    "dotted",
    "load_yaml",
    "problems_from_validation",
]

Path = tuple[str | int, ...]
Position = tuple[int, int]

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CONSTRUCTOR = SafeConstructor()
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_IMPLICIT: dict[str, list[tuple[str, re.Pattern[str]]]] = Resolver.yaml_implicit_resolvers
_NO_KEY, _SKIP, _MERGE = object(), object(), object()  # a mapping frame's key states
# Scalars built by PyYAML's own safe rules (so `0x1f`, `.inf`, `yes` mean what YAML 1.1 says).
_TYPED = {
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
}
# Dates and times stay text: pydantic parses them where a field wants one.
_AS_TEXT = {_STR, "tag:yaml.org,2002:timestamp"}
# pydantic's text for these names private model classes; say what the admin should write instead.
_SHAPES = {"model_type": "a mapping", "dict_type": "a mapping", "list_type": "a list"}
_QUOTED = re.compile(r"'([^']*)'")
# Admin files nest a handful of levels; a bound keeps every recursive walk of the values (pydantic,
# repr, the composer) far from Python's recursion limit.
MAX_DEPTH = 64
# Aliases share one value, but validation and every later walk see it expanded: "billion laughs"
# (nine aliases of nine aliases...) turns 400 bytes into 10**9 values. Aliases may add at most one
# value per character of the file, or this many, whichever is more.
ALIAS_FLOOR = 100_000


class Marks:
    """Where each value of a loaded document sits; positions are 1-based (line, column)."""

    __slots__ = ("_composed", "_root", "_text")

    def __init__(self, text: str = "") -> None:
        self._text = text
        self._root: Node | None = None
        self._composed = False

    def root(self) -> Node | None:
        """The node tree, composed on first use (only problems need it)."""
        if not self._composed:
            with gc_paused():
                self._root = yaml.compose(self._text, Loader=_Loader) if self._text else None
            self._composed = True
        return self._root

    def position(self, path: Sequence[str | int]) -> Position:
        """Position of the value at `path`, or of its nearest ancestor that exists."""
        node, _ = self._walk(path)
        return _mark(node)

    def key_position(self, path: Sequence[str | int]) -> Position:
        """Position of the mapping key that ends `path` (where an unknown key is written)."""
        node, key = self._walk(path)
        return _mark(key if key is not None else node)

    def _walk(self, path: Sequence[str | int]) -> tuple[Node | None, Node | None]:
        node, key = self.root(), None
        for step in path:
            found = _child(node, step)
            if found is None:
                return node, None
            key, node = found
        return node, key


def _child(node: Node | None, step: str | int) -> tuple[Node | None, Node] | None:
    if isinstance(node, MappingNode):
        for key, value in reversed(node.value):
            if isinstance(key, ScalarNode) and _same_key(_key_value(key), step):
                return key, value
    elif isinstance(node, SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
        return None, node.value[step]
    return None


def _key_value(node: ScalarNode) -> object:
    try:
        return _scalar(node)
    except (ConstructorError, ValueError):
        return None


def _same_key(key: object, step: str | int) -> bool:
    return type(key) is type(step) and key == step


def _mark(node: Node | None) -> Position:
    if node is None:
        return (1, 1)
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def decode(data: bytes, *, file: str) -> str:
    """A file's bytes as UTF-8 text.

    :raises ConfigError: at the line and column of the first byte that is not UTF-8.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8")
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        message = f"byte 0x{data[exc.start]:02x} is not UTF-8; save the file as UTF-8"
        raise ConfigError([ConfigProblem(file, line, column, "", message)]) from None


def load_yaml(text: str, *, file: str) -> tuple[Any, Marks]:
    """Parse one YAML document into dicts, lists and scalars; an empty document is None.

    :raises ConfigError: on a syntax error, a duplicate key, a non-scalar key, an unsupported tag,
        nesting deeper than MAX_DEPTH, or aliases that expand the document beyond its bound.
    """
    builder = _Builder()
    try:
        with gc_paused():
            builder.run(text)
    except _Abort:
        pass  # the problem that stopped the walk is in builder.problems
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_problem(exc, file)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(file, 1, 1, "", str(exc))]) from None
    if builder.problems:
        raise ConfigError([ConfigProblem(file, *at, f, m) for at, f, m in builder.problems])
    return builder.root, Marks(text)


def _syntax_problem(exc: yaml.MarkedYAMLError, file: str) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    message = exc.problem or "invalid YAML"
    if exc.context:
        message = f"{message} ({exc.context})"
    return ConfigProblem(file, line, column, "", message)


class _Abort(Exception):
    """Stops the event walk where going on would cost too much (too deep, an alias bomb)."""


def _count(value: Any, limit: int) -> int:
    """How many values `value` holds once aliases are expanded, counting no further than `limit`+1."""
    count, todo = 0, [value]
    while todo and count <= limit:
        item = todo.pop()
        count += 1
        if item.__class__ is dict:
            todo.extend(item.values())
        elif item.__class__ is list:
            todo.extend(item)
    return count


class _Frame:
    """An open mapping or sequence; `key` is what the next value is stored under."""

    __slots__ = ("anchor", "container", "key", "mark", "merges")

    def __init__(self, container: dict[Any, Any] | list[Any], anchor: str | None, mark: Any):
        self.container = container
        self.anchor = anchor
        self.mark = mark
        self.key: Any = _NO_KEY
        self.merges: list[Any] = []


class _Builder:
    """Events → values in one lean loop; problems are collected so a file reports all at once."""

    def __init__(self) -> None:
        self.root: Any = None
        self.problems: list[tuple[Position, str, str]] = []
        self._stack: list[_Frame] = []
        # Anchors are registered when complete, so an alias into its own anchor is undefined.
        self._anchors: dict[str, Any] = {}
        self._documents = 0
        self._bound = self._budget = ALIAS_FLOOR  # values the aliases may add, and still may
        self._sizes: dict[str, int] = {}  # expanded size of each aliased anchor

    def run(self, text: str) -> None:
        self._bound = self._budget = max(ALIAS_FLOOR, len(text))
        handlers = {
            MappingStartEvent: self._on_mapping,
            SequenceStartEvent: self._on_sequence,
            MappingEndEvent: self._on_end,
            SequenceEndEvent: self._on_end,
            AliasEvent: self._on_alias,
            DocumentStartEvent: self._on_document,
        }
        loader = _Loader(text)
        # Pulling events from the parser directly: `yaml.parse`'s generator costs a third more.
        get_event, on_scalar = loader.get_event, self._on_scalar
        try:
            while (event := get_event()).__class__ is not StreamEndEvent:
                if event.__class__ is ScalarEvent:
                    on_scalar(event)
                elif (handler := handlers.get(event.__class__)) is not None:
                    handler(event)
        finally:
            loader.dispose()

    def _on_document(self, event: Any) -> None:
        self._documents += 1
        if self._documents == 2:
            self._problem(event.start_mark, (), "expected a single document, found another")

    def _on_scalar(self, event: Any) -> None:
        # Quoted scalars without a tag are most of a subscribers file: take them directly.
        value = event.value if event.tag is None and not event.implicit[0] else self._scalar(event)
        if event.anchor:
            self._anchor(event.anchor, value)
        self._add(value, event.start_mark)

    def _on_mapping(self, event: Any) -> None:
        self._check_tag(event, _MAP)
        self._open(_Frame({}, event.anchor, event.start_mark))

    def _on_sequence(self, event: Any) -> None:
        self._check_tag(event, _SEQ)
        self._open(_Frame([], event.anchor, event.start_mark))

    def _open(self, frame: _Frame) -> None:
        if len(self._stack) >= MAX_DEPTH:
            message = f"nested deeper than {MAX_DEPTH} levels"
            self._problem(frame.mark, self._path(), message)
            raise _Abort
        self._stack.append(frame)

    def _on_end(self, event: Any) -> None:
        frame = self._stack.pop()
        value = frame.container
        for merged in frame.merges:
            for key, item in merged.items():
                value.setdefault(key, item)  # type: ignore[union-attr]
        if frame.anchor:
            self._anchor(frame.anchor, value)
        self._add(value, frame.mark)

    def _anchor(self, name: str, value: Any) -> None:
        self._anchors[name] = value
        self._sizes.pop(name, None)  # a name may be anchored again, to something else

    def _on_alias(self, event: Any) -> None:
        if event.anchor not in self._anchors:
            message = f"alias *{event.anchor} is undefined or refers to itself"
            self._problem(event.start_mark, self._path(), message)
        value = self._anchors.get(event.anchor)
        size = self._sizes.get(event.anchor)
        if size is None:
            size = self._sizes[event.anchor] = _count(value, self._budget)
        self._budget -= size
        if self._budget < 0:
            message = (
                f"alias *{event.anchor} expands the document beyond {self._bound:,} values"
                " (aliases of aliases?); write the values out instead"
            )
            self._problem(event.start_mark, self._path(), message)
            raise _Abort
        self._add(value, event.start_mark)

    def _add(self, value: Any, mark: Any) -> None:
        if not self._stack:
            self.root = value
            return
        frame = self._stack[-1]
        container = frame.container
        if container.__class__ is list:
            container.append(value)
        elif frame.key is _NO_KEY:
            frame.key = self._key(frame, value, mark)
        else:
            self._value(frame, value, mark)

    def _key(self, frame: _Frame, key: Any, mark: Any) -> Any:
        if isinstance(key, dict | list):
            self._problem(mark, self._path(), "a mapping key must be a plain value")
            return _SKIP
        if key in frame.container:
            self._problem(mark, (*self._path(), key), "duplicate key")
            return _SKIP
        return key

    def _value(self, frame: _Frame, value: Any, mark: Any) -> None:
        key, frame.key = frame.key, _NO_KEY
        if key is _MERGE:
            merges = value if isinstance(value, list) else [value]
            if all(isinstance(m, dict) for m in merges):
                frame.merges.extend(merges)
            else:
                self._problem(mark, self._path(), "a merge key (<<) needs a mapping")
        elif key is not _SKIP:
            frame.container[key] = value

    def _scalar(self, event: Any) -> Any:
        tag, value = event.tag, event.value
        if tag is None or tag == "!":
            if not event.implicit[0]:
                return value
            tag = _resolve(value)
        if tag in _AS_TEXT:
            return value
        if tag in _TYPED:
            node = ScalarNode(tag, value, event.start_mark, event.end_mark)
            try:
                return _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, node)
            except (ConstructorError, ValueError) as exc:
                self._problem(event.start_mark, self._path(), str(exc))
                return None
        if tag == _MERGE_TAG:
            return _MERGE
        self._problem(event.start_mark, self._path(), f"unsupported tag {tag}")
        return None

    def _check_tag(self, event: Any, default: str) -> None:
        if event.tag not in (None, "!", default):
            self._problem(event.start_mark, self._path(), f"unsupported tag {event.tag}")

    def _path(self) -> Path:
        path: list[str | int] = []
        for frame in self._stack:
            if isinstance(frame.container, list):
                path.append(len(frame.container))
            elif frame.key not in (_NO_KEY, _SKIP, _MERGE):
                path.append(frame.key)
        return tuple(path)

    def _problem(self, mark: Any, path: Path, message: str) -> None:
        self.problems.append(((mark.line + 1, mark.column + 1), dotted(path), message))


def _resolve(value: str) -> str:
    """The tag of a plain scalar, by PyYAML's implicit resolvers, without building a node."""
    for tag, regexp in _IMPLICIT.get(value[:1], ()):
        if regexp.match(value):
            return tag
    return _STR


def _scalar(node: ScalarNode) -> Any:
    """A key node's value, for looking a path up in the composed tree."""
    tag = node.tag
    if tag in _AS_TEXT:
        return node.value
    if tag in _TYPED:
        return _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, node)
    raise ConstructorError(None, None, f"unsupported tag {tag}", node.start_mark)


def dotted(path: Iterable[object]) -> str:
    """('subscribers', 0, 'rules', 1, 'in') → 'subscribers[0].rules[1].in'."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def problems_from_validation(
    error: pydantic.ValidationError,
    marks: Marks,
    *,
    file: str,
    schema: type[pydantic.BaseModel] | None = None,
) -> list[ConfigProblem]:
    """One `ConfigProblem` per pydantic error, at the nearest recorded position, sorted by place.

    Pass the validated model as `schema` so an unknown key's message can list the allowed keys.
    """
    problems = []
    for err in error.errors(include_url=False):
        loc: Path = tuple(err["loc"])
        at = marks.key_position(loc) if err["type"] == "extra_forbidden" else marks.position(loc)
        problems.append(ConfigProblem(file, *at, dotted(loc), _message(err, loc, schema)))
    return sorted(problems, key=lambda p: (p.line, p.column))


def _message(err: Any, loc: Path, schema: type[pydantic.BaseModel] | None) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = sorted(allowed_keys(schema, loc[:-1])) if schema else []
        tail = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"unknown key '{loc[-1]}'{tail}" if loc else "unknown key"
    if kind == "literal_error":
        expected = str(err.get("ctx", {}).get("expected", ""))
        names = _QUOTED.findall(expected) or [expected]
        return f"{_show(err.get('input'))} is not one of {', '.join(names)}"
    if kind == "missing":
        return "required key is missing"
    if kind in _SHAPES:
        return f"expected {_SHAPES[kind]}, got {_show(err.get('input'))}"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def _show(value: object) -> str:
    """A value for a message, cut short: an aliased value may hold thousands of others."""
    shown = f"'{value}'" if isinstance(value, str) else reprlib.repr(value)
    return shown if len(shown) <= 60 else f"{shown[:57]}..."


def allowed_keys(schema: type[pydantic.BaseModel] | None, path: Sequence[str | int]) -> set[str]:
    """The keys the model reached by following `path` from `schema` accepts (empty if none)."""
    current: list[Any] = [schema] if schema else []
    for step in path:
        current = [
            nxt for ann in current for member in _members(ann) for nxt in _step(member, step)
        ]
    return {key for ann in current for m in _members(ann) if _is_model(m) for key in _keys(m)}


def _members(annotation: Any) -> Iterator[Any]:
    """Unwrap Annotated and unions (`X | None`) into the types a value may have."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _members(typing.get_args(annotation)[0])
    elif origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(annotation):
            yield from _members(arg)
    else:
        yield annotation


def _step(annotation: Any, step: str | int) -> Iterator[Any]:
    if _is_model(annotation) and isinstance(step, str):
        for name, info in annotation.model_fields.items():
            if step in (name, info.alias):
                yield info.annotation
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple, set, frozenset, Sequence) and isinstance(step, int) and args:
        yield args[0]
    elif origin is dict and isinstance(step, str) and len(args) == 2:
        yield args[1]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)


def _keys(model: type[pydantic.BaseModel]) -> Iterator[str]:
    for name, info in model.model_fields.items():
        yield info.alias or name
