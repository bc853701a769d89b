"""Nodes: their own addresses (always allowed to reach local pods) and pod CIDRs (the ranges
in which the node's agent drops addresses that belong to no known local pod).

The API server does not validate ``status.addresses`` (an InternalIP may be any string), so an
unreadable one is skipped with a warning rather than dropping the Node: the node then simply
gets no "own node" allowance from it (closed, not open). ``spec.podCIDRs`` are validated there
as legacy CIDRs and read here the same way.

Checked fully (field names in strict mode, JSON types always): the top level, ``metadata``,
``spec``, ``status`` and ``status.addresses[*]``. The nested objects of the other fields are
not read, so they can change nothing we enforce; only their JSON type is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.model.ipaddr import IPAddress, IPNetwork, parse_cidr, parse_ip
from controller.model.meta import (
    BOOLEAN,
    LIST,
    OBJECT,
    STRING,
    STRINGS,
    Reader,
    Schema,
    describe,
    name_of,
    object_meta,
    show,
)
from controller.model.selector import parse_labels

__all__ = ["IPNetwork", "Node", "parse_node"]

NODE: Schema = {
    "apiVersion": STRING,
    "kind": STRING,
    "metadata": OBJECT,
    "spec": OBJECT,
    "status": OBJECT,
}
NODE_SPEC: Schema = {
    "configSource": OBJECT,
    "externalID": STRING,
    "podCIDR": STRING,
    "podCIDRs": STRINGS,
    "providerID": STRING,
    "taints": LIST,
    "unschedulable": BOOLEAN,
}
NODE_STATUS: Schema = {
    "addresses": LIST,
    "allocatable": OBJECT,
    "capacity": OBJECT,
    "conditions": LIST,
    "config": OBJECT,
    "daemonEndpoints": OBJECT,
    "features": OBJECT,
    "images": LIST,
    "nodeInfo": OBJECT,
    "phase": STRING,
    "runtimeHandlers": LIST,
    "volumesAttached": LIST,
    "volumesInUse": STRINGS,
}
NODE_ADDRESS: Schema = {"address": STRING, "type": STRING}


@dataclass(frozen=True)
class Node:
    name: str
    internal_ips: tuple[IPAddress, ...] = ()
    pod_cidrs: tuple[IPNetwork, ...] = ()
    # Addresses skipped ("field: problem"); not part of equality (see Namespace.warnings).
    warnings: tuple[str, ...] = field(default=(), compare=False)


def parse_node(raw: Mapping[str, Any], *, strict: bool = False) -> Node:
    reader = Reader(describe(raw), strict)
    top = reader.section(raw, "", NODE)
    meta = object_meta(top, reader)
    name = name_of(meta, reader)
    parse_labels(meta.get("labels"), reader, "metadata.labels")
    spec = reader.section(top.get("spec"), "spec", NODE_SPEC)
    status = reader.section(top.get("status"), "status", NODE_STATUS)
    ips: list[IPAddress] = []
    warnings: list[str] = []
    for i, entry in enumerate(reader.items(status.get("addresses"), "status.addresses")):
        where = f"status.addresses[{i}]"
        address = reader.section(entry, where, NODE_ADDRESS)
        if address.get("type") != "InternalIP":
            continue
        ip = parse_ip(address.get("address") or "")
        if ip is None:
            problem = f"{show(address.get('address'))} is not an IP address; skipped"
            warnings.append(f"{where}.address: {problem}")
        elif ip not in ips:
            ips.append(ip)
    if spec.get("podCIDRs"):
        written = [(f"spec.podCIDRs[{i}]", t) for i, t in enumerate(spec["podCIDRs"])]
    else:
        written = [("spec.podCIDR", spec["podCIDR"])] if spec.get("podCIDR") else []
    cidrs: list[IPNetwork] = []
    for where, text in written:
        parsed = parse_cidr(text)
        if parsed is None:
            raise reader.error(where, f"invalid CIDR {show(text)}")
        if any(other.version == parsed[0].version for other in cidrs):
            raise reader.error(where, f"second IPv{parsed[0].version} CIDR {parsed[0]}")
        cidrs.append(parsed[0])
    return Node(name, tuple(ips), tuple(cidrs), tuple(warnings))
