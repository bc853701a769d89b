"""NodeRules + groups -> one libnftables JSON transaction for table ``inet nftpolicy``.

Layout (see ARCHITECTURE.md):

* base chain ``forward`` (hook forward): ``ct state established,related accept``, then the
  source address of the packet is looked up in the egress verdict maps and the destination in
  the ingress verdict maps; only local isolated pods have entries, so other traffic passes.
* established flows are re-checked in the kernel when the rules change (``ct_mark_mask``):
  every packet that passes the policy lookups stamps its flow's conntrack mark with the
  ruleset's *epoch* (bits under the mask, derived from a digest of the ruleset), and only
  established packets carrying the current epoch skip the lookups. After a swap, the next
  packet of each flow in its original direction goes through the lookups like a new
  connection: allowed, it is stamped and the flow goes on; denied, it is dropped, at the moment
  the new rules are in the kernel. Reply-direction packets cannot be judged by rules written
  for the original direction and are accepted; the agent's conntrack clean-up (conntrack.py)
  removes those flows after the swap. Without a mask (0), established flows are accepted as
  before and only the clean-up cuts them.
* one chain per *distinct* allowance (pods with identical allowances, e.g. the replicas of a
  Deployment, share it; it is computed once for all of them). Its rules are at most four set
  lookups (address-only and ``address . l4proto . port`` interval sets, IPv4 and IPv6) that
  ``return`` on a match, then a rate-limited NFLOG and a counted drop. The cost per packet
  therefore does not grow with the number of policies or peers.
* traffic between a node and its own pods never reaches the forward hook, so it is allowed.
* unknown endpoints: before the verdict maps, a new connection whose source or destination is
  in the node's pod ranges (``NodeRules.pod_cidrs``, or ``RenderOptions.pod_cidrs``) but is
  no address of a listed local pod jumps to chain ``unknown-endpoint``: logged, counted
  (named counter ``unknown-endpoint-drops``, which the agent reads) and dropped. NodeRules
  list every local pod, isolated or not, so such an address belongs to a pod this node has
  not heard of yet (the pod-startup race) or to none. Two set lookups per address at most
  (``pod-ranges4`` then ``pods4``; IPv6 alike); only addresses in the ranges pay the second.

Bounded size: multiplying a rule's peers by its ports into ``address . l4proto . port``
elements is what makes one lookup possible, but 1,000 ``except`` entries times 1,000 ports
are 10^6 kernel elements (tens of MB of JSON, hundreds of MB in the agent). So a rule whose
product exceeds ``CROSS_MAX`` elements, or would take the allowance's shared sets past
``BOXES_MAX``, is not multiplied out: it becomes one rule of two lookups,
``ip saddr @a… meta l4proto . th dport @p… return``, whose sets hold the rule's address
intervals and its ports, linear in the rule's size. The trade-off is per packet: each such rule
(after joining those with equal address or equal port sets) is one more rule that a new
connection of that pod may walk, instead of being folded into the shared lookup; the common
small rules keep one lookup. Merging overlapping boxes can itself be quadratic in pathological
overlaps (``intervals.merge_boxes``): past a work budget every ported rule of that allowance is
rendered the second way. Those address and port sets are named by their content, so pods and
chains that need the same one share it.

Strings from the cluster (names, labels) only ever appear as JSON string values (comments and
log prefixes), never in nft syntax.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.agent.intervals import Box, Interval, merge_boxes, merge_intervals
from controller.compiler.ip_owners import IPConflict
from controller.compiler.ir import (
    AddressGroup,
    Group,
    LocalPod,
    NodeRules,
    PortGroup,
    Rule,
    block_intervals,
)
from controller.model import Direction, IPBlock
from controller.model.node import IPNetwork
from controller.model.pod import IPAddress

TABLE = "nftpolicy"
FAMILY = "inet"
FORWARD_PRIORITY = -5  # before the filter priority (0) where kube-proxy and others sit
COMMENT_MAX = 127
FULL = {4: (0, 2**32 - 1), 6: (0, 2**128 - 1)}
FAMILY_OF_VERSION = {4: "ip", 6: "ip6"}
SHORT = {Direction.INGRESS: "in", Direction.EGRESS: "out"}
UNKNOWN_CHAIN = "unknown-endpoint"
UNKNOWN_COUNTER = "unknown-endpoint-drops"

UnknownEndpoints = Literal["drop", "allow"]
# Conntrack mark bits used for the epoch by default. Other users of the conntrack mark keep
# the other bits (we only ever set ours); with 16 bits, a flow idle across changes is taken for
# current by chance once in 65,535 changes (the conntrack clean-up still judges it).
CT_MARK_MASK = 0xFFFF0000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderOptions:
    log_group: int | None = 100  # NFLOG group for dropped packets; None disables logging
    log_rate_per_second: int = 10
    priority: int = FORWARD_PRIORITY
    # New connections from or to an address of the node's pod ranges that no local pod has:
    # "drop" (logged, counted) or "allow" (a new pod is open until its node knows it).
    unknown_endpoints: UnknownEndpoints = "drop"
    # The node's pod ranges, replacing NodeRules.pod_cidrs (for CNIs that do not allocate
    # from Node.spec.podCIDRs); None: those of the NodeRules.
    pod_cidrs: tuple[IPNetwork, ...] | None = None
    # Conntrack mark bits that carry the ruleset epoch (module doc); 0: no kernel re-check.
    ct_mark_mask: int = CT_MARK_MASK


class MissingGroupError(LookupError):
    """NodeRules refer to a group the renderer was not given."""


# A rule's address intervals x port ranges up to this many elements go into the shared sets.
CROSS_MAX = 4_096
# Elements the shared ``address . l4proto . port`` sets of one allowance take from rules
# (before merging); rules beyond it are rendered as separate lookups.
BOXES_MAX = 65_536
# Work budget of merging one allowance's boxes: a base plus this much per box (see intervals).
MERGE_WORK_BASE = 100_000
MERGE_WORK_PER_BOX = 16

PortSpan = tuple[int, int, int]  # protocol number, first port, last port


@dataclass(frozen=True)
class _Pair:
    """Peers x ports of a rule, kept apart: one lookup in each set instead of their product."""

    addresses: dict[int, list[Interval]]  # merged, by IP version
    ports: list[PortSpan]  # merged per protocol

    def key(self) -> tuple[tuple[Interval, ...], tuple[Interval, ...], tuple[PortSpan, ...]]:
        return tuple(self.addresses[4]), tuple(self.addresses[6]), tuple(self.ports)


@dataclass
class _Allowance:
    """What one pod allows in one direction, before merging."""

    any: dict[int, list[Interval]] = field(default_factory=lambda: {4: [], 6: []})
    products: list[_Pair] = field(default_factory=list)  # small rules: multiplied out
    pairs: list[_Pair] = field(default_factory=list)  # large rules: separate lookups
    # Egress named-port members and the DNS allowance, already (protocol, address, port).
    points: dict[int, list[Box]] = field(default_factory=lambda: {4: [], 6: []})
    sources: set[str] = field(default_factory=set)  # policies / allowances that contributed


@dataclass(frozen=True)
class _Chain:
    name: str
    direction: Direction
    any: dict[int, list[Interval]]
    boxes: dict[int, list[Box]]
    pairs: tuple[_Pair, ...]
    sources: tuple[str, ...]


def render(
    rules: NodeRules, groups: dict[str, Group], options: RenderOptions | None = None
) -> dict[str, Any]:
    """The full ruleset for one node, as a libnftables JSON document (atomic replace)."""
    opts = options or RenderOptions()
    missing = rules.groups() - set(groups)
    if missing:
        raise MissingGroupError(f"node {rules.node}: unknown group(s) {', '.join(sorted(missing))}")
    cache = _Cache(groups, rules.dns)
    chains: dict[str, _Chain] = {}
    vmaps: dict[tuple[Direction, int], list[tuple[str, str, str]]] = defaultdict(list)
    by_pod: dict[str, list[tuple[str, Rule, Direction]]] = defaultdict(list)
    isolated: dict[str, set[Direction]] = defaultdict(set)
    for policy in rules.policies:
        for pod_key in policy.applied_to:
            isolated[pod_key] |= policy.isolates
            for d in policy.isolates:
                by_pod[pod_key].extend((policy.key, r, d) for r in policy.rules(d))
    lost: set[tuple[IPAddress, str]] = set()
    for conflict in duplicate_addresses(rules):
        log.warning("node %s: %s; the others' entries are left out", rules.node, conflict)
        lost.update((conflict.ip, key) for key in conflict.losers)
    for pod in rules.pods:
        for direction in (Direction.EGRESS, Direction.INGRESS):
            if direction not in isolated[pod.key] and direction not in pod.default_deny:
                continue
            chain = cache.chain(pod, direction, by_pod[pod.key])
            chains.setdefault(chain.name, chain)
            for ip in pod.ips:
                if (ip, pod.key) not in lost:
                    vmaps[(direction, ip.version)].append((str(ip), chain.name, pod.key))
    unknown = None
    if unknown_endpoints_in_force(rules, opts) == "drop":
        known: dict[int, set[IPAddress]] = {4: set(), 6: set()}
        for pod in rules.pods:
            for ip in pod.ips:
                known[ip.version].add(ip)
        unknown = _Unknown(pod_ranges(rules, opts), known)
    return {"nftables": _commands(chains, vmaps, unknown, opts)}


def pod_ranges(rules: NodeRules, options: RenderOptions) -> dict[int, list[Interval]]:
    """The node's pod ranges (the override of ``options``, else the NodeRules'), merged
    (an override may overlap itself), by IP version."""
    cidrs = rules.pod_cidrs if options.pod_cidrs is None else options.pod_cidrs
    return block_intervals(IPBlock(net, ()) for net in cidrs)


def unknown_endpoints_in_force(
    rules: NodeRules, options: RenderOptions
) -> Literal["drop", "allow", "inactive"]:
    """What the rendered table does with unknown endpoints: as configured, or "inactive"
    when dropping is configured but no pod range is known (nothing to tell them by)."""
    if options.unknown_endpoints == "allow":
        return "allow"
    ranges = pod_ranges(rules, options)
    return "drop" if ranges[4] or ranges[6] else "inactive"


@dataclass(frozen=True)
class _Unknown:
    """What tells an unknown endpoint: the pod ranges and every local pod's address."""

    ranges: dict[int, list[Interval]]
    known: dict[int, set[IPAddress]]


