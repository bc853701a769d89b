"""NodeRules + groups -> one libnftables JSON transaction for table ``inet nftpolicy``.

Layout (see ARCHITECTURE.md):

* base chain ``forward`` (hook forward): ``ct state established,related accept``, then the
  source address of the packet is looked up in the egress verdict maps and the destination in
  the ingress verdict maps; only local isolated pods have entries, so other traffic passes.
* one chain per *distinct* allowance (pods with identical allowances, e.g. the replicas of a
  Deployment, share it). Its rules are at most four set lookups (address-only and
  ``address . l4proto . port`` interval sets, IPv4 and IPv6) that ``return`` on a match, then a
  rate-limited NFLOG and a counted drop. The cost per packet therefore does not grow with the
  number of policies or peers.
* traffic between a node and its own pods never reaches the forward hook, so it is allowed.

Strings from the cluster (names, labels) only ever appear as JSON string values (comments and
log prefixes), never in nft syntax.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from controller.agent.intervals import Box, Interval, merge_boxes, merge_intervals
from controller.compiler.ir import AddressGroup, Group, LocalPod, NodeRules, PortGroup, Rule
from controller.model import Direction, Protocol
from controller.model.config import DNS_PORT

TABLE = "nftpolicy"
FAMILY = "inet"
FORWARD_PRIORITY = -5  # before the filter priority (0) where kube-proxy and others sit
COMMENT_MAX = 127
FULL = {4: (0, 2**32 - 1), 6: (0, 2**128 - 1)}
FAMILY_OF_VERSION = {4: "ip", 6: "ip6"}
SHORT = {Direction.INGRESS: "in", Direction.EGRESS: "out"}


@dataclass(frozen=True)
class RenderOptions:
    log_group: int | None = 100  # NFLOG group for dropped packets; None disables logging
    log_rate_per_second: int = 10
    priority: int = FORWARD_PRIORITY


class MissingGroupError(LookupError):
    """NodeRules refer to a group the renderer was not given."""


@dataclass
class _Allowance:
    """What one pod allows in one direction, before merging."""

    any: dict[int, list[Interval]] = field(default_factory=lambda: {4: [], 6: []})
    boxes: dict[int, list[Box]] = field(default_factory=lambda: {4: [], 6: []})
    sources: set[str] = field(default_factory=set)  # policies / allowances that contributed


@dataclass(frozen=True)
class _Chain:
    name: str
    direction: Direction
    any: dict[int, list[Interval]]
    boxes: dict[int, list[Box]]
    sources: tuple[str, ...]


def render(
    rules: NodeRules, groups: dict[str, Group], options: RenderOptions | None = None
) -> dict[str, Any]:
    """The full ruleset for one node, as a libnftables JSON document (atomic replace)."""
    opts = options or RenderOptions()
    missing = rules.groups() - set(groups)
    if missing:
        raise MissingGroupError(f"node {rules.node}: unknown group(s) {', '.join(sorted(missing))}")
    cache = _GroupCache(groups)
    chains: dict[str, _Chain] = {}
    vmaps: dict[tuple[Direction, int], list[tuple[str, str, str]]] = defaultdict(list)
    by_pod: dict[str, list[tuple[str, Rule, Direction]]] = defaultdict(list)
    isolated: dict[str, set[Direction]] = defaultdict(set)
    for policy in rules.policies:
        for pod_key in policy.applied_to:
            isolated[pod_key] |= policy.isolates
            for d in policy.isolates:
                by_pod[pod_key].extend((policy.key, r, d) for r in policy.rules(d))
    for pod in rules.pods:
        for direction in (Direction.EGRESS, Direction.INGRESS):
            if direction not in isolated[pod.key] and direction not in pod.default_deny:
                continue
            allowance = _allowance(pod, direction, by_pod[pod.key], rules.allow_dns, cache)
            chain = _chain(direction, allowance)
            chains.setdefault(chain.name, chain)
            for ip in pod.ips:
                vmaps[(direction, ip.version)].append((str(ip), chain.name, pod.key))
    return {"nftables": _commands(chains, vmaps, opts)}


class _GroupCache:
    """Per-render cache of group contents as merged integer intervals, by family."""

    def __init__(self, groups: dict[str, Group]) -> None:
        self._groups = groups
        self._intervals: dict[str, dict[int, list[Interval]]] = {}

    def intervals(self, name: str) -> dict[int, list[Interval]]:
        cached = self._intervals.get(name)
        if cached is None:
            group = self._groups[name]
            assert isinstance(group, AddressGroup)
            raw: dict[int, list[Interval]] = {4: [], 6: []}
            for ip in group.addresses:
                raw[ip.version].append((int(ip), int(ip)))
            for lo, hi in group.ranges:
                raw[lo.version].append((int(lo), int(hi)))
            cached = self._intervals[name] = {v: merge_intervals(iv) for v, iv in raw.items()}
        return cached

    def port_group(self, name: str) -> PortGroup:
        group = self._groups[name]
        assert isinstance(group, PortGroup)
        return group


def _allowance(
    pod: LocalPod,
    direction: Direction,
    rules: list[tuple[str, Rule, Direction]],
    allow_dns: bool,
    cache: _GroupCache,
) -> _Allowance:
    out = _Allowance()
    for policy_key, rule, d in rules:
        if d is not direction:
            continue
        before = (sum(map(len, out.any.values())), sum(map(len, out.boxes.values())))
        peers: dict[int, list[Interval]] = {4: [], 6: []}
        if rule.peers is None:
            peers = {v: [FULL[v]] for v in (4, 6)}
        else:
            for name in rule.peers:
                for v, ivs in cache.intervals(name).items():
                    peers[v].extend(ivs)
        if rule.ports is None:
            for v in (4, 6):
                out.any[v].extend(peers[v])
        else:
            ports = [(p.protocol.number, p.first, p.last) for p in rule.ports]
            for name, protocol in rule.named_ports:  # ingress: resolve on this pod
                number = pod.named_port(name, protocol)
                if number is not None:
                    ports.append((protocol.number, number, number))
            for v in (4, 6):
                out.boxes[v].extend(
                    (proto, lo, hi, plo, phi) for proto, plo, phi in ports for lo, hi in peers[v]
                )
        for name in rule.port_groups:  # egress: resolved on each destination pod
            group = cache.port_group(name)
            for ip, number in group.members:
                out.boxes[ip.version].append(
                    (group.protocol.number, int(ip), int(ip), number, number)
                )
        if (sum(map(len, out.any.values())), sum(map(len, out.boxes.values()))) != before:
            out.sources.add(policy_key)
    if direction is Direction.EGRESS and direction in pod.default_deny and allow_dns:
        for v in (4, 6):
            lo, hi = FULL[v]
            for proto in (Protocol.UDP, Protocol.TCP):
                out.boxes[v].append((proto.number, lo, hi, DNS_PORT, DNS_PORT))
        out.sources.add("default-deny DNS")
    return out


def _chain(direction: Direction, allowance: _Allowance) -> _Chain:
    any_ = {v: merge_intervals(allowance.any[v]) for v in (4, 6)}
    boxes = {v: merge_boxes(allowance.boxes[v]) for v in (4, 6)}
    digest = hashlib.sha256(
        json.dumps([str(direction), any_, boxes], separators=(",", ":")).encode()
    ).hexdigest()[:16]
    return _Chain(
        f"{SHORT[direction]}-{digest}", direction, any_, boxes, tuple(sorted(allowance.sources))
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


def _comment(text: str) -> str:
    encoded = text.encode()
    if len(encoded) <= COMMENT_MAX:
        return text
    return encoded[: COMMENT_MAX - 3].decode(errors="ignore") + "..."


def _commands(
    chains: dict[str, _Chain],
    vmaps: dict[tuple[Direction, int], list[tuple[str, str, str]]],
    opts: RenderOptions,
) -> list[dict[str, Any]]:
    table = _in_table()
    cmds: list[dict[str, Any]] = [
        # add + delete + add in one transaction: an atomic replace, whether or not it existed.
        {"add": {"table": _table()}},
        {"delete": {"table": _table()}},
        {"add": {"table": _table()}},
    ]
    for chain in sorted(chains.values(), key=lambda c: c.name):
        cmds.extend(_chain_commands(chain, opts))
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
    base_rules: list[list[dict[str, Any]]] = [
        [
            {
                "match": {
                    "op": "in",
                    "left": {"ct": {"key": "state"}},
                    "right": ["established", "related"],
                }
            },
            {"accept": None},
        ]
    ]
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
    for expr in base_rules:
        cmds.append({"add": {"rule": {**table, "chain": "forward", "expr": expr}}})
    return cmds


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


def _lookup(key: dict[str, Any], set_name: str, comment: str) -> dict[str, Any]:
    """A rule that returns (allows, for this chain) when ``key`` is in the set."""
    return {
        "expr": [{"match": {"op": "==", "left": key, "right": f"@{set_name}"}}, {"return": None}],
        "comment": _comment(comment),
    }


def _chain_commands(chain: _Chain, opts: RenderOptions) -> list[dict[str, Any]]:
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
            key = {
                "concat": [
                    peer,
                    {"meta": {"key": "l4proto"}},
                    {"payload": {"protocol": "th", "field": "dport"}},
                ]
            }
            rules.append(_lookup(key, f"{chain.name}-p{v}", f"allow ports: {sources}"))
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
