"""The compiled, per-node intermediate form that the controller publishes and agents apply.

Address groups are shared between policies and nodes (named by a hash of the normalized peer,
so two policies that say the same thing share one group). An ipBlock group holds the blocks
as written (``cidr`` and ``except`` entries) rather than the intervals they denote, which take
twice the strings: its size is that of the policy's own rule, and the agent expands it
(``intervals()``, O(n log n)). ``NodeRules`` hold, for one node,
only the pods that live there and the rules of the policies that select them, referring to
groups by name. Everything here is plain frozen data with a stable JSON form, so it can be
diffed, hashed and stored in custom resources.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controller.agent.intervals import Interval, merge_intervals, subtract
from controller.model import Direction, IPBlock, Protocol
from controller.model.node import IPNetwork
from controller.model.pod import IPAddress


@dataclass(frozen=True)
class AddressGroup:
    """Addresses matched by one normalized peer: pod IPs, or ipBlocks (cidr minus except).

    In JSON each block is a list of canonical strings, its ``cidr`` then its ``except``
    entries: at most a few bytes more than the policy's own text for the same block.
    """

    name: str
    peer: str  # human-readable normalized peer, for status and debugging
    addresses: frozenset[IPAddress] = frozenset()
    blocks: tuple[IPBlock, ...] = ()

    def intervals(self) -> dict[int, list[Interval]]:
        """Every address of the group as merged integer intervals, by IP version."""
        raw = _block_pieces(self.blocks)
        for ip in self.addresses:
            raw[ip.version].append((int(ip), int(ip)))
        return {v: merge_intervals(ivs) for v, ivs in raw.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "peer": self.peer,
            "addresses": sorted(map(str, self.addresses), key=ip_sort_key),
            "blocks": [[str(b.cidr), *map(str, b.excepts)] for b in self.blocks],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AddressGroup:
        return cls(
            name=raw["name"],
            peer=raw.get("peer", ""),
            addresses=frozenset(ipaddress.ip_address(a) for a in raw.get("addresses", ())),
            blocks=tuple(
                IPBlock(ipaddress.ip_network(cidr), tuple(map(ipaddress.ip_network, excepts)))
                for cidr, *excepts in raw.get("blocks", ())
            ),
        )


def block_intervals(blocks: Iterable[IPBlock]) -> dict[int, list[Interval]]:
    """The addresses of ``blocks`` (each ``cidr`` minus its ``except`` entries) as merged
    integer intervals, by IP version: one sort of each block's excepts and one of the result,
    O(n log n) in the entries."""
    return {v: merge_intervals(ivs) for v, ivs in _block_pieces(blocks).items()}


def _block_pieces(blocks: Iterable[IPBlock]) -> dict[int, list[Interval]]:
    out: dict[int, list[Interval]] = {4: [], 6: []}
    for block in blocks:
        holes = map(_span, block.excepts)
        out[block.cidr.version].extend(subtract(_span(block.cidr), holes))
    return out


def _span(net: IPNetwork) -> Interval:
    first = int(net.network_address)  # (broadcast_address is several times slower)
    return first, first | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)


@dataclass(frozen=True)
class PortGroup:
    """Egress to a named port: (pod IP, resolved port) for each peer pod that has that name.

    Named ports resolve against the destination pod, which may map one name to different
    numbers (or to nothing), so the pair is the unit of membership.
    """

    name: str
    peer: str
    protocol: Protocol
    port_name: str
    members: frozenset[tuple[IPAddress, int]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "peer": self.peer,
            "protocol": str(self.protocol),
            "portName": self.port_name,
            "members": sorted(([str(ip), port] for ip, port in self.members), key=member_sort_key),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PortGroup:
        return cls(
            name=raw["name"],
            peer=raw.get("peer", ""),
            protocol=Protocol(raw["protocol"]),
            port_name=raw["portName"],
            members=frozenset(
                (ipaddress.ip_address(ip), int(p)) for ip, p in raw.get("members", ())
            ),
        )


Group = AddressGroup | PortGroup


@dataclass(frozen=True, order=True)
class PortRange:
    """Numeric ports ``first``..``last`` of one protocol (all ports: 0..65535)."""

    protocol: Protocol
    first: int
    last: int

    def to_json(self) -> list[Any]:
        return [str(self.protocol), self.first, self.last]


@dataclass(frozen=True)
class Rule:
    """One ingress or egress rule of a policy, compiled.

    Allowed traffic is: (peer in ``peers`` — ``None`` means any address) and (port in ``ports``
    — ``None`` means all traffic, any protocol — or a named port in ``named_ports`` resolved on
    the local destination pod [ingress]), or (peer, port) in one of ``port_groups`` [egress].
    """

    peers: tuple[str, ...] | None = None
    ports: tuple[PortRange, ...] | None = None
    named_ports: tuple[tuple[str, Protocol], ...] = ()
    port_groups: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "peers": None if self.peers is None else list(self.peers),
            "ports": None if self.ports is None else [p.to_json() for p in self.ports],
            "namedPorts": [[n, str(p)] for n, p in self.named_ports],
            "portGroups": list(self.port_groups),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Rule:
        ports = raw.get("ports")
        return cls(
            peers=None if raw.get("peers") is None else tuple(raw["peers"]),
            ports=None
            if ports is None
            else tuple(PortRange(Protocol(p), int(a), int(b)) for p, a, b in ports),
            named_ports=tuple((n, Protocol(p)) for n, p in raw.get("namedPorts", ())),
            port_groups=tuple(raw.get("portGroups", ())),
        )


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy as it applies on one node: the local pods it selects and its rules."""

    key: str  # namespace/name
    applied_to: tuple[str, ...]  # keys of local pods
    isolates: frozenset[Direction]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "appliedTo": list(self.applied_to),
            "isolates": sorted(map(str, self.isolates)),
            "ingress": [r.to_json() for r in self.ingress],
            "egress": [r.to_json() for r in self.egress],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CompiledPolicy:
        return cls(
            key=raw["key"],
            applied_to=tuple(raw.get("appliedTo", ())),
            isolates=frozenset(Direction(d) for d in raw.get("isolates", ())),
            ingress=tuple(Rule.from_json(r) for r in raw.get("ingress", ())),
            egress=tuple(Rule.from_json(r) for r in raw.get("egress", ())),
        )