def duplicate_addresses(rules: NodeRules) -> list[IPConflict]:
    """Addresses that several local pods list, by address, with the pod that keeps each.

    The operator gives every address to one pod (``compiler/ip_owners.py``), but rules from an
    older operator, or edited by hand, may not: two verdict-map elements with one key make the
    kernel refuse the whole transaction (``File exists``), so the node would take no update
    at all. One pod keeps the address, the greatest ``namespace/name`` (rules carry no
    creation times; at equal ones the operator decides the same way); the agent counts these.
    """
    claimants: dict[IPAddress, set[str]] = defaultdict(set)
    for pod in rules.pods:
        for ip in pod.ips:
            claimants[ip].add(pod.key)
    out = []
    for ip in sorted(claimants, key=lambda ip: (ip.version, int(ip))):
        keys = claimants[ip]
        if len(keys) > 1:
            winner = max(keys)
            out.append(IPConflict(ip, winner, tuple(sorted(keys - {winner}))))
    return out


class _Cache:
    """Per-render memory: group contents as merged integer intervals, and chains by what
    decides them (so the replicas of a Deployment cost one chain computation, not one each)."""

    def __init__(self, groups: dict[str, Group], dns: tuple[str, ...]) -> None:
        self._groups = groups
        self.dns = dns  # the cluster DNS port groups (none: no DNS allowance)
        self._intervals: dict[str, dict[int, list[Interval]]] = {}
        self._chains: dict[tuple[object, ...], _Chain] = {}

    def intervals(self, name: str) -> dict[int, list[Interval]]:
        cached = self._intervals.get(name)
        if cached is None:
            group = self._groups[name]
            assert isinstance(group, AddressGroup)
            cached = self._intervals[name] = group.intervals()
        return cached

    def port_group(self, name: str) -> PortGroup:
        group = self._groups[name]
        assert isinstance(group, PortGroup)
        return group

    def chain(
        self, pod: LocalPod, direction: Direction, rules: list[tuple[str, Rule, Direction]]
    ) -> _Chain:
        """The chain of ``pod`` in ``direction``. It depends only on the rules (by identity,
        all alive for this render), the pod's numbers for the ingress named ports they use,
        and whether the DNS allowance applies."""
        mine = [(key, rule) for key, rule, d in rules if d is direction]
        named = tuple(pod.named_port(n, p) for _, rule in mine for n, p in rule.named_ports)
        dns = direction is Direction.EGRESS and direction in pod.default_deny and bool(self.dns)
        memo_key = (direction, tuple((key, id(rule)) for key, rule in mine), named, dns)
        chain = self._chains.get(memo_key)
        if chain is None:
            chain = self._chains[memo_key] = _chain(direction, _allowance(pod, mine, dns, self))
        return chain


