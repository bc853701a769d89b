"""The cluster as plain frozen data, parsed from Kubernetes API dicts.

Every parser raises :class:`ParseError` naming the object and field on bad input, and reads
either leniently (objects from the API server) or strictly (files); see ``meta``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from controller.model.direction import BOTH, Direction
from controller.model.document import check_document
from controller.model.errors import ParseError
from controller.model.meta import describe, show
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

_PARSERS: dict[str, Callable[..., ApiObject]] = {
    "Namespace": parse_namespace,
    "Pod": parse_pod,
    "Node": parse_node,
    "NetworkPolicy": parse_network_policy,
}
_API_VERSIONS = {
    "Namespace": "v1",
    "Pod": "v1",
    "Node": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}


def parse_object(raw: Mapping[str, Any], *, strict: bool = False) -> ApiObject:
    """Parse one API object by its ``kind``; unknown kinds are an error.

    ``strict=False`` is for objects from the API server: unknown fields are ignored (a newer
    Kubernetes adds them). ``strict=True`` is for files: the whole document is first checked
    to be something ``kubectl`` could send (see ``document``), and unknown fields are errors,
    as ``kubectl apply`` validates.
    """
    obj = describe(raw)
    if not isinstance(raw, Mapping):
        raise ParseError(obj, "", "is not an object")
    if strict:
        check_document(raw, obj)
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in _PARSERS:
        raise ParseError(obj, "kind", f"unsupported kind {show(kind)} (want {', '.join(_PARSERS)})")
    api = raw.get("apiVersion")
    if api is not None and api != _API_VERSIONS[kind]:
        raise ParseError(
            obj, "apiVersion", f"unsupported apiVersion {show(api)} (want {_API_VERSIONS[kind]})"
        )
    return _PARSERS[kind](raw, strict=strict)
