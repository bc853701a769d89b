"""networking.k8s.io/v1 NetworkPolicy, parsed and validated like the API server does.

Validation mirrors kube-apiserver v1.34 so that objects read from files fail the same way a
``kubectl apply`` would, and what it accepts we accept with its meaning (legacy CIDR spellings
included, see ``ipaddr``); a policy refused here while the cluster enforces nothing for it would
leave its pods open. Defaulting (protocol TCP, policyTypes, a missing podSelector selecting
every pod) is applied here once so no later stage needs to know about it. Every field of a
NetworkPolicy is read, so in strict mode every section is checked for unknown fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.model.direction import Direction
from controller.model.ipaddr import IPAddress, IPNetwork, parse_cidr
from controller.model.meta import (
    INT32,
    INT_OR_STRING,
    LIST,
    OBJECT,
    STRING,
    STRINGS,
    Reader,
    Schema,
    describe,
    name_of,
    namespace_of,
    object_meta,
    show,
)
from controller.model.pod import is_port_name
from controller.model.protocol import Protocol, parse_protocol
from controller.model.selector import LabelSelector, parse_labels, parse_selector

NETWORK_POLICY: Schema = {"apiVersion": STRING, "kind": STRING, "metadata": OBJECT, "spec": OBJECT}
NETWORK_POLICY_SPEC: Schema = {
    "egress": LIST,
    "ingress": LIST,
    "podSelector": OBJECT,
    "policyTypes": STRINGS,
}
INGRESS_RULE: Schema = {"from": LIST, "ports": LIST}
EGRESS_RULE: Schema = {"ports": LIST, "to": LIST}
PEER: Schema = {"ipBlock": OBJECT, "namespaceSelector": OBJECT, "podSelector": OBJECT}
PORT: Schema = {"endPort": INT32, "port": INT_OR_STRING, "protocol": STRING}
IP_BLOCK: Schema = {"cidr": STRING, "except": STRINGS}
MAX_POLICY_TYPES = 2


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

    def contains(self, ip: IPAddress) -> bool:
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


def parse_network_policy(raw: Mapping[str, Any], *, strict: bool = False) -> NetworkPolicy:
    reader = Reader(describe(raw), strict)
    top = reader.section(raw, "", NETWORK_POLICY)
    meta = object_meta(top, reader)
    name = name_of(meta, reader)
    namespace = namespace_of(meta, reader)
    parse_labels(meta.get("labels"), reader, "metadata.labels")
    spec = reader.section(top.get("spec"), "spec", NETWORK_POLICY_SPEC)
    pod_selector = parse_selector(spec.get("podSelector"), reader, "spec.podSelector")
    ingress = tuple(
        _parse_rule(r, reader, f"spec.ingress[{i}]", INGRESS_RULE, "from")
        for i, r in enumerate(reader.items(spec.get("ingress"), "spec.ingress"))
    )
    egress = tuple(
        _parse_rule(r, reader, f"spec.egress[{i}]", EGRESS_RULE, "to")
        for i, r in enumerate(reader.items(spec.get("egress"), "spec.egress"))
    )
    types_raw: list[str] = spec.get("policyTypes") or []
    if len(types_raw) > MAX_POLICY_TYPES:
        raise reader.error("spec.policyTypes", "may not specify more than two policyTypes")
    types: set[Direction] = set()
    for i, t in enumerate(types_raw):
        try:
            types.add(Direction(t))
        except ValueError:
            raise reader.error(
                f"spec.policyTypes[{i}]", f"unknown policy type {show(t)} (want Ingress or Egress)"
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


def _parse_rule(raw: Any, reader: Reader, field: str, schema: Schema, peers_key: str) -> PolicyRule:
    rule = reader.section(raw, field, schema)
    peers = tuple(
        _parse_peer(p, reader, f"{field}.{peers_key}[{i}]")
        for i, p in enumerate(reader.items(rule.get(peers_key), f"{field}.{peers_key}"))
    )
    ports = tuple(
        _parse_port(p, reader, f"{field}.ports[{i}]")
        for i, p in enumerate(reader.items(rule.get("ports"), f"{field}.ports"))
    )
    return PolicyRule(peers=peers, ports=ports)


def _parse_peer(raw: Any, reader: Reader, field: str) -> PolicyPeer:
    peer = reader.section(raw, field, PEER)
    pods, namespaces, block = (
        peer.get("podSelector"),
        peer.get("namespaceSelector"),
        peer.get("ipBlock"),
    )
    if block is not None:
        if pods is not None or namespaces is not None:
            raise reader.error(
                field, "ipBlock cannot be combined with podSelector or namespaceSelector"
            )
        return PolicyPeer(ip_block=_parse_ip_block(block, reader, f"{field}.ipBlock"))
    if pods is None and namespaces is None:
        raise reader.error(field, "must set podSelector, namespaceSelector or ipBlock")
    return PolicyPeer(
        pod_selector=(
            parse_selector(pods, reader, f"{field}.podSelector") if pods is not None else None
        ),
        namespace_selector=(
            parse_selector(namespaces, reader, f"{field}.namespaceSelector")
            if namespaces is not None
            else None
        ),
    )


def _parse_cidr(text: str | None, reader: Reader, field: str) -> tuple[IPNetwork, int]:
    if not text:
        raise reader.error(field, "is required (e.g. 10.0.0.0/16)")
    parsed = parse_cidr(text)
    if parsed is None:
        raise reader.error(field, f"invalid CIDR {show(text)} (want e.g. 10.0.0.0/16)")
    return parsed


def _parse_ip_block(raw: Any, reader: Reader, field: str) -> IPBlock:
    """As ValidateIPBlock: each except's network address must lie in ``cidr`` and its written
    prefix length must be longer than the one written for ``cidr``."""
    block = reader.section(raw, field, IP_BLOCK)
    cidr, cidr_length = _parse_cidr(block.get("cidr"), reader, f"{field}.cidr")
    base, mask = int(cidr.network_address), int(cidr.netmask)
    # Integer keys: deduplicating and sorting ~10^5 network objects would cost seconds.
    excepts: dict[tuple[int, int], IPNetwork] = {}
    written: list[str] = block.get("except") or []
    for i, text in enumerate(written):
        net, length = _parse_cidr(text, reader, f"{field}.except[{i}]")
        address = int(net.network_address)
        if net.version != cidr.version or address & mask != base or length <= cidr_length:
            raise reader.error(
                f"{field}.except[{i}]", f"{show(text)} must be a strict subset of cidr {cidr}"
            )
        excepts.setdefault((address, net.prefixlen), net)
    return IPBlock(cidr=cidr, excepts=tuple(excepts[k] for k in sorted(excepts)))


def _parse_port(raw: Any, reader: Reader, field: str) -> PolicyPort:
    port = reader.section(raw, field, PORT)
    protocol = parse_protocol(port.get("protocol"), reader, f"{field}.protocol")
    number: int | str | None = port.get("port")
    end: int | None = port.get("endPort")
    if isinstance(number, int):
        if not 1 <= number <= 65535:
            raise reader.error(f"{field}.port", f"must be 1-65535, got {number}")
    elif number is not None and not is_port_name(number):
        raise reader.error(f"{field}.port", f"invalid port name {show(number)}")
    if end is not None:
        if not isinstance(number, int):
            raise reader.error(f"{field}.endPort", "requires a numeric port")
        if not number <= end <= 65535:
            raise reader.error(
                f"{field}.endPort", f"must be between port ({number}) and 65535, got {end}"
            )
        if end == number:
            end = None
    return PolicyPort(protocol=protocol, port=number, end_port=end)