def _allowance(
    pod: LocalPod, rules: list[tuple[str, Rule]], dns: bool, cache: _Cache
) -> _Allowance:
    out = _Allowance()
    shared = 0  # elements the small rules put into the shared sets so far
    for policy_key, rule in rules:
        contributed = False
        if rule.peers is None:
            peers = {v: [FULL[v]] for v in (4, 6)}
        else:
            raw: dict[int, list[Interval]] = {4: [], 6: []}
            for name in rule.peers:
                for v, ivs in cache.intervals(name).items():
                    raw[v].extend(ivs)
            peers = {v: merge_intervals(ivs) for v, ivs in raw.items()}
        addresses = len(peers[4]) + len(peers[6])
        if rule.ports is None:
            for v in (4, 6):
                out.any[v].extend(peers[v])
            contributed = addresses > 0
        else:
            ports = [(p.protocol.number, p.first, p.last) for p in rule.ports]
            for name, protocol in rule.named_ports:  # ingress: resolve on this pod
                number = pod.named_port(name, protocol)
                if number is not None:
                    ports.append((protocol.number, number, number))
            pair = _Pair(peers, _merge_ports(ports))
            size = addresses * len(pair.ports)
            if size and size <= CROSS_MAX and shared + size <= BOXES_MAX:
                out.products.append(pair)
                shared += size
            elif size:
                out.pairs.append(pair)
            contributed = size > 0
        for name in rule.port_groups:  # egress: resolved on each destination pod
            contributed |= _add_members(out, cache.port_group(name))
        if contributed:
            out.sources.add(policy_key)
    # Default deny's DNS allowance: the cluster DNS endpoints only (pods on their target
    # port, Service IPs and configured resolvers on 53), never port 53 of any address. No
    # endpoints (no DNS found): nothing is allowed, and the operator warns about it.
    if dns:
        found = [_add_members(out, cache.port_group(name)) for name in cache.dns]
        if any(found):
            out.sources.add("default-deny DNS")
    return out


