"""Hostile input over all four kinds: never a crash or a hang; each object is either refused
with a message naming it and the field, or compiled to exactly what ``semantics.py`` says.

Objects start as the random, valid clusters of ``tests/cluster_strategies.py`` (plus their
Nodes) and are then mutated the way a careless or hostile author would: values replaced by
wrong types, odd strings, huge or negative numbers and deep nesting; unknown, misspelt or
missing keys; and addresses respelt in the legacy forms the API server accepts. What parses is
compiled and rendered, and ``test_pipeline_property``'s differential check compares every
verdict with the reference evaluator. A separate property checks that legacy respellings keep
their meaning exactly.
"""

from __future__ import annotations

import contextlib
import copy
import io
import ipaddress
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.cli import main
from controller.model import ParseError, parse_object
from controller.model.meta import describe
from tests.cluster_strategies import NODES, GeneratedCluster, clusters
from tests.unit.test_pipeline_property import assert_rendered_rules_equal_semantics

Json = dict[str, Any]

# ---- what a hostile author writes -------------------------------------------------------------

FIELD_NAMES = (
    "form", "Ports", "podselector", "hostnetwork", "excepts", "matchlabels", "ip", "name",
    "ports", "from", "to", "cidr", "except", "hostNetwork", "containerPort", "labels",
    "podSelector", "restartPolicy", "initContainers", "nodeName", "podIPs", "phase",
)  # fmt: skip
ODD_STRINGS = (
    "", " ", "a\n", "\ud800", "x" * 300, "UPPER", "-", "http", "a--b", "Always", "Ingress",
    "Egress", "TCP", "udp", "In", "NotIn", "true", "0", "é", "a/b/c", "\x00", "default",
    "010.244.001.010", "::ffff:10.244.1.10", "10.244.1.10/08", "::ffff:10.244.0.0/112",
    "10.0.0.0/255.0.0.0", "fe80::1%eth0", "fd00:244:1::/48", "0.0.0.0/0", "10.244.1.0/24",
)  # fmt: skip
NUMBERS = (0, -1, 1, 53, 80, 65535, 65536, 2**31, 2**63, -(2**63) - 1, 10**400)


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value] if depth % 2 else {"a": value}
    return value


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(NUMBERS),
    st.integers(),
    st.floats(),
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=12),
)
hostile_values = st.one_of(
    st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    st.integers(60, 300).map(nested),
)


