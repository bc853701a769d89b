"""Bounded cost per object: the largest policies the API server accepts compile, publish and
render to outputs linear in their size, and a policy over a limit fails closed, exactly as
``semantics.py`` says (issue 7, items 1, 5 and 10)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from controller.agent import render as render_module
from controller.agent.render import RenderOptions, render
from controller.agent.verdict import Ruleset, cluster_allows
from controller.agent.view import AgentView
from controller.compiler import compile_objects, groups_for
from controller.compiler.ir import AddressGroup
from controller.model import ApiObject, NetworkPolicy, Pod, Protocol, limits, parse_object
from controller.model.pod import IPAddress
from controller.resources import group_body, group_from_body
from controller.semantics import Snapshot, evaluate
from tests.cluster_strategies import GeneratedCluster, clusters
from tests.unit import test_pipeline_property

ETCD_LIMIT = 1536 * 1024


def v4_hosts(n: int, base: str = "10.128.0.0") -> list[str]:
    start = int(ipaddress.IPv4Address(base))
    return [f"{ipaddress.IPv4Address(start + 2 * i)}/32" for i in range(n)]


def v6_hosts(n: int) -> list[str]:
    start = int(ipaddress.IPv6Address("2001:db8:ffff:ffff:ffff:ffff:ffff:0"))
    return [f"{ipaddress.IPv6Address(start - (i << 20))}/128" for i in range(n)]


def pod(name: str, ip: str, node: str = "n1", **labels: str) -> Pod:
    obj = parse_object(
        {
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "x", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip},
        }
    )
    assert isinstance(obj, Pod)
    return obj


def policy(name: str, ingress: list[dict[str, Any]], **spec: Any) -> NetworkPolicy:
    obj = parse_object(
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "ingress": ingress, **spec},
        }
    )
    assert isinstance(obj, NetworkPolicy)
    return obj


def tcp_ports(numbers: Iterator[int] | range) -> list[dict[str, Any]]:
    return [{"port": n} for n in numbers]


Packet = tuple[str, str, int]  # source, destination, TCP port


def rendered(objects: list[ApiObject]) -> dict[str, Any]:
    compiler = compile_objects(objects)
    rules = compiler.node_rules("n1")
    return render(rules, groups_for(compiler, rules), RenderOptions(log_group=None))


def assert_verdicts_equal_semantics(objects: list[ApiObject], packets: list[Packet]) -> None:
    ruleset = Ruleset(rendered(objects))
    snap = Snapshot.of(objects)
    node_of_ip: dict[IPAddress, str] = {
        ip: o.node for o in objects if isinstance(o, Pod) and o.node for ip in o.addresses
    }
    for src, dst, port in packets:
        want = evaluate(snap, src, dst, Protocol.TCP, port).allowed
        packet = (ipaddress.ip_address(src), ipaddress.ip_address(dst), 6, port)
        got = cluster_allows({"n1": ruleset}, node_of_ip, packet)
        assert got == want, f"{src} -> {dst}:{port}: rendered {got}, semantics {want}"


def set_elements(ruleset: dict[str, Any]) -> int:
    return sum(
        len(c["add"]["set"].get("elem", ()))
        for c in ruleset["nftables"]
        if "set" in c.get("add", {})
    )


# ---- item 1: ipBlock groups carry blocks, compile in n log n ---------------------------------


def test_a_30k_except_policy_compiles_to_one_group_of_blocks() -> None:
    """Old code: ``block_ranges`` is quadratic (156 s for 30k excepts, killed here)."""
    excepts = v4_hosts(30_000)
    p = policy("big", [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": excepts}}]}])
    compiler = compile_objects([p, pod("s", "10.0.0.10", app="server")])
    (name,) = compiler.group_names()
    group = compiler.group(name)
    assert isinstance(group, AddressGroup)
    assert [str(e) for e in group.blocks[0].excepts] == excepts
    assert compiler.policy_problems() == {}


def test_a_19k_except_ipv6_group_fits_in_etcd_and_round_trips() -> None:
    """Old code: the ranges of this group make a 1.6 MB object, which etcd refuses."""
    excepts = v6_hosts(19_000)
    p = policy("v6", [{"from": [{"ipBlock": {"cidr": "2001:db8::/32", "except": excepts}}]}])
    compiler = compile_objects([p])
    (name,) = compiler.group_names()
    group = compiler.group(name)
    assert group is not None
    body = group_body(group, ["n1"])
    assert len(json.dumps(body)) < ETCD_LIMIT * 0.75
    again = group_from_body(body)
    assert isinstance(again, AddressGroup) and again == group
    holes = again.intervals()[6]
    assert len(holes) == 19_001  # the cidr split around every excepted address


def test_40k_host_peers_make_one_group() -> None:
    """Old code: one AddressGroup per /32 peer (40,000 objects to publish)."""
    peers = [{"ipBlock": {"cidr": c}} for c in v4_hosts(40_000)]
    compiler = compile_objects([policy("hosts", [{"from": peers}])])
    assert len(compiler.group_names()) == 1
    group = compiler.group(compiler.group_names()[0])
    assert isinstance(group, AddressGroup) and len(group.blocks) == 40_000
    assert len(json.dumps(group_body(group, ["n1"]))) < ETCD_LIMIT * 0.75
    assert len(str(group.peer)) < 300  # the printer column stays readable


def test_equal_block_sets_share_a_group_however_written() -> None:
    a = policy(
        "a",
        [
            {
                "from": [
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.2.0.0/16", "10.1.0.0/16"]}},
                    {"ipBlock": {"cidr": "192.0.2.0/24"}},
                ]
            }
        ],
    )
    b = policy(
        "b",
        [
            {
                "from": [
                    {"ipBlock": {"cidr": "192.0.2.0/24"}},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.0.0/16"]}},
                    {"ipBlock": {"cidr": "192.0.2.0/24"}},
                ]
            }
        ],
    )
    c = policy("c", [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}])
    assert len(compile_objects([a, b]).group_names()) == 1
    assert len(compile_objects([a, c]).group_names()) == 2


def test_egress_named_port_over_a_large_block_set_resolves_by_membership() -> None:
    """Port groups over ipBlocks test each pod against the blocks (bisect, not a scan)."""
    spec = {
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": v4_hosts(5_000, "10.0.1.0")}}],
                "ports": [{"port": "http"}],
            }
        ],
    }
    objects: list[ApiObject] = [policy("named", [], **spec)]
    for i, ip in enumerate(["10.0.1.0", "10.0.1.1", "10.0.1.2", "11.0.0.1"]):
        obj = parse_object(
            {
                "kind": "Pod",
                "metadata": {"name": f"d{i}", "namespace": "x", "labels": {"app": "server"}},
                "spec": {
                    "nodeName": "n1",
                    "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}],
                },
                "status": {"phase": "Running", "podIP": ip},
            }
        )
        objects.append(obj)
    compiler = compile_objects(objects)
    (port_group,) = [compiler.group(n) for n in compiler.group_names() if n.startswith("pg-")]
    assert port_group is not None and not isinstance(port_group, AddressGroup)
    assert {str(ip) for ip, _ in port_group.members} == {"10.0.1.1"}  # .0 and .2 excepted


# ---- item 5: the renderer's cross product is bounded -----------------------------------------


def test_peers_times_ports_over_the_threshold_renders_linearly_and_exactly() -> None:
    """Old code: 200 excepts x 200 ports = 80,000 set elements (10^6 for 1,000 x 1,000)."""
    excepts = v4_hosts(200, "10.1.0.0")
    rule = {
        "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": excepts}}],
        "ports": tcp_ports(range(1000, 1400, 2)),
    }
    server = pod("s", "10.9.0.1", app="server")
    clients = [pod("c1", "10.1.0.0"), pod("c2", "10.1.0.1"), pod("c3", "10.200.0.1", node="n2")]
    objects: list[ApiObject] = [policy("cross", [rule]), server, *clients]
    ruleset = rendered(objects)
    assert set_elements(ruleset) <= 2 * 201 + 200 + 10  # address intervals + ports, not product
    packets = [
        (c, "10.9.0.1", port)
        for c in ("10.1.0.0", "10.1.0.1", "10.200.0.1", "192.0.2.1")
        for port in (1000, 1001, 1398, 1399, 80)
    ]
    assert_verdicts_equal_semantics(objects, packets)


def test_pathological_overlaps_fall_back_to_separate_lookups() -> None:
    """Past the merge budget (made tiny here) every ported rule of the allowance is rendered
    as a separate lookup pair, still exact."""
    rules = [
        {
            "from": [{"ipBlock": {"cidr": f"10.{i}.0.0/16"}}],
            "ports": tcp_ports(iter([2000 + i, 3000 + i])),
        }
        for i in range(60)
    ]
    rules.append({"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 9}]})
    objects: list[ApiObject] = [policy("nested", rules), pod("s", "10.100.0.1", app="server")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(render_module, "MERGE_WORK_BASE", 10)
        mp.setattr(render_module, "MERGE_WORK_PER_BOX", 0)
        packets = [
            (c, "10.100.0.1", p)
            for c in ("10.3.0.1", "10.200.1.1", "192.0.2.1")
            for p in (2003, 3003, 2004, 9)
        ]
        assert_verdicts_equal_semantics(objects, packets)
        shapes = [
            len(r["add"]["rule"]["expr"])
            for r in rendered(objects)["nftables"]
            if "rule" in r.get("add", {})
        ]
        assert 3 in shapes  # address lookup, port lookup, return


# ---- item 3: limits, fail closed, reported ---------------------------------------------------


@pytest.mark.parametrize(
    ("ingress", "reason"),
    [
        (
            [
                {
                    "from": [
                        {
                            "ipBlock": {
                                "cidr": "10.0.0.0/8",
                                "except": v4_hosts(limits.IPBLOCK_ENTRIES_MAX),
                            }
                        }
                    ]
                }
            ],
            "40,001 ipBlock entries",
        ),
        (
            [
                {
                    "from": [
                        {
                            "ipBlock": {
                                "cidr": "2001:db8::/32",
                                "except": v6_hosts(limits.IPBLOCK_ENTRIES_MAX // 2),
                            }
                        }
                    ]
                }
            ],
            "40,002 ipBlock entries",
        ),
        ([{"ports": tcp_ports(range(1, limits.PORTS_MAX + 2))}], "5,001 port entries"),
        ([{"ports": [{"port": 1}]}] * limits.RULES_MAX, "1,001 rules"),
        (
            [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"n": str(i)}}}
                        for i in range(limits.PEER_GROUPS_MAX + 1)
                    ]
                }
            ],
            "1,001 peer groups",
        ),
    ],
)
def test_a_policy_over_a_limit_fails_closed_and_is_reported(
    ingress: list[dict[str, Any]], reason: str
) -> None:
    """Old code: no limits and no ``policy_problems`` (and the first two cases take minutes
    to compile): the policy allowed everything."""
    allow_everyone = [*ingress, {}]  # a rule that alone would allow everything
    big = policy("big", allow_everyone)
    server = pod("s", "10.9.0.1", app="server")
    compiler = compile_objects([big, server])
    assert reason in compiler.policy_problems()["x/big"]
    assert "fail-closed" in compiler.policy_problems()["x/big"]
    (compiled,) = compiler.node_rules("n1").policies
    assert compiled.ingress == () and compiled.applied_to == ("x/s",)
    assert compiler.group_names() == []  # nothing to publish for it
    assert_verdicts_equal_semantics([big, server], [("192.0.2.1", "10.9.0.1", 1)])
    assert not evaluate(
        Snapshot.of([big, server]), "192.0.2.1", "10.9.0.1", Protocol.TCP, 1
    ).allowed
    # a smaller version is enforced as written, and the problem goes away
    compiler.upsert_policy(policy("big", allow_everyone[-1:]))
    assert compiler.policy_problems() == {}
    compiler.delete_policy("x/big")
    assert compiler.policy_problems() == {}


def test_a_group_describes_a_huge_selector_in_a_few_words() -> None:
    """Old code: the group's ``peer`` field held the whole selector (as long as the policy)."""
    values = [f"value-{i}" for i in range(10_000)]
    selector = {"matchExpressions": [{"key": "app", "operator": "In", "values": values}]}
    compiler = compile_objects([policy("long", [{"from": [{"podSelector": selector}]}])])
    (name,) = compiler.group_names()
    group = compiler.group(name)
    assert group is not None and len(group.peer) <= 200 and group.peer.endswith("...")


