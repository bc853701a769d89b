"""Lookups over the set of namespaces that both the compiler and the evaluator share."""

from __future__ import annotations

from collections.abc import Mapping

from controller.model.config import DefaultDeny
from controller.model.direction import Direction
from controller.model.namespace import NAME_LABEL, Namespace


def namespace_labels(namespaces: Mapping[str, Namespace], name: str) -> Mapping[str, str]:
    """Labels of a namespace; one that is not (yet) known carries only its name label."""
    ns = namespaces.get(name)
    return ns.labels if ns is not None else {NAME_LABEL: name}


def default_deny_directions(
    namespaces: Mapping[str, Namespace], name: str, config: DefaultDeny
) -> frozenset[Direction]:
    """Directions in which every pod of namespace ``name`` is isolated by default-deny."""
    ns = namespaces.get(name)
    own = ns.default_deny if ns is not None else frozenset()
    cluster = config.directions if name not in config.exempt_namespaces else frozenset()
    return own | cluster