def slots(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in ``doc``, iteratively (docs may be deep)."""
    out: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            out.append((node, key))
            if isinstance(value, dict | list):
                stack.append(value)
    return out


# ---- legacy respellings, written independently of controller/model/ipaddr.py -------------------


def legacy_v4(address: str, draw: st.DrawFn) -> str:
    return ".".join("0" * draw(st.integers(0, 3)) + octet for octet in address.split("."))


def legacy_address(text: str, draw: st.DrawFn) -> str:
    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        if draw(st.booleans()):
            return "::ffff:" + legacy_v4(text, draw)
        return legacy_v4(text, draw)
    groups = ip.exploded.split(":")
    return ":".join("0" * draw(st.integers(0, 2)) + g.upper() for g in groups)


def legacy_cidr(text: str, draw: st.DrawFn, mapped: bool) -> str:
    """The same network, spelt with leading zeros, host bits set, and (IPv4, if ``mapped``)
    as IPv4-mapped IPv6 with the prefix length plus 96."""
    network = ipaddress.ip_network(text)
    host = network.network_address + draw(st.integers(0, network.num_addresses - 1))
    length = network.prefixlen + (96 if mapped and network.version == 4 else 0)
    if network.version == 4:
        address = ("::ffff:" if mapped else "") + legacy_v4(str(host), draw)
    else:
        address = legacy_address(str(host), draw)
    return f"{address}/{'0' * draw(st.integers(0, 2))}{length}"


def respell(draw: st.DrawFn, raw: Json) -> None:
    """Respell every address of ``raw`` in legacy forms with the same meaning. An ipBlock is
    mapped whole or not at all, since the API server compares the written prefix lengths."""
    if raw["kind"] == "Pod":
        for entry in raw["status"].get("podIPs", ()):
            entry["ip"] = legacy_address(entry["ip"], draw)
        raw["status"].pop("podIP", None)
    elif raw["kind"] == "Node":
        raw["spec"]["podCIDRs"] = [legacy_cidr(c, draw, False) for c in raw["spec"]["podCIDRs"]]
    elif raw["kind"] == "NetworkPolicy":
        for container, key in slots(raw):
            block = container[key]
            if key == "ipBlock":
                mapped = draw(st.booleans())
                block["cidr"] = legacy_cidr(block["cidr"], draw, mapped)
                block["except"] = [
                    legacy_cidr(e, draw, mapped or draw(st.booleans()))
                    for e in block.get("except", ())
                ]


# ---- clusters -----------------------------------------------------------------------------------


def with_nodes(cluster: GeneratedCluster) -> list[Json]:
    nodes = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name},
            "spec": {"podCIDRs": [f"10.244.{i + 1}.0/24", f"fd00:244:{i + 1}::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": f"172.30.0.{i + 1}"}]},
        }
        for i, name in enumerate(NODES)
    ]
    return nodes + copy.deepcopy(cluster.objects)


def mutate(draw: st.DrawFn, raw: Json) -> None:
    container, key = draw(st.sampled_from(slots(raw)))
    how = draw(st.sampled_from(["replace", "add", "delete", "respell-key"]))
    if how == "replace":
        container[key] = draw(hostile_values)
    elif how == "add":
        target = container[key] if isinstance(container[key], dict) else raw
        target[draw(st.sampled_from(FIELD_NAMES))] = draw(hostile_values)
    elif how == "delete":
        del container[key]
    elif how == "respell-key" and isinstance(key, str):
        container[key.upper() if key.islower() else key.lower()] = container.pop(key)


@st.composite
def hostile_clusters(draw: st.DrawFn) -> GeneratedCluster:
    cluster = draw(clusters(max_pods=4, max_policies=3))
    objects = with_nodes(cluster)
    for raw in objects:
        if draw(st.integers(0, 3)) == 0:
            respell(draw, raw)
    for _ in range(draw(st.integers(1, 4))):
        mutate(draw, draw(st.sampled_from(objects)))
    return GeneratedCluster(objects, cluster.default_deny)


def parse_both(raw: Json) -> Any:
    """Strict (CLI) and lenient (operator) parses: each succeeds or names object and field; a
    strict success implies the same lenient one. Returns the lenient result or None."""
    results: list[Any] = []
    for strict in (True, False):
        try:
            results.append(parse_object(raw, strict=strict))
        except ParseError as e:
            assert e.obj == describe(raw) and e.field, str(e)
            assert "\n" not in str(e), str(e)
            results.append(None)
    if results[0] is not None:
        assert results[1] == results[0]
    return results[1]


def run_cli(objects: list[Json]) -> tuple[int, str]:
    """``nftpolicy compile`` on the objects as one JSON file: (exit code, stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cluster.json"
        path.write_text(json.dumps({"kind": "List", "items": objects}))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["compile", "-f", str(path), "--node", NODES[0], "--no-log"])
    return code, err.getvalue()


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(hostile_clusters())
def test_hostile_clusters_are_refused_or_compile_to_the_semantics(
    cluster: GeneratedCluster,
) -> None:
    kept = [raw for raw in cluster.objects if parse_both(raw) is not None]
    assert_rendered_rules_equal_semantics(GeneratedCluster(kept, cluster.default_deny))
    try:
        json.dumps(cluster.objects)
    except ValueError:
        return  # an integer JSON cannot hold as text; no file can contain it
    code, err = run_cli(cluster.objects)
    errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert code in (0, 2) and len(errors) == (code == 2), err
    if len(kept) < len(cluster.objects):
        assert code == 2 and errors[0].startswith("error: "), err


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_clusters().flatmap(lambda c: st.sampled_from(c.objects)))
def test_hostile_objects_are_refused_with_object_and_field(raw: Json) -> None:
    parse_both(raw)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_legacy_spellings_keep_their_meaning(data: st.DataObject) -> None:
    cluster = data.draw(clusters(max_pods=4, max_policies=3))
    for raw in with_nodes(cluster):
        respelt = copy.deepcopy(raw)
        respell(data.draw, respelt)
        assert parse_object(respelt, strict=True) == parse_object(raw, strict=True), respelt
