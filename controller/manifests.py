"""Read Kubernetes objects from files and directories (the ``-f`` of ``kubectl``).

Accepts YAML or JSON, multi-document YAML, and ``kind: List`` / ``*List`` wrappers. Objects are
parsed strictly (``parse_object(strict=True)``): what ``kubectl apply`` would refuse is refused
here, unknown fields included. Every problem is reported in one line with the file (and
document) it came from, never as a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from controller.model import ApiObject, Namespace, Node, ParseError, parse_object
from controller.model.meta import describe

SUFFIXES = (".yaml", ".yml", ".json")
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class ManifestError(ValueError):
    pass


class _Loader(yaml.SafeLoader):
    """YAML as ``kubectl`` reads it: an unquoted ``2024-01-01T00:00:00Z`` is the string the API
    expects for a timestamp, not a Python datetime."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _files(paths: Sequence[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            if not found:
                raise ManifestError(f"{path}: no .yaml, .yml or .json files in this directory")
            yield from found
        elif path.is_file():
            yield path
        else:
            raise ManifestError(f"{path}: no such file or directory")


def _documents(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read: {e}") from None
    kind = path.suffix.lstrip(".").upper()
    try:
        if path.suffix == ".json":
            docs: list[Any] = [json.loads(text)]
        else:
            docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = e.problem or e.context or "syntax error"
        raise ManifestError(f"{path}: not valid YAML: {problem}{where}") from None
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not valid {kind}: {_one_line(str(e))}") from None
    except RecursionError:
        raise ManifestError(f"{path}: not valid {kind}: nested too deeply") from None
    except ValueError as e:  # an integer with more digits than Python converts
        raise ManifestError(f"{path}: not valid {kind}: {str(e).split(';')[0]}") from None
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        where = f"{path}" if len(docs) == 1 else f"{path} (document {i + 1})"
        yield from _unwrap(where, doc)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _unwrap(where: str, doc: Any) -> Iterator[tuple[str, Any]]:
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise ManifestError(f"{where}: items must be a list")
        for j, item in enumerate(items):
            yield from _unwrap(f"{where} items[{j}]", item)
    else:
        yield where, doc


def load_raw(paths: Sequence[str]) -> list[tuple[str, Any]]:
    """(origin, API dict) for every object in ``paths``, in file order."""
    return [doc for path in _files(paths) for doc in _documents(path)]


Warn = Callable[[str], None]


def load_parsed(
    paths: Sequence[str], warn: Warn | None = None
) -> list[tuple[dict[str, Any], ApiObject]]:
    """(API dict, parsed object) for every object; the first bad one raises with its origin.

    Problems that do not stop an object from being used (a bad annotation, an unreadable node
    address) go to ``warn`` as one line each: ``FILE: Kind name: field: problem``.
    """
    out: list[tuple[dict[str, Any], ApiObject]] = []
    for where, raw in load_raw(paths):
        if not isinstance(raw, dict):
            raise ManifestError(f"{where}: expected a Kubernetes object, got {type(raw).__name__}")
        try:
            obj = parse_object(raw, strict=True)
        except ParseError as e:
            raise ManifestError(f"{where}: {e}") from None
        if warn is not None and isinstance(obj, Namespace | Node):
            for warning in obj.warnings:
                warn(f"{where}: {describe(raw)}: {warning}")
        out.append((raw, obj))
    return out


def load_objects(paths: Sequence[str], warn: Warn | None = None) -> list[ApiObject]:
    """Parse every object; the first bad one raises with its origin in the message."""
    return [obj for _, obj in load_parsed(paths, warn)]