def _add_members(out: _Allowance, group: PortGroup) -> bool:
    """Add a port group's (address, port) members to ``out``; whether it had any."""
    for ip, number in group.members:
        out.points[ip.version].append((group.protocol.number, int(ip), int(ip), number, number))
    return bool(group.members)


def _merge_ports(ports: list[PortSpan]) -> list[PortSpan]:
    by_proto: dict[int, list[Interval]] = defaultdict(list)
    for proto, first, last in ports:
        by_proto[proto].append((first, last))
    return [
        (proto, lo, hi) for proto in sorted(by_proto) for lo, hi in merge_intervals(by_proto[proto])
    ]


def _products(pairs: list[_Pair], version: int) -> list[Box]:
    return [
        (proto, lo, hi, plo, phi)
        for pair in pairs
        for proto, plo, phi in pair.ports
        for lo, hi in pair.addresses[version]
    ]


def _chain(direction: Direction, allowance: _Allowance) -> _Chain:
    any_ = {v: merge_intervals(allowance.any[v]) for v in (4, 6)}
    boxes: dict[int, list[Box]] = {}
    pairs = allowance.pairs
    for v in (4, 6):
        candidates = allowance.points[v] + _products(allowance.products, v)
        merged = merge_boxes(candidates, MERGE_WORK_BASE + MERGE_WORK_PER_BOX * len(candidates))
        if merged is None:  # pathological overlaps: no product at all, only separate lookups
            pairs = allowance.pairs + allowance.products
            boxes = {u: _merge_points(allowance.points[u]) for u in (4, 6)}
            break
        boxes[v] = merged
    joined = _coalesce(pairs)
    content: list[Any] = [str(direction), any_, boxes]
    if joined:  # (absent otherwise: chain names stay what they were before pairs existed)
        content.append([pair.key() for pair in joined])
    digest = hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()[:16]
    return _Chain(
        f"{SHORT[direction]}-{digest}",
        direction,
        any_,
        boxes,
        tuple(joined),
        tuple(sorted(allowance.sources)),
    )