def test_limits_are_inclusive() -> None:
    at_limit = policy(
        "ok",
        [
            {
                "from": [
                    {
                        "ipBlock": {
                            "cidr": "10.0.0.0/8",
                            "except": v4_hosts(limits.IPBLOCK_ENTRIES_MAX - 1),
                        }
                    }
                ],
                "ports": tcp_ports(range(1, limits.PORTS_MAX + 1)),
            }
        ],
    )
    assert limits.ipblock_entries(at_limit) == limits.IPBLOCK_ENTRIES_MAX
    assert limits.port_entries(at_limit) == limits.PORTS_MAX
    assert limits.too_large(at_limit) is None


def test_peer_groups_count_egress_named_ports_per_peer() -> None:
    named = policy(
        "named",
        [],
        policyTypes=["Egress"],
        egress=[
            {
                "to": [
                    {"podSelector": {}},
                    {"ipBlock": {"cidr": "10.0.0.0/8"}},
                    {"ipBlock": {"cidr": "11.0.0.0/8"}},
                ],
                "ports": [{"port": "a"}, {"port": "b"}, {"port": 80}],
            },
            {"ports": [{"port": "a"}]},
        ],
    )
    assert limits.peer_groups(named) == (2 + 2 * 2) + (0 + 1)
    compiler = compile_objects([named])
    assert len(compiler.group_names()) <= limits.peer_groups(named)


