"""The nftpolicy.io custom resources as plain dicts: compiled IR <-> API bodies.

``AddressGroup`` objects carry, as labels, the nodes whose rules refer to them (their *span*),
so each agent can watch exactly the groups it needs with a server-side label selector.
``NodeRules`` objects are named after their node. Both are cluster-scoped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from controller.compiler.ir import AddressGroup, Group, NodeRules, PortGroup

GROUP = "nftpolicy.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
ADDRESS_GROUPS = "addressgroups"
NODE_RULES = "noderules"
SPAN_PREFIX = f"span.{GROUP}/"
MANAGED_BY = {"app.kubernetes.io/managed-by": "nftpolicy"}
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def span_label(node: str) -> str:
    """The label key that marks a group as needed by ``node``.

    Node names are DNS subdomains of up to 253 characters, label names only 63: names that do
    not fit are replaced by a hash (agents compute the same key for themselves).
    """
    if _LABEL_NAME.match(node):
        return SPAN_PREFIX + node
    return SPAN_PREFIX + "h-" + hashlib.sha256(node.encode()).hexdigest()[:20]


def group_body(group: Group, span: Iterable[str]) -> dict[str, Any]:
    spec = group.to_json()
    name = spec.pop("name")
    labels = {**MANAGED_BY, **{span_label(node): "" for node in sorted(span)}}
    return {
        "apiVersion": API_VERSION,
        "kind": "AddressGroup",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }


def group_from_body(body: Mapping[str, Any]) -> Group:
    spec = dict(body["spec"])
    spec["name"] = body["metadata"]["name"]
    if "portName" in spec:
        return PortGroup.from_json(spec)
    return AddressGroup.from_json(spec)


def node_rules_body(rules: NodeRules) -> dict[str, Any]:
    spec = rules.to_json()
    node = spec.pop("node")
    return {
        "apiVersion": API_VERSION,
        "kind": "NodeRules",
        "metadata": {"name": node, "labels": dict(MANAGED_BY)},
        "spec": spec,
    }


def node_rules_from_body(body: Mapping[str, Any]) -> NodeRules:
    return NodeRules.from_json({**body.get("spec", {}), "node": body["metadata"]["name"]})