def _merge_points(points: list[Box]) -> list[Box]:
    """Named-port members and the DNS boxes overlap only a little: their merge is linear."""
    merged = merge_boxes(points)
    assert merged is not None  # no budget given
    return merged


def _coalesce(pairs: list[_Pair]) -> list[_Pair]:
    """Join pairs with equal port sets (addresses united), then with equal address sets
    (ports united): the same traffic, fewer rules. Sorted, so the chain is canonical."""
    by_ports: dict[tuple[PortSpan, ...], dict[int, list[Interval]]] = {}
    for pair in pairs:
        acc = by_ports.setdefault(tuple(pair.ports), {4: [], 6: []})
        for v in (4, 6):
            acc[v].extend(pair.addresses[v])
    by_addresses: dict[tuple[tuple[Interval, ...], ...], list[PortSpan]] = {}
    for ports, raw in by_ports.items():
        addresses = {v: merge_intervals(raw[v]) for v in (4, 6)}
        by_addresses.setdefault((tuple(addresses[4]), tuple(addresses[6])), []).extend(ports)
    return sorted(
        (
            _Pair({4: list(a4), 6: list(a6)}, _merge_ports(ports))
            for (a4, a6), ports in by_addresses.items()
        ),
        key=_Pair.key,
    )


# ---- JSON emission ---------------------------------------------------------------------------


def _table() -> dict[str, Any]:
    return {"family": FAMILY, "name": TABLE}


def _in_table() -> dict[str, Any]:
    """The reference to our table that chains, sets, maps and rules carry."""
    return {"family": FAMILY, "table": TABLE}


