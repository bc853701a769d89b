"""Normalized peers: the identity of an address group.

Two policy peers that select the same set of endpoints in every possible cluster normalize to
the same key (selectors are already canonical), so they share one group; the group's name is
a hash of that key, stable across restarts and controller replicas.

All ipBlock peers of one rule are one peer (``BlockPeer``): one group per rule however many
blocks it lists, so a rule of 40,000 /32 peers is one object, as large as that rule.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from controller.agent.intervals import IntervalSet
from controller.compiler.ir import block_intervals
from controller.model import IPBlock, LabelSelector, Pod, PolicyPeer, Protocol
from controller.model.node import IPNetwork
from controller.model.pod import IPAddress
from controller.model.selector import EVERYTHING

PEER_TEXT_MAX = 200  # characters of a group's human-readable ``peer``


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
    """The ipBlock peers of one rule, together: the union of each ``cidr`` minus its excepts.

    Identity (equality, hash) is the digest of the canonical blocks, computed once: the blocks
    themselves can be tens of thousands, and peers are dictionary keys on every pod event.
    """

    digest: str  # all of SHA-256: unlike a group name's, a collision would merge two peers
    blocks: tuple[IPBlock, ...] = field(compare=False)

    @classmethod
    def of(cls, blocks: Iterable[IPBlock]) -> BlockPeer:
        """Blocks and their excepts in canonical order (family, network, prefix length),
        duplicates dropped, so equal sets of blocks are one peer however they were written.
        Sorting and hashing work on integer keys: tens of thousands of ``ipaddress``
        comparisons, hashes or strings would cost seconds."""
        canonical: dict[tuple[Any, ...], IPBlock] = {}
        for block in blocks:
            excepts = tuple(map(_network_key, block.excepts))
            ordered = tuple(sorted(set(excepts)))
            if ordered != excepts:
                block = IPBlock(block.cidr, tuple(sorted(set(block.excepts), key=_network_key)))
            canonical[(_network_key(block.cidr), ordered)] = block
        keys = sorted(canonical)
        digest = hashlib.sha256(repr(keys).encode()).hexdigest()
        return cls(digest, tuple(canonical[k] for k in keys))

    def canonical(self) -> Any:
        return ["ipBlocks", self.digest]

    def contains(self, ip: IPAddress) -> bool:
        """O(log n) in the entries, after one O(n log n) expansion on first use."""
        return int(ip) in self._intervals[ip.version]

    @cached_property
    def _intervals(self) -> dict[int, IntervalSet]:
        return {v: IntervalSet(ivs) for v, ivs in block_intervals(self.blocks).items()}

    def __str__(self) -> str:
        first = self.blocks[0]
        text = f"ipBlock {first.cidr}" + "".join(f" except {e}" for e in first.excepts[:10])
        if len(self.blocks) == 1 and len(first.excepts) <= 10:
            return text
        excepts = sum(len(b.excepts) for b in self.blocks)
        return f"{text[:100]}... ({len(self.blocks):,} ipBlocks, {excepts:,} excepts)"


@dataclass(frozen=True)
class AnyPeer:
    """Every address (an empty ``from``/``to``); only named-port groups need it as a key."""

    def canonical(self) -> Any:
        return ["any"]

    def __str__(self) -> str:
        return "any peer"


Peer = PodPeer | BlockPeer | AnyPeer


def describe(peer: Peer) -> str:
    """The human-readable form of ``peer`` for a group's ``peer`` field, bounded: a selector
    can be as long as the policy it comes from."""
    text = str(peer)
    return text if len(text) <= PEER_TEXT_MAX else text[: PEER_TEXT_MAX - 3] + "..."


def normalize_peers(peers: Iterable[PolicyPeer], policy_namespace: str) -> list[Peer]:
    """The distinct peers of one rule, in a stable order: selector peers, then one
    ``BlockPeer`` for all its ipBlocks."""
    out: dict[Peer, None] = {}
    blocks: list[IPBlock] = []
    for peer in peers:
        if peer.ip_block is not None:
            blocks.append(peer.ip_block)
            continue
        pod_selector = peer.pod_selector if peer.pod_selector is not None else EVERYTHING
        if peer.namespace_selector is None:
            out[PodPeer(policy_namespace, None, pod_selector)] = None
        else:
            out[PodPeer(None, peer.namespace_selector, pod_selector)] = None
    if blocks:
        out[BlockPeer.of(blocks)] = None
    return list(out)


def _network_key(net: IPNetwork) -> tuple[int, int, int]:
    return net.version, int(net.network_address), net.prefixlen


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
        return any(peer.contains(ip) for ip in pod.addresses)
    return True