@dataclass(frozen=True)
class LocalPod:
    """A pod on this node that has addresses. Every such pod is listed, isolated or not, so
    the agent can tell a pod that is open (no policy applies, no ``default_deny``) from an
    address it does not know at all (dropped in the node's pod ranges). The named ports are
    listed only for isolated pods: nothing else resolves them.
    """

    key: str
    ips: tuple[IPAddress, ...]
    named_ports: tuple[tuple[str, Protocol, int], ...] = ()
    default_deny: frozenset[Direction] = frozenset()

    def named_port(self, name: str, protocol: Protocol) -> int | None:
        for n, p, number in self.named_ports:
            if n == name and p is protocol:
                return number
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "ips": [str(ip) for ip in self.ips],
            "namedPorts": [[n, str(p), num] for n, p, num in self.named_ports],
            "defaultDeny": sorted(map(str, self.default_deny)),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LocalPod:
        return cls(
            key=raw["key"],
            ips=tuple(ipaddress.ip_address(ip) for ip in raw.get("ips", ())),
            named_ports=tuple(
                (n, Protocol(p), int(num)) for n, p, num in raw.get("namedPorts", ())
            ),
            default_deny=frozenset(Direction(d) for d in raw.get("defaultDeny", ())),
        )


@dataclass(frozen=True)
class NodeRules:
    node: str
    pods: tuple[LocalPod, ...] = ()
    policies: tuple[CompiledPolicy, ...] = ()
    # The cluster DNS groups (port groups, one per protocol) that pods isolated for egress by
    # default deny may reach; empty: no DNS allowance (off, or no such pod on this node).
    dns: tuple[str, ...] = ()
    # The node's pod address ranges (Node.spec.podCIDRs): an address in them that no pod of
    # ``pods`` has is an unknown endpoint. Empty: not known (rules from an older operator, or
    # a CNI that allocates otherwise; the agent then has no ranges unless told).
    pod_cidrs: tuple[IPNetwork, ...] = ()

    def groups(self) -> frozenset[str]:
        """Names of every group these rules refer to."""
        out: set[str] = set()
        for policy in self.policies:
            for rule in policy.ingress + policy.egress:
                out.update(rule.peers or ())
                out.update(rule.port_groups)
        out.update(self.dns)
        return frozenset(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "dnsGroups": list(self.dns),
            "podCIDRs": [str(c) for c in self.pod_cidrs],
            "pods": [p.to_json() for p in self.pods],
            "policies": [p.to_json() for p in self.policies],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> NodeRules:
        return cls(
            node=raw["node"],
            dns=tuple(raw.get("dnsGroups", ())),
            pod_cidrs=tuple(ipaddress.ip_network(c) for c in raw.get("podCIDRs", ())),
            pods=tuple(LocalPod.from_json(p) for p in raw.get("pods", ())),
            policies=tuple(CompiledPolicy.from_json(p) for p in raw.get("policies", ())),
        )


def ip_sort_key(ip: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(ip)
    return (addr.version, int(addr))


def member_sort_key(member: list[Any]) -> tuple[int, int, int]:
    return (*ip_sort_key(member[0]), member[1])
