"""Reference evaluator: is this connection allowed, and which policies decide it?

This module reads the NetworkPolicy v1 specification as literally as possible, over a plain
snapshot of the cluster, with no indexes and no cleverness. It is both a product feature (the
``explain`` command builds on it) and the oracle that the compiler and the kernel ruleset are
tested against, so it must never share code with the compiler beyond the model itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from controller.model import (
    Direction,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    PolicyPeer,
    PolicyPort,
    Protocol,
)
from controller.model.config import DefaultDeny
from controller.model.dns import DnsService, dns_endpoints, is_dns_pod
from controller.model.limits import too_large
from controller.model.namespaces import default_deny_directions, namespace_labels
from controller.model.pod import IPAddress


@dataclass(frozen=True)
class Snapshot:
    """Everything the evaluator needs to know about the cluster."""

    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    pods: tuple[Pod, ...] = ()
    nodes: Mapping[str, Node] = field(default_factory=dict)
    policies: tuple[NetworkPolicy, ...] = ()
    default_deny: DefaultDeny = DefaultDeny()
    dns_services: tuple[DnsService, ...] = ()  # the Services the DNS watch reports

    @classmethod
    def of(
        cls,
        objects: Iterable[Namespace | Pod | Node | NetworkPolicy],
        default_deny: DefaultDeny | None = None,
    ) -> Snapshot:
        namespaces: dict[str, Namespace] = {}
        pods: list[Pod] = []
        nodes: dict[str, Node] = {}
        policies: list[NetworkPolicy] = []
        for o in objects:
            if isinstance(o, Namespace):
                namespaces[o.name] = o
            elif isinstance(o, Pod):
                pods.append(o)
            elif isinstance(o, Node):
                nodes[o.name] = o
            else:
                policies.append(o)
        return cls(namespaces, tuple(pods), nodes, tuple(policies), default_deny or DefaultDeny())

    def pod_at(self, ip: IPAddress) -> Pod | None:
        """The pod that owns ``ip``, if any.

        Several live pods can report one IP (a pod stuck terminating while its IP is reused, a
        deletion that was missed); the address belongs to the newest of them, the one the CNI
        gave it to last: the latest ``creationTimestamp`` (RFC 3339, compared as text; unknown
        is oldest), then the greatest ``namespace/name``. The others are not at ``ip`` at all:
        it neither identifies them as peers nor carries their policies.
        """
        claimants = [pod for pod in self.pods if ip in pod.addresses]
        return max(claimants, key=lambda pod: (pod.created, pod.key), default=None)


@dataclass(frozen=True)
class DirectionVerdict:
    direction: Direction
    isolated: bool
    allowed: bool
    # Who decided: "ns/policy ingress[0]" for each allowing rule, "default-deny ..." etc.
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    egress: DirectionVerdict
    ingress: DirectionVerdict


def evaluate(
    snap: Snapshot,
    src_ip: IPAddress | str,
    dst_ip: IPAddress | str,
    protocol: Protocol,
    port: int,
) -> Verdict:
    """Decide a new connection from ``src_ip`` to ``dst_ip:port/protocol``."""
    src = ipaddress.ip_address(src_ip)
    dst = ipaddress.ip_address(dst_ip)
    src_pod = snap.pod_at(src)
    dst_pod = snap.pod_at(dst)
    egress = _direction(snap, Direction.EGRESS, src_pod, dst, dst_pod, protocol, port)
    ingress = _direction(snap, Direction.INGRESS, dst_pod, src, src_pod, protocol, port)
    return Verdict(egress.allowed and ingress.allowed, egress, ingress)


def _direction(
    snap: Snapshot,
    direction: Direction,
    pod: Pod | None,
    peer_ip: IPAddress,
    peer_pod: Pod | None,
    protocol: Protocol,
    port: int,
) -> DirectionVerdict:
    """Egress of the source pod (peer = destination) or ingress of the destination pod."""
    if pod is None:
        return DirectionVerdict(direction, False, True, ("not a pod",))
    node = snap.nodes.get(pod.node or "")
    if node is not None and peer_ip in node.internal_ips:
        return DirectionVerdict(direction, False, True, (f"traffic with own node {node.name}",))
    # Ingress named ports resolve on the destination (the pod itself); egress on the peer.
    dst_pod = pod if direction is Direction.INGRESS else peer_pod
    selecting = [
        p
        for p in snap.policies
        if p.namespace == pod.namespace
        and direction in p.policy_types
        and p.pod_selector.matches(pod.labels)
    ]
    denied_by_default = direction in default_deny_directions(
        snap.namespaces, pod.namespace, snap.default_deny
    )
    if not selecting and not denied_by_default:
        return DirectionVerdict(direction, False, True, ("not isolated",))
    reasons: list[str] = []
    for policy in selecting:
        if too_large(policy) is not None:
            continue  # over a limit: it isolates but allows nothing (fail closed)
        for i, rule in enumerate(policy.rules(direction)):
            peer_ok = not rule.peers or any(
                _peer_matches(snap, policy, peer, peer_ip, peer_pod) for peer in rule.peers
            )
            port_ok = not rule.ports or any(
                _port_matches(pp, protocol, port, dst_pod) for pp in rule.ports
            )
            if peer_ok and port_ok:
                reasons.append(f"{policy.key} {direction.lower()}[{i}]")
    if (
        denied_by_default
        and direction is Direction.EGRESS
        and snap.default_deny.allow_dns
        and _is_dns(snap, peer_ip, peer_pod, protocol, port)
    ):
        reasons.append("default-deny DNS allowance")
    if reasons:
        return DirectionVerdict(direction, True, True, tuple(reasons))
    why = [p.key for p in selecting] + (["default-deny"] if denied_by_default else [])
    return DirectionVerdict(direction, True, False, tuple(f"isolated by {w}" for w in why))


def _is_dns(
    snap: Snapshot, peer_ip: IPAddress, peer_pod: Pod | None, protocol: Protocol, port: int
) -> bool:
    """Is ``peer_ip:port`` the cluster's DNS (``model/dns.py``): a DNS pod that owns the
    address, on the port the DNS Services target, or a DNS Service or configured address?"""
    dns = snap.default_deny.dns
    pods = [peer_pod] if peer_pod is not None and is_dns_pod(dns, peer_pod) else []
    return (protocol, peer_ip, port) in dns_endpoints(dns, pods, snap.dns_services)


def _peer_matches(
    snap: Snapshot,
    policy: NetworkPolicy,
    peer: PolicyPeer,
    peer_ip: IPAddress,
    peer_pod: Pod | None,
) -> bool:
    if peer.ip_block is not None:
        return peer.ip_block.contains(peer_ip)
    if peer_pod is None:
        return False
    if peer.namespace_selector is None:
        ns_ok = peer_pod.namespace == policy.namespace
    else:
        ns_ok = peer.namespace_selector.matches(
            namespace_labels(snap.namespaces, peer_pod.namespace)
        )
    pod_ok = peer.pod_selector is None or peer.pod_selector.matches(peer_pod.labels)
    return ns_ok and pod_ok


def _port_matches(pp: PolicyPort, protocol: Protocol, port: int, dst_pod: Pod | None) -> bool:
    if pp.protocol is not protocol:
        return False
    if pp.port is None:
        return True
    if isinstance(pp.port, str):
        return dst_pod is not None and dst_pod.named_port(pp.port, protocol) == port
    if pp.end_port is not None:
        return pp.port <= port <= pp.end_port
    return pp.port == port
