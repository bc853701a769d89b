"""Nodes: their own addresses (always allowed to reach local pods) and pod CIDRs."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.model.errors import ParseError
from controller.model.meta import describe, mapping, name_of, sequence
from controller.model.pod import IPAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Node:
    name: str
    internal_ips: tuple[IPAddress, ...] = ()
    pod_cidrs: tuple[IPNetwork, ...] = ()


def parse_node(raw: Mapping[str, Any]) -> Node:
    obj = describe(raw)
    name = name_of(raw, obj)
    spec = mapping(raw.get("spec"), obj, "spec")
    status = mapping(raw.get("status"), obj, "status")
    ips: list[IPAddress] = []
    for i, addr in enumerate(sequence(status.get("addresses"), obj, "status.addresses")):
        entry = mapping(addr, obj, f"status.addresses[{i}]")
        if entry.get("type") != "InternalIP":
            continue
        try:
            ips.append(ipaddress.ip_address(str(entry.get("address"))))
        except ValueError:
            raise ParseError(
                obj, f"status.addresses[{i}].address", f"invalid IP {entry.get('address')!r}"
            ) from None
    cidrs_raw = sequence(spec.get("podCIDRs"), obj, "spec.podCIDRs") or (
        [spec["podCIDR"]] if spec.get("podCIDR") else []
    )
    cidrs: list[IPNetwork] = []
    for i, cidr in enumerate(cidrs_raw):
        try:
            cidrs.append(ipaddress.ip_network(cidr, strict=False))
        except (ValueError, TypeError):
            raise ParseError(obj, f"spec.podCIDRs[{i}]", f"invalid CIDR {cidr!r}") from None
    return Node(name=name, internal_ips=tuple(ips), pod_cidrs=tuple(cidrs))
