"""Read Kubernetes objects from files and directories (the ``-f`` of ``kubectl``).

Accepts YAML or JSON, multi-document YAML, and ``kind: List`` / ``*List`` wrappers. Every
problem is reported with the file (and document) it came from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from controller.model import ApiObject, ParseError, parse_object

SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(ValueError):
    pass


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
    try:
        if path.suffix == ".json":
            docs: list[Any] = [json.loads(text)]
        else:
            docs = list(yaml.safe_load_all(text))
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {e}") from None
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        where = f"{path}" if len(docs) == 1 else f"{path} (document {i + 1})"
        yield from _unwrap(where, doc)


def _unwrap(where: str, doc: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and "items" in doc:
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


def load_parsed(paths: Sequence[str]) -> list[tuple[dict[str, Any], ApiObject]]:
    """(API dict, parsed object) for every object; the first bad one raises with its origin."""
    out: list[tuple[dict[str, Any], ApiObject]] = []
    for where, raw in load_raw(paths):
        if not isinstance(raw, dict):
            raise ManifestError(f"{where}: expected a Kubernetes object, got {type(raw).__name__}")
        try:
            out.append((raw, parse_object(raw)))
        except ParseError as e:
            raise ManifestError(f"{where}: {e}") from None
    return out


def load_objects(paths: Sequence[str]) -> list[ApiObject]:
    """Parse every object; the first bad one raises with its origin in the message."""
    return [obj for _, obj in load_parsed(paths)]
