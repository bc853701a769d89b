"""The nftpolicy.io custom resources as plain dicts: compiled IR <-> API bodies.

``AddressGroup`` objects are the shards of a group (``controller/publish/shards.py``): each
carries its group's name as a label, and, as labels, the nodes whose rules refer to the group
(its *span*), so each agent can watch exactly the groups it needs with a server-side label
selector.
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
GROUP_LABEL = f"group.{GROUP}/name"  # on every shard: the group it is part of
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
    """The whole group as its base shard alone (a group small enough for one object)."""
    spec = group.to_json()
    name = spec.pop("name")
    return shard_body(name, name, spec, span)


def shard_body(
    group: str, name: str, spec: Mapping[str, Any], span: Iterable[str]
) -> dict[str, Any]:
    """The AddressGroup object ``name``: one shard of ``group`` holding ``spec``."""
    labels = {**MANAGED_BY, GROUP_LABEL: group, **{span_label(node): "" for node in sorted(span)}}
    return {
        "apiVersion": API_VERSION,
        "kind": "AddressGroup",
        "metadata": {"name": name, "labels": labels},
        "spec": dict(spec),
    }


def group_name_of(body: Mapping[str, Any]) -> str:
    """The group an AddressGroup object is a shard of (objects written before groups were
    sharded have no label: they are the whole group, named after it)."""
    meta = body["metadata"]
    return str((meta.get("labels") or {}).get(GROUP_LABEL) or meta["name"])


def group_from_body(body: Mapping[str, Any]) -> Group:
    """The members one AddressGroup object holds, named after its group."""
    spec = dict(body["spec"])
    spec["name"] = group_name_of(body)
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
