"""``literal.host_names``: the values libnftables would resolve as host names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.agent.literal import host_names
from controller.agent.render import render
from controller.compiler import compile_objects, groups_for
from controller.manifests import load_objects
from controller.model.config import DefaultDeny
from controller.model.direction import parse_direction_set

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
T = {"family": "inet", "table": "nftpolicy"}


def _set(type_: str | list[str], elem: list[Any], kind: str = "set") -> dict[str, Any]:
    return {"nftables": [{"add": {kind: {**T, "name": "s", "type": type_, "elem": elem}}}]}


def _rule(left: dict[str, Any], right: Any) -> dict[str, Any]:
    match = {"match": {"op": "==", "left": left, "right": right}}
    return {"nftables": [{"add": {"rule": {**T, "chain": "c", "expr": [match, {"accept": None}]}}}]}


SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}
DADDR6 = {"payload": {"protocol": "ip6", "field": "daddr"}}


def test_the_rendered_examples_are_all_literal() -> None:
    objects = load_objects([str(EXAMPLES)], lambda _: None)
    compiler = compile_objects(objects, DefaultDeny(directions=parse_direction_set("all", "", "")))
    for node in compiler.node_names():
        rules = compiler.node_rules(node)
        assert host_names(render(rules, groups_for(compiler, rules))) == []


@pytest.mark.parametrize(
    ("ruleset", "names"),
    [
        (_set("ipv4_addr", ["10.0.0.1", "example.com"]), ["example.com"]),
        (_set("ipv4_addr", [{"prefix": {"addr": "gw.local", "len": 24}}]), ["gw.local"]),
        (_set("ipv6_addr", [{"range": ["::1", "localhost"]}]), ["localhost"]),
        (_set("ipv4_addr", [{"elem": {"val": "db", "comment": "x"}}]), ["db"]),
        (
            _set(["ipv4_addr", "inet_proto", "inet_service"], [{"concat": ["h", "tcp", "http"]}]),
            ["h"],
        ),
        (_set("ipv4_addr", [[{"elem": {"val": "h"}}, {"jump": {"target": "c"}}]], "map"), ["h"]),
        (_set("inet_service", ["http", 80]), []),  # services are names in /etc/services
        (_set("ipv4_addr", ["10.0.0.0/8", 167772161]), []),
        (_rule(SADDR, "localhost"), ["localhost"]),
        (_rule(DADDR6, {"set": ["::1", {"prefix": {"addr": "h6", "len": 64}}]}), ["h6"]),
        (_rule({"ct": {"key": "ip saddr", "dir": "original"}}, "h"), ["h"]),
        (_rule(SADDR, "@ag-0123"), []),
        (_rule({"meta": {"key": "l4proto"}}, "tcp"), []),
        (
            {"nftables": [{"add": {"element": {**T, "name": "undeclared", "elem": ["h"]}}}]},
            ["h"],
        ),
    ],
)
def test_names_in_address_positions(ruleset: dict[str, Any], names: list[str]) -> None:
    assert host_names(ruleset) == names
