"""networking.k8s.io/v1 NetworkPolicy, parsed and validated like the API server does.

Validation mirrors the API server so that objects read from files fail the same way a
``kubectl apply`` would, and defaulting (protocol TCP, policyTypes) is applied here once so no
later stage needs to know about it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.model.direction import Direction
from controller.model.errors import ParseError
from controller.model.meta import describe, mapping, name_of, namespace_of, sequence
from controller.model.node import IPNetwork
from controller.model.pod import PORT_NAME_RE
from controller.model.protocol import Protocol, parse_protocol
from controller.model.selector import LabelSelector, parse_selector


@dataclass(frozen=True)
class PolicyPort:
    """One entry of ``ports``: a number (or range up to ``end_port``), a name, or all ports."""

    protocol: Protocol
    port: int | str | None = None
    end_port: int | None = None

    def __str__(self) -> str:
        if self.port is None:
            return f"{self.protocol}/*"
        if self.end_port is not None:
            return f"{self.protocol}/{self.port}-{self.end_port}"
        return f"{self.protocol}/{self.port}"


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return ip in self.cidr and not any(ip in e for e in self.excepts)


@dataclass(frozen=True)
class PolicyPeer:
    """A ``from``/``to`` entry: selectors (ANDed when both are set) or an ipBlock.

    ``pod_selector=None`` with a namespace selector means every pod of the selected namespaces;
    ``namespace_selector=None`` with a pod selector means the policy's own namespace.
    """

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def __str__(self) -> str:
        if self.ip_block is not None:
            ex = "".join(f" except {e}" for e in self.ip_block.excepts)
            return f"ipBlock {self.ip_block.cidr}{ex}"
        parts = []
        if self.namespace_selector is not None:
            parts.append(f"namespaces[{self.namespace_selector}]")
        if self.pod_selector is not None:
            parts.append(f"pods[{self.pod_selector}]")
        return " and ".join(parts)


@dataclass(frozen=True)
class PolicyRule:
    """One ingress or egress rule. Empty ``peers`` = every peer; empty ``ports`` = every port."""

    peers: tuple[PolicyPeer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: frozenset[Direction]
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: Direction) -> tuple[PolicyRule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress


def parse_network_policy(raw: Mapping[str, Any]) -> NetworkPolicy:
    obj = describe(raw)
    name = name_of(raw, obj)
    namespace = namespace_of(raw, obj, default="default")
    spec = mapping(raw.get("spec"), obj, "spec")
    if "podSelector" not in spec:
        raise ParseError(obj, "spec.podSelector", "is required (use {} to select every pod)")
    pod_selector = parse_selector(spec.get("podSelector"), obj, "spec.podSelector")
    ingress = tuple(
        _parse_rule(r, obj, f"spec.ingress[{i}]", "from")
        for i, r in enumerate(sequence(spec.get("ingress"), obj, "spec.ingress"))
    )
    egress = tuple(
        _parse_rule(r, obj, f"spec.egress[{i}]", "to")
        for i, r in enumerate(sequence(spec.get("egress"), obj, "spec.egress"))
    )
    types_raw = sequence(spec.get("policyTypes"), obj, "spec.policyTypes")
    types: set[Direction] = set()
    for i, t in enumerate(types_raw):
        try:
            types.add(Direction(t))
        except ValueError:
            raise ParseError(
                obj, f"spec.policyTypes[{i}]", f"unknown policy type {t!r} (want Ingress or Egress)"
            ) from None
    if not types:
        # API server defaulting: Ingress always; Egress only if egress rules are present.
        types.add(Direction.INGRESS)
        if egress:
            types.add(Direction.EGRESS)
    return NetworkPolicy(
        namespace=namespace,
        name=name,
        pod_selector=pod_selector,
        policy_types=frozenset(types),
        ingress=ingress,
        egress=egress,
    )


def _parse_rule(raw: Any, obj: str, field: str, peers_key: str) -> PolicyRule:
    rule = mapping(raw, obj, field)
    peers = tuple(
        _parse_peer(p, obj, f"{field}.{peers_key}[{i}]")
        for i, p in enumerate(sequence(rule.get(peers_key), obj, f"{field}.{peers_key}"))
    )
    ports = tuple(
        _parse_port(p, obj, f"{field}.ports[{i}]")
        for i, p in enumerate(sequence(rule.get("ports"), obj, f"{field}.ports"))
    )
    return PolicyRule(peers=peers, ports=ports)


def _parse_peer(raw: Any, obj: str, field: str) -> PolicyPeer:
    peer = mapping(raw, obj, field)
    has_pod = peer.get("podSelector") is not None
    has_ns = peer.get("namespaceSelector") is not None
    block = peer.get("ipBlock")
    if block is not None:
        if has_pod or has_ns:
            raise ParseError(
                obj, field, "ipBlock cannot be combined with podSelector or namespaceSelector"
            )
        return PolicyPeer(ip_block=_parse_ip_block(block, obj, f"{field}.ipBlock"))
    if not has_pod and not has_ns:
        raise ParseError(obj, field, "must set podSelector, namespaceSelector or ipBlock")
    return PolicyPeer(
        pod_selector=parse_selector(peer["podSelector"], obj, f"{field}.podSelector")
        if has_pod
        else None,
        namespace_selector=(
            parse_selector(peer["namespaceSelector"], obj, f"{field}.namespaceSelector")
            if has_ns
            else None
        ),
    )


def _parse_cidr(raw: Any, obj: str, field: str) -> IPNetwork:
    if not isinstance(raw, str) or "/" not in raw:
        raise ParseError(obj, field, f"invalid CIDR {raw!r} (want e.g. 10.0.0.0/16)")
    try:
        return ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise ParseError(obj, field, f"invalid CIDR {raw!r}") from None


def _parse_ip_block(raw: Any, obj: str, field: str) -> IPBlock:
    block = mapping(raw, obj, field)
    cidr = _parse_cidr(block.get("cidr"), obj, f"{field}.cidr")
    excepts: list[IPNetwork] = []
    for i, e in enumerate(sequence(block.get("except"), obj, f"{field}.except")):
        net = _parse_cidr(e, obj, f"{field}.except[{i}]")
        if (
            net.version != cidr.version
            or net.network_address not in cidr
            or net.prefixlen <= cidr.prefixlen
        ):
            raise ParseError(
                obj, f"{field}.except[{i}]", f"{e} must be a strict subset of cidr {cidr}"
            )
        excepts.append(net)
    return IPBlock(
        cidr=cidr,
        excepts=tuple(sorted(set(excepts), key=lambda n: (n.network_address, n.prefixlen))),
    )


def _parse_port(raw: Any, obj: str, field: str) -> PolicyPort:
    port = mapping(raw, obj, field)
    protocol = parse_protocol(port.get("protocol"), obj, f"{field}.protocol")
    number = port.get("port")
    end = port.get("endPort")
    if isinstance(number, bool):
        raise ParseError(obj, f"{field}.port", f"must be a number or a name, got {number!r}")
    if isinstance(number, int):
        if not 1 <= number <= 65535:
            raise ParseError(obj, f"{field}.port", f"must be 1-65535, got {number}")
    elif isinstance(number, str):
        if not PORT_NAME_RE.match(number):
            raise ParseError(obj, f"{field}.port", f"invalid port name {number!r}")
    elif number is not None:
        raise ParseError(obj, f"{field}.port", f"must be a number or a name, got {number!r}")
    if end is not None:
        if not isinstance(number, int):
            raise ParseError(obj, f"{field}.endPort", "requires a numeric port")
        if not isinstance(end, int) or isinstance(end, bool) or not number <= end <= 65535:
            raise ParseError(
                obj, f"{field}.endPort", f"must be between port ({number}) and 65535, got {end!r}"
            )
        if end == number:
            end = None
    return PolicyPort(protocol=protocol, port=number, end_port=end)
