"""Evaluate a *new* connection against a rendered ruleset, in Python.

It walks one node's ``forward`` chain the way nf_tables does (verdict-map jump, set lookups,
return/drop/accept, base policy). The agent uses it to find established flows that a new
ruleset no longer allows (to remove them from conntrack), and property tests use it to check
compile + render against the reference semantics on thousands of clusters per second; the
integration tests check that the kernel agrees. It knows only the subset of the JSON schema
the renderer emits and raises on anything else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Packet = tuple[IPAddress, IPAddress, int, int]  # src, dst, l4proto, dport


class Ruleset:
    def __init__(self, document: Mapping[str, Any]) -> None:
        self.sets: dict[str, list[Any]] = {}
        self.maps: dict[str, dict[str, str]] = {}
        self.chains: dict[str, list[list[dict[str, Any]]]] = {}
        for command in document["nftables"]:
            ((verb, obj),) = command.items()
            if verb == "delete":
                self.sets.clear()
                self.maps.clear()
                self.chains.clear()
                continue
            ((kind, spec),) = obj.items()
            if kind == "chain":
                self.chains.setdefault(spec["name"], [])
            elif kind == "set":
                self.sets[spec["name"]] = list(spec.get("elem", ()))
            elif kind == "map":
                self.maps[spec["name"]] = {
                    _elem_value(k): v["jump"]["target"] for k, v in spec.get("elem", ())
                }
            elif kind == "rule":
                self.chains[spec["chain"]].append(spec["expr"])

    def forward(self, packet: Packet) -> bool:
        """Accepted by the forward chain (policy accept)?"""
        verdict = self._run("forward", packet)
        return verdict != "drop"

    def _run(self, chain: str, packet: Packet) -> str | None:
        for expr in self.chains[chain]:
            verdict = self._rule(expr, packet)
            if verdict in ("accept", "drop"):
                return verdict
            if verdict == "return":
                return None
        return None

    def _rule(self, expr: list[dict[str, Any]], packet: Packet) -> str | None:
        for stmt in expr:
            ((key, body),) = stmt.items()
            if key == "match":
                if not self._match(body, packet):
                    return None
            elif key == "vmap":
                value = _field(body["key"], packet)
                if value is None:
                    return None
                target = self.maps[body["data"].lstrip("@")].get(str(value))
                if target is None:
                    return None
                verdict = self._run(target, packet)
                if verdict is not None:
                    return verdict
                return "continue"
            elif key == "jump":
                verdict = self._run(body["target"], packet)
                return "continue" if verdict is None else verdict
            elif key in ("accept", "drop", "return"):
                return key
            elif key in ("counter", "limit", "log", "mangle"):  # mangle: the epoch stamp
                continue
            else:
                raise ValueError(f"unsupported statement {key}")
        return None

    def _match(self, body: dict[str, Any], packet: Packet) -> bool:
        left = body["left"]
        if left == {"ct": {"key": "state"}}:
            return False  # every connection we evaluate is new
        right = body["right"]
        assert body["op"] in ("==", "!=") and isinstance(right, str) and right.startswith("@")
        elements = self.sets[right[1:]]
        if "concat" in left:
            values = [_field(part, packet) for part in left["concat"]]
            if any(v is None for v in values):
                return False
            return any(_in_concat(e, values) for e in elements)
        value = _field(left, packet)
        if value is None:  # another IP version: the rule does not match either way
            return False
        return any(_in(e, value) for e in elements) is (body["op"] == "==")


def _field(expr: dict[str, Any], packet: Packet) -> Any:
    src, dst, proto, dport = packet
    if "payload" in expr:
        p = expr["payload"]
        if p["protocol"] == "th":
            return dport
        version = 4 if p["protocol"] == "ip" else 6
        addr = src if p["field"] == "saddr" else dst
        return addr if addr.version == version else None
    if expr == {"meta": {"key": "l4proto"}}:
        return proto
    raise ValueError(f"unsupported expression {expr}")


def _elem_value(elem: Any) -> str:
    if isinstance(elem, dict) and "elem" in elem:
        return str(elem["elem"]["val"])
    return str(elem)


def _in(elem: Any, value: Any) -> bool:
    if isinstance(elem, dict) and "range" in elem:
        lo, hi = elem["range"]
        return _num(lo) <= _num(value) <= _num(hi)
    return _num(elem) == _num(value)


def _in_concat(elem: Any, values: list[Any]) -> bool:
    return all(_in(e, v) for e, v in zip(elem["concat"], values, strict=True))


def _num(v: Any) -> int:
    if isinstance(v, int):
        return v
    if isinstance(v, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return int(v)
    return int(ipaddress.ip_address(v))


def cluster_allows(
    rulesets: Mapping[str, Ruleset],
    node_of_ip: Mapping[IPAddress, str],
    packet: Packet,
) -> bool:
    """A connection crosses the forward hook of the source pod's node and of the destination
    pod's node (once if they are the same node); other addresses are not on any node here."""
    src, dst, _, _ = packet
    nodes = {n for n in (node_of_ip.get(src), node_of_ip.get(dst)) if n is not None}
    return all(rulesets[n].forward(packet) for n in nodes if n in rulesets)
