"""Normalized peers: the identity of an address group.

Two policy peers that select the same set of endpoints in every possible cluster normalize to
the same key (selectors are already canonical), so they share one group; the group's name is
a hash of that key, stable across restarts and controller replicas.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.compiler.ir import IPRange
from controller.model import IPBlock, LabelSelector, Pod, PolicyPeer, Protocol
from controller.model.selector import EVERYTHING


@dataclass(frozen=True)
class PodPeer:
    """Pods matching ``pod_selector`` in ``namespace`` or in namespaces matching the selector."""

    namespace: str | None
    namespace_selector: LabelSelector | None
    pod_selector: LabelSelector

    def matches_namespace(self, name: str, labels: Mapping[str, str]) -> bool:
        if self.namespace_selector is None:
            return name == self.namespace
        return self.namespace_selector.matches(labels)

    def canonical(self) -> Any:
        ns = self.namespace_selector.canonical() if self.namespace_selector is not None else None
        return ["pods", self.namespace, ns, self.pod_selector.canonical()]

    def __str__(self) -> str:
        where = (
            f"namespace {self.namespace}"
            if self.namespace_selector is None
            else f"namespaces[{self.namespace_selector}]"
        )
        return f"pods[{self.pod_selector}] in {where}"


@dataclass(frozen=True)
class BlockPeer:
    block: IPBlock

    def canonical(self) -> Any:
        return ["ipBlock", str(self.block.cidr), [str(e) for e in self.block.excepts]]

    def __str__(self) -> str:
        return f"ipBlock {self.block.cidr}" + "".join(f" except {e}" for e in self.block.excepts)


@dataclass(frozen=True)
class AnyPeer:
    """Every address (an empty ``from``/``to``); only named-port groups need it as a key."""

    def canonical(self) -> Any:
        return ["any"]

    def __str__(self) -> str:
        return "any peer"


Peer = PodPeer | BlockPeer | AnyPeer


def normalize_peer(peer: PolicyPeer, policy_namespace: str) -> Peer:
    if peer.ip_block is not None:
        return BlockPeer(peer.ip_block)
    pod_selector = peer.pod_selector if peer.pod_selector is not None else EVERYTHING
    if peer.namespace_selector is None:
        return PodPeer(policy_namespace, None, pod_selector)
    return PodPeer(None, peer.namespace_selector, pod_selector)


def _digest(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def address_group_name(peer: Peer) -> str:
    return "ag-" + _digest(peer.canonical())


def port_group_name(peer: Peer, port_name: str, protocol: Protocol) -> str:
    return "pg-" + _digest([peer.canonical(), port_name, str(protocol)])


def peer_matches_pod(peer: Peer, pod: Pod, namespace_labels: Mapping[str, str]) -> bool:
    """Does ``pod`` (which must hold an address) belong to ``peer``?"""
    if isinstance(peer, PodPeer):
        return peer.matches_namespace(pod.namespace, namespace_labels) and (
            peer.pod_selector.matches(pod.labels)
        )
    if isinstance(peer, BlockPeer):
        return any(peer.block.contains(ip) for ip in pod.addresses)
    return True


def block_ranges(block: IPBlock) -> tuple[IPRange, ...]:
    """``cidr`` minus every ``except``, as a minimal sorted list of inclusive intervals."""
    cls = ipaddress.IPv4Address if block.cidr.version == 4 else ipaddress.IPv6Address
    ranges: list[tuple[int, int]] = [
        (int(block.cidr.network_address), int(block.cidr.broadcast_address))
    ]
    for ex in block.excepts:
        lo, hi = int(ex.network_address), int(ex.broadcast_address)
        out: list[tuple[int, int]] = []
        for a, b in ranges:
            if hi < a or lo > b:
                out.append((a, b))
                continue
            if a < lo:
                out.append((a, lo - 1))
            if hi < b:
                out.append((hi + 1, b))
        ranges = out
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return tuple((cls(a), cls(b)) for a, b in merged)
