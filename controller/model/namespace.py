"""Namespaces: labels (for namespaceSelector) and the opt-in default-deny annotation.

A bad annotation value never drops the Namespace: without it, ``NotIn``/``DoesNotExist``
namespace selectors would match "no labels" and widen access. The value is ignored (no default
deny from it) and the problem is carried in ``warnings`` for the operator to report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.model.direction import Direction, parse_direction_set
from controller.model.errors import ParseError
from controller.model.meta import (
    LIST,
    OBJECT,
    STRING,
    STRINGS,
    Reader,
    Schema,
    describe,
    name_of,
    object_meta,
)
from controller.model.selector import parse_labels

DEFAULT_DENY_ANNOTATION = "nftpolicy.io/default-deny"
NAME_LABEL = "kubernetes.io/metadata.name"

NAMESPACE: Schema = {
    "apiVersion": STRING,
    "kind": STRING,
    "metadata": OBJECT,
    "spec": OBJECT,
    "status": OBJECT,
}
NAMESPACE_SPEC: Schema = {"finalizers": STRINGS}
NAMESPACE_STATUS: Schema = {"conditions": LIST, "phase": STRING}


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    # Directions in which every pod of the namespace is isolated, from the annotation.
    default_deny: frozenset[Direction] = frozenset()
    # Problems with annotations we read ("field: problem"), ignored rather than fatal. Not part
    # of equality, so that a changed message alone does not recompile anything.
    warnings: tuple[str, ...] = field(default=(), compare=False)


def parse_namespace(raw: Mapping[str, Any], *, strict: bool = False) -> Namespace:
    reader = Reader(describe(raw), strict)
    top = reader.section(raw, "", NAMESPACE)
    meta = object_meta(top, reader)
    name = name_of(meta, reader, dns_label=True)
    reader.section(top.get("spec"), "spec", NAMESPACE_SPEC)
    reader.section(top.get("status"), "status", NAMESPACE_STATUS)
    labels = parse_labels(meta.get("labels"), reader, "metadata.labels")
    # The API server always sets this label; objects read from files get the same defaulting.
    labels[NAME_LABEL] = name
    annotations: Mapping[str, str | None] = meta.get("annotations") or {}
    default_deny: frozenset[Direction] = frozenset()
    warnings: list[str] = []
    deny = annotations.get(DEFAULT_DENY_ANNOTATION)
    if deny is not None:
        where = f"metadata.annotations[{DEFAULT_DENY_ANNOTATION}]"
        try:
            default_deny = parse_direction_set(deny, reader.obj, where)
        except ParseError as e:
            warnings.append(f"{where}: {e.message}; ignored (no default deny)")
    return Namespace(name, labels, default_deny, tuple(warnings))
