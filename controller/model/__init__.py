"""The cluster as plain frozen data, parsed from Kubernetes API dicts.

Every parser raises :class:`ParseError` naming the object and field on bad input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from controller.model.direction import BOTH, Direction
from controller.model.errors import ParseError
from controller.model.meta import describe
from controller.model.namespace import Namespace, parse_namespace
from controller.model.node import Node, parse_node
from controller.model.pod import ContainerPort, Pod, parse_pod
from controller.model.policy import (
    IPBlock,
    NetworkPolicy,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    parse_network_policy,
)
from controller.model.protocol import Protocol
from controller.model.selector import LabelSelector

ApiObject = Namespace | Pod | Node | NetworkPolicy

__all__ = [
    "BOTH",
    "ApiObject",
    "ContainerPort",
    "Direction",
    "IPBlock",
    "LabelSelector",
    "Namespace",
    "NetworkPolicy",
    "Node",
    "ParseError",
    "Pod",
    "PolicyPeer",
    "PolicyPort",
    "PolicyRule",
    "Protocol",
    "parse_object",
]

_PARSERS: dict[str, Callable[[Mapping[str, Any]], ApiObject]] = {
    "Namespace": parse_namespace,
    "Pod": parse_pod,
    "Node": parse_node,
    "NetworkPolicy": parse_network_policy,
}


def parse_object(raw: Mapping[str, Any]) -> ApiObject:
    """Parse one API object by its ``kind``; unknown kinds are an error."""
    obj = describe(raw)
    if not isinstance(raw, Mapping):
        raise ParseError(obj, "", "is not an object")
    kind = raw.get("kind")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise ParseError(obj, "kind", f"unsupported kind {kind!r} (want {', '.join(_PARSERS)})")
    if kind == "NetworkPolicy":
        api = raw.get("apiVersion")
        if api is not None and api != "networking.k8s.io/v1":
            raise ParseError(
                obj, "apiVersion", f"unsupported apiVersion {api!r} (want networking.k8s.io/v1)"
            )
    return parser(raw)
