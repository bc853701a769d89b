"""Is a document from a file something ``kubectl`` could send to the API server at all?

Objects from the API server are JSON that Go produced. A YAML or JSON file can hold much more:
non-string keys, dates, binary, sets, NaN, integers with thousands of digits, lone surrogates,
nesting thousands of levels deep, or an alias "bomb" that expands to billions of nodes. Each of
these either cannot become the JSON ``kubectl`` sends (it refuses them) or would cost us
unbounded time later. One linear, iterative pass rejects them before any parser looks at the
document, so no later stage needs to care.

Limits: nesting ``MAX_DEPTH`` (real objects, managedFields included, stay far below), and
``MAX_JSON_BYTES`` of JSON, the API server's request-body limit (3 MiB): a larger object could
never be created. The size is estimated while walking, so an alias bomb stops at the limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from controller.model.errors import ParseError
from controller.model.meta import child, show

MAX_DEPTH = 100
MAX_JSON_BYTES = 3 * 1024 * 1024
_INT64 = 2**63
_SCALAR_BYTES = 5  # a rough JSON size for a number, boolean or null
_PATH_KEYS = 12  # a deeper field path is cut short in messages


class _Entry(NamedTuple):
    """A value still to visit; its field path is rebuilt from the parents only on error."""

    value: Any
    depth: int
    parent: _Entry | None
    key: Any  # field name or list index in the parent


def _path(entry: _Entry) -> str:
    keys: list[Any] = []
    node: _Entry | None = entry
    while node is not None and node.parent is not None:
        keys.append(node.key)
        node = node.parent
    field = ""
    for key in reversed(keys[-_PATH_KEYS:]):
        field = f"{field}[{key}]" if isinstance(key, int) else child(field, key)
    return field if len(keys) <= _PATH_KEYS else f"{field}..."


def _string_problem(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None


def _scalar_problem(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -_INT64 <= value < _INT64 else f"{show(value)} is out of range"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{show(value)} is not a JSON number"
    if isinstance(value, str):
        return _string_problem(value)
    return f"{show(value)} has no JSON form"


def check_document(raw: Mapping[str, Any], obj: str) -> None:
    """Raise :class:`ParseError` naming ``obj`` and the field if ``raw`` is not plain JSON data
    within the limits above."""
    size = 0
    stack = [_Entry(raw, 0, None, None)]
    while stack:
        entry = stack.pop()
        value, depth = entry.value, entry.depth
        if isinstance(value, Mapping | list) and depth >= MAX_DEPTH:
            raise ParseError(obj, _path(entry), f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, Mapping):
            size += 2
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ParseError(obj, _path(entry), f"field name {show(key)} is not a string")
                problem = _string_problem(key)
                if problem is not None:
                    raise ParseError(obj, _path(entry), f"field name {show(key)} {problem}")
                size += len(key) + 4
                stack.append(_Entry(item, depth + 1, entry, key))
        elif isinstance(value, list):
            size += 2 + len(value)
            stack.extend(_Entry(item, depth + 1, entry, i) for i, item in enumerate(value))
        else:
            problem = _scalar_problem(value)
            if problem is not None:
                raise ParseError(obj, _path(entry), problem)
            size += len(value) + 2 if isinstance(value, str) else _SCALAR_BYTES
        if size > MAX_JSON_BYTES:
            raise ParseError(
                obj,
                "",
                f"larger than {MAX_JSON_BYTES // (1024 * 1024)} MiB as JSON, more than the API "
                "server accepts in one request",
            )
