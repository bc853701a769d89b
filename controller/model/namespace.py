"""Namespaces: labels (for namespaceSelector) and the opt-in default-deny annotation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.model.direction import Direction, parse_direction_set
from controller.model.errors import ParseError
from controller.model.meta import describe, mapping, name_of
from controller.model.selector import parse_labels

DEFAULT_DENY_ANNOTATION = "nftpolicy.io/default-deny"
NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    # Directions in which every pod of the namespace is isolated, from the annotation.
    default_deny: frozenset[Direction] = frozenset()


def parse_namespace(raw: Mapping[str, Any]) -> Namespace:
    obj = describe(raw)
    name = name_of(raw, obj)
    meta = mapping(raw.get("metadata"), obj, "metadata")
    labels = parse_labels(meta.get("labels"), obj, "metadata.labels")
    # The API server always sets this label; objects read from files get the same defaulting.
    labels[NAME_LABEL] = name
    annotations = mapping(meta.get("annotations"), obj, "metadata.annotations")
    deny = annotations.get(DEFAULT_DENY_ANNOTATION)
    default_deny: frozenset[Direction] = frozenset()
    if deny is not None:
        if not isinstance(deny, str):
            raise ParseError(
                obj, f"metadata.annotations[{DEFAULT_DENY_ANNOTATION}]", "not a string"
            )
        default_deny = parse_direction_set(
            deny, obj, f"metadata.annotations[{DEFAULT_DENY_ANNOTATION}]"
        )
    return Namespace(name=name, labels=labels, default_deny=default_deny)