def _addr(version: int, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


def _addr_elem(version: int, lo: int, hi: int) -> Any:
    if lo == hi:
        return _addr(version, lo)
    return {"range": [_addr(version, lo), _addr(version, hi)]}


def _port_elem(lo: int, hi: int) -> Any:
    return lo if lo == hi else {"range": [lo, hi]}


def _payload(version: int, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": FAMILY_OF_VERSION[version], "field": field}}


# What a comment may hold: `nft list` prints a comment between double quotes exactly as it is
# stored, without escaping, so a quote, a backslash, a control character or a non-ASCII byte
# (policy and pod names come from custom resources) would make the kernel's own listing
# impossible to load again with `nft -f`. Everything else becomes "?".
_COMMENT_CHARS = frozenset(map(chr, range(0x20, 0x7F))) - {'"', "\\"}


def _comment(text: str) -> str:
    clean = "".join(c if c in _COMMENT_CHARS else "?" for c in text)
    if len(clean) <= COMMENT_MAX:
        return clean
    return clean[: COMMENT_MAX - 3] + "..."


def _commands(
    chains: dict[str, _Chain],
    vmaps: dict[tuple[Direction, int], list[tuple[str, str, str]]],
    unknown: _Unknown | None,
    opts: RenderOptions,
) -> list[dict[str, Any]]:
    table = _in_table()
    cmds: list[dict[str, Any]] = [
        # add + delete + add in one transaction: an atomic replace, whether or not it existed.
        {"add": {"table": _table()}},
        {"delete": {"table": _table()}},
        {"add": {"table": _table()}},
    ]
    ordered = sorted(chains.values(), key=lambda c: c.name)
    shared: dict[str, dict[str, Any]] = {}  # the pairs' sets, by content: once per table
    chain_cmds = [cmd for chain in ordered for cmd in _chain_commands(chain, opts, shared)]
    cmds.extend(shared.values())
    cmds.extend(chain_cmds)
    map_names: dict[tuple[Direction, int], str] = {}
    for direction in (Direction.EGRESS, Direction.INGRESS):
        for v in (4, 6):
            name = f"{SHORT[direction]}{v}"
            map_names[(direction, v)] = name
            elements = [
                [{"elem": {"val": ip, "comment": _comment(pod)}}, {"jump": {"target": chain}}]
                for ip, chain, pod in sorted(vmaps.get((direction, v), ()))
            ]
            spec: dict[str, Any] = {
                **table,
                "name": name,
                "type": "ipv4_addr" if v == 4 else "ipv6_addr",
                "map": "verdict",
            }
            if elements:
                spec["elem"] = elements
            cmds.append({"add": {"map": spec}})
    unknown_rules = [] if unknown is None else _unknown_endpoint(unknown, opts, cmds)
    epoch = _epoch(cmds, opts.ct_mark_mask)
    cmds.append(
        {
            "add": {
                "chain": {
                    **table,
                    "name": "forward",
                    "type": "filter",
                    "hook": "forward",
                    "prio": opts.priority,
                    "policy": "accept",
                }
            }
        }
    )
    base_rules = [*_established(opts.ct_mark_mask, epoch), *unknown_rules]
    for direction, field_name in ((Direction.EGRESS, "saddr"), (Direction.INGRESS, "daddr")):
        for v in (4, 6):
            base_rules.append(
                [
                    {
                        "vmap": {
                            "key": _payload(v, field_name),
                            "data": f"@{map_names[(direction, v)]}",
                        }
                    }
                ]
            )
    if epoch:  # reached only by packets the lookups let through: stamp their flow
        mark = {"ct": {"key": "mark"}}
        kept = {"&": [mark, ~opts.ct_mark_mask & 0xFFFFFFFF]}
        base_rules.append([{"mangle": {"key": mark, "value": {"|": [kept, epoch]}}}])
    for expr in base_rules:
        cmds.append({"add": {"rule": {**table, "chain": "forward", "expr": expr}}})
    return cmds


def _ct_state(*states: str) -> dict[str, Any]:
    return {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": list(states)}}


def _established(mask: int, epoch: int) -> list[list[dict[str, Any]]]:
    """The forward chain's first rules: which packets of existing flows skip the lookups."""
    if not epoch:
        return [[_ct_state("established", "related"), {"accept": None}]]
    current = {
        "match": {"op": "==", "left": {"&": [{"ct": {"key": "mark"}}, mask]}, "right": epoch}
    }
    reply = {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}}
    return [
        [_ct_state("established", "related"), current, {"accept": None}],
        [_ct_state("related"), {"accept": None}],  # ICMP errors, helpers' expected flows
        [_ct_state("established"), reply, {"accept": None}],  # left to the clean-up
    ]


def _epoch(cmds: list[dict[str, Any]], mask: int) -> int:
    """The ruleset's epoch: a value under ``mask`` taken from a digest of everything else in
    the ruleset (so re-applying the same rules, e.g. at a resync or after a restart, keeps
    established flows on the fast path); never 0, the mark of flows nobody stamped. 0 when
    there is no mask."""
    if not mask:
        return 0
    digest = hashlib.sha256(json.dumps(cmds, separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:4], "big") & mask or mask & -mask


def _unknown_endpoint(
    unknown: _Unknown, opts: RenderOptions, cmds: list[dict[str, Any]]
) -> list[list[dict[str, Any]]]:
    """Add the sets, counter and chain that drop unknown endpoints to ``cmds``; return the
    forward chain's rules that jump there (source, then destination, per IP version)."""
    table = _in_table()
    cmds.append({"add": {"counter": {**table, "name": UNKNOWN_COUNTER}}})
    cmds.append({"add": {"chain": {**table, "name": UNKNOWN_CHAIN}}})
    if opts.log_group is not None:
        prefix = f"nftpolicy {UNKNOWN_CHAIN} drop "
        log_expr = [
            {"limit": {"rate": opts.log_rate_per_second, "per": "second"}},
            {"log": {"prefix": prefix, "group": opts.log_group}},
        ]
        cmds.append({"add": {"rule": {**table, "chain": UNKNOWN_CHAIN, "expr": log_expr}}})
    drop = {
        **table,
        "chain": UNKNOWN_CHAIN,
        "expr": [{"counter": UNKNOWN_COUNTER}, {"drop": None}],
        "comment": _comment("new connection of an address in the node's pod ranges no pod has"),
    }
    cmds.append({"add": {"rule": drop}})
    jumps: list[list[dict[str, Any]]] = []
    for v in (4, 6):
        if not unknown.ranges[v]:
            continue
        addr_type = "ipv4_addr" if v == 4 else "ipv6_addr"
        ranges = [_addr_elem(v, lo, hi) for lo, hi in unknown.ranges[v]]
        cmds.append(_set(f"pod-ranges{v}", addr_type, ranges))
        known: dict[str, Any] = {**table, "name": f"pods{v}", "type": addr_type}
        if unknown.known[v]:
            known["elem"] = [str(ip) for ip in sorted(unknown.known[v])]
        cmds.append({"add": {"set": known}})
        for field_name in ("saddr", "daddr"):
            address = _payload(v, field_name)
            jumps.append(
                [
                    _match(address, f"pod-ranges{v}"),
                    {"match": {"op": "!=", "left": address, "right": f"@pods{v}"}},
                    {"jump": {"target": UNKNOWN_CHAIN}},
                ]
            )
    return jumps


def _set(name: str, type_: str | list[str], elements: list[Any]) -> dict[str, Any]:
    """An interval set (disjoint elements, see intervals.py)."""
    return {
        "add": {
            "set": {
                **_in_table(),
                "name": name,
                "type": type_,
                "flags": ["interval"],
                "elem": elements,
            }
        }
    }


_L4PROTO_DPORT = {
    "concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]
}


def _match(key: dict[str, Any], set_name: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": key, "right": f"@{set_name}"}}


def _lookup(key: dict[str, Any], set_name: str, comment: str) -> dict[str, Any]:
    """A rule that returns (allows, for this chain) when ``key`` is in the set."""
    return {"expr": [_match(key, set_name), {"return": None}], "comment": _comment(comment)}


def _shared_set(
    shared: dict[str, dict[str, Any]], prefix: str, type_: str | list[str], elements: list[Any]
) -> str:
    """The name of a set holding ``elements``, added to ``shared`` once whoever needs it."""
    text = json.dumps([type_, elements], separators=(",", ":"))
    name = f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    if name not in shared:
        shared[name] = _set(name, type_, elements)
    return name


def _chain_commands(
    chain: _Chain, opts: RenderOptions, shared: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    table = _in_table()
    peer_field = "saddr" if chain.direction is Direction.INGRESS else "daddr"
    sources = ", ".join(chain.sources) or "nothing"
    cmds: list[dict[str, Any]] = [{"add": {"chain": {**table, "name": chain.name}}}]
    rules: list[dict[str, Any]] = []
    for v in (4, 6):
        addr_type = "ipv4_addr" if v == 4 else "ipv6_addr"
        peer = _payload(v, peer_field)
        if chain.any[v]:
            cmds.append(
                _set(
                    f"{chain.name}-a{v}",
                    addr_type,
                    [_addr_elem(v, lo, hi) for lo, hi in chain.any[v]],
                )
            )
            rules.append(_lookup(peer, f"{chain.name}-a{v}", f"allow all traffic: {sources}"))
        if chain.boxes[v]:
            elements = [
                {"concat": [_addr_elem(v, lo, hi), proto, _port_elem(plo, phi)]}
                for proto, lo, hi, plo, phi in chain.boxes[v]
            ]
            cmds.append(
                _set(f"{chain.name}-p{v}", [addr_type, "inet_proto", "inet_service"], elements)
            )
            key = {"concat": [peer, *_L4PROTO_DPORT["concat"]]}
            rules.append(_lookup(key, f"{chain.name}-p{v}", f"allow ports: {sources}"))
    for pair in chain.pairs:
        ports = _shared_set(
            shared,
            "ports",
            ["inet_proto", "inet_service"],
            [{"concat": [proto, _port_elem(lo, hi)]} for proto, lo, hi in pair.ports],
        )
        for v in (4, 6):
            if pair.addresses[v]:
                addresses = _shared_set(
                    shared,
                    f"addr{v}",
                    "ipv4_addr" if v == 4 else "ipv6_addr",
                    [_addr_elem(v, lo, hi) for lo, hi in pair.addresses[v]],
                )
                rules.append(
                    {
                        "expr": [
                            _match(_payload(v, peer_field), addresses),
                            _match(_L4PROTO_DPORT, ports),
                            {"return": None},
                        ],
                        "comment": _comment(f"allow ports (large rule): {sources}"),
                    }
                )
    if opts.log_group is not None:
        rules.append(
            {
                "expr": [
                    {"limit": {"rate": opts.log_rate_per_second, "per": "second"}},
                    {"log": {"prefix": f"nftpolicy {chain.name} drop ", "group": opts.log_group}},
                ]
            }
        )
    rules.append(
        {
            "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": None}],
            "comment": _comment(f"{chain.direction.lower()} isolated; allowed by: {sources}"),
        }
    )
    for rule in rules:
        cmds.append({"add": {"rule": {**table, "chain": chain.name, **rule}}})
    return cmds
