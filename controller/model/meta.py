"""Helpers shared by the object parsers: object references and metadata fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.model.errors import ParseError

NAMESPACED_KINDS = frozenset({"Pod", "NetworkPolicy"})


def describe(raw: Any) -> str:
    """``Kind namespace/name`` for messages, robust to any input shape."""
    if not isinstance(raw, Mapping):
        return f"object of type {type(raw).__name__}"
    kind = raw.get("kind") or "object"
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping):
        return str(kind)
    name = meta.get("name") or "<unnamed>"
    ns = meta.get("namespace") or ("default" if kind in NAMESPACED_KINDS else None)
    return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"


def mapping(raw: Any, obj: str, field: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ParseError(obj, field, f"must be an object, got {type(raw).__name__}")
    return raw


def sequence(raw: Any, obj: str, field: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ParseError(obj, field, f"must be a list, got {type(raw).__name__}")
    return raw


def name_of(raw: Mapping[str, Any], obj: str) -> str:
    meta = mapping(raw.get("metadata"), obj, "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ParseError(obj, "metadata.name", "is required")
    return name


def namespace_of(raw: Mapping[str, Any], obj: str, default: str | None = None) -> str:
    meta = mapping(raw.get("metadata"), obj, "metadata")
    ns = meta.get("namespace") or default
    if not isinstance(ns, str) or not ns:
        raise ParseError(obj, "metadata.namespace", "is required")
    return ns