@pytest.mark.parametrize(
    "patches",
    [
        {"IPBLOCK_ENTRIES_MAX": 1, "PORTS_MAX": 2, "PEER_GROUPS_MAX": 3},
        {"CROSS_MAX": 1, "BOXES_MAX": 3},
        {"MERGE_WORK_BASE": 0, "MERGE_WORK_PER_BOX": 0},
    ],
    ids=["tiny-limits", "tiny-cross-product", "no-merge-budget"],
)
def test_random_clusters_equal_semantics_with_tiny_thresholds(patches: dict[str, int]) -> None:
    """The pipeline property test again, with thresholds so small that random policies
    exceed the limits (fail closed, in the compiler and in semantics alike) and random rules
    are rendered as separate lookups."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in patches.items():
            module = limits if hasattr(limits, name) else render_module
            mp.setattr(module, name, value)
        run = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))(
            given(clusters())(_pipeline)
        )
        run()


def _pipeline(cluster: GeneratedCluster) -> None:
    test_pipeline_property.test_rendered_rules_equal_reference_semantics.hypothesis.inner_test(  # type: ignore[attr-defined]
        cluster
    )


# ---- item 5: rendering once per change -------------------------------------------------------


def test_the_view_renders_again_only_when_rules_or_groups_change() -> None:
    """Old code: every resync rendered again (29 s for the 1,000 x 1,000 policy)."""
    objects: list[ApiObject] = [
        policy(
            "p", [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": tcp_ports(range(1, 3))}]
        ),
        pod("s", "10.9.0.1", app="server"),
    ]
    compiler = compile_objects(objects)
    rules = compiler.node_rules("n1")
    view = AgentView("n1", rules, 1, groups_for(compiler, rules))
    options = RenderOptions()
    first = view.ruleset(options)
    assert view.ruleset(options) is first
    assert view.ruleset(RenderOptions(log_group=None)) is not first
    again = view.ruleset(options)
    name = next(iter(view.groups))
    view.groups[name] = AddressGroup.from_json(view.groups[name].to_json())  # a new event
    changed = view.ruleset(options)
    assert changed is not again and changed == again
    view.groups["unrelated"] = AddressGroup("unrelated", "x")  # not referred to: no render
    assert view.ruleset(options) is changed
