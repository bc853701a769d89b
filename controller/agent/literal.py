"""Find host names where a libnftables JSON ruleset needs an IP address.

libnftables parses an address it is given as text with ``getaddrinfo``: a name in an address
position is looked up (``/etc/hosts``, then DNS from the node's network) and the answer is
enforced. The agent must never do that: its input comes from custom resources, a lookup is a
packet it did not mean to send, and a rule whose meaning depends on a resolver's answer is not
the rule the operator compiled. libnftables >= 1.0.7 has an input flag that turns the lookup
off (kernel.py sets it when the library has it); the Debian bookworm library (1.0.6) in the
image does not, so every ruleset is checked here before libnftables sees it.

An address position is what libnftables parses with its IP address types: elements of sets
and maps (and the matching parts of concatenated elements) whose type is ``ipv4_addr`` or
``ipv6_addr``, and the right-hand side of a match on an IPv4 or IPv6 address (``ip saddr``,
``ip6 daddr``, ``ct ... saddr``), including prefixes, ranges and anonymous sets. Set
references (``@name``) are names of our own sets, not hosts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from typing import Any

ADDRESS_TYPES = frozenset({"ipv4_addr", "ipv6_addr"})
_ADDRESS_FIELDS = frozenset({"saddr", "daddr"})
_ADDRESS_PROTOCOLS = frozenset({"ip", "ip6"})


def host_names(ruleset: Mapping[str, Any]) -> list[str]:
    """Every value in an address position that is not a numeric address, prefix or set
    reference (``[]`` when the ruleset is all literal)."""
    declared: dict[tuple[str, str, str], list[str]] = {}  # (family, table, set) -> key types
    found: list[str] = []
    for command in ruleset.get("nftables", ()):
        for verb, body in command.items():
            if not isinstance(body, Mapping) or verb not in ("add", "create", "insert", "replace"):
                continue
            for kind, spec in body.items():
                if not isinstance(spec, Mapping):
                    continue
                if kind in ("set", "map"):
                    types = _types(spec.get("type"))
                    key = (str(spec.get("family")), str(spec.get("table")), str(spec.get("name")))
                    declared[key] = types
                    found.extend(_in_elements(spec.get("elem", ()), types))
                elif kind == "element":
                    key = (str(spec.get("family")), str(spec.get("table")), str(spec.get("name")))
                    # A set this ruleset does not declare: every part must be an address.
                    found.extend(_in_elements(spec.get("elem", ()), declared.get(key, [])))
                elif kind == "rule":
                    found.extend(_in_matches(spec.get("expr", ())))
    return found


def _types(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def _in_elements(elements: Any, types: list[str]) -> Iterator[str]:
    """The names in the keys of set or map elements; ``types`` empty: of unknown type, every
    part of every key must be an address."""
    for element in elements if isinstance(elements, list) else ():
        if isinstance(element, list) and element:  # a map's [key, value]
            element = element[0]
        if isinstance(element, Mapping) and "elem" in element:
            element = element["elem"].get("val") if isinstance(element["elem"], Mapping) else None
        parts = element["concat"] if isinstance(element, Mapping) and "concat" in element else None
        if parts is None:
            parts = [element]
        for i, part in enumerate(parts if isinstance(parts, list) else [parts]):
            if not types or (i < len(types) and types[i] in ADDRESS_TYPES):
                yield from _not_literal(part)


def _in_matches(value: Any) -> Iterator[str]:
    if isinstance(value, list):
        for item in value:
            yield from _in_matches(item)
    elif isinstance(value, Mapping):
        match = value.get("match")
        if isinstance(match, Mapping) and _is_address(match.get("left")):
            yield from _not_literal(match.get("right"))
        for item in value.values():
            yield from _in_matches(item)


def _is_address(left: Any) -> bool:
    if not isinstance(left, Mapping):
        return False
    payload = left.get("payload")
    if isinstance(payload, Mapping):
        return (
            payload.get("protocol") in _ADDRESS_PROTOCOLS
            and payload.get("field") in _ADDRESS_FIELDS
        )
    ct = left.get("ct")
    if isinstance(ct, Mapping):
        return str(ct.get("key", "")).split(" ")[-1] in _ADDRESS_FIELDS
    return False


def _not_literal(value: Any) -> Iterator[str]:
    """The names in one address value (numbers pass: libnftables takes them as addresses)."""
    if isinstance(value, str):
        if not value.startswith("@") and not _is_numeric(value):
            yield value
    elif isinstance(value, list):
        for item in value:
            yield from _not_literal(item)
    elif isinstance(value, Mapping):
        if "prefix" in value and isinstance(value["prefix"], Mapping):
            yield from _not_literal(value["prefix"].get("addr"))
        for key in ("range", "set", "concat"):
            if key in value:
                yield from _not_literal(value[key])
        if "elem" in value and isinstance(value["elem"], Mapping):
            yield from _not_literal(value["elem"].get("val"))


def _is_numeric(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True
