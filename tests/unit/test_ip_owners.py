"""One IP, one verdict: of several live pods reporting one address, the newest owns it.

The compiler (``compiler/ip_owners.py``), the reference semantics and the renderer's defence
against duplicate rules must agree, and the incremental compile must equal a fresh one.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.agent.render import duplicate_addresses, render
from controller.agent.verdict import Ruleset, cluster_allows
from controller.compiler import Compiler, compile_objects, groups_for
from controller.compiler.ip_owners import IPConflict, IPOwners
from controller.compiler.ir import AddressGroup, CompiledPolicy, LocalPod, NodeRules, Rule
from controller.model import ApiObject, Direction, NetworkPolicy, Pod, Protocol, parse_object
from controller.model.config import DefaultDeny
from controller.model.direction import parse_direction_set
from controller.semantics import Snapshot, evaluate
from tests.cluster_strategies import NODES, GeneratedCluster, clusters

IP = ipaddress.ip_address("10.244.1.10")
OLD, NEW = "2024-05-01T10:00:00Z", "2024-05-01T10:00:01Z"


def pod(
    name: str, ip: str = "10.244.1.10", created: str = "", node: str = "n1", **labels: str
) -> Pod:
    return Pod("x", name, labels, node, (ipaddress.ip_address(ip),), created=created)


def policy(name: str, spec: dict[str, Any]) -> NetworkPolicy:
    obj = parse_object(
        {"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "x"}, "spec": spec}
    )
    assert isinstance(obj, NetworkPolicy)
    return obj


# Pods labelled app=client may reach pods labelled app=server.
SERVER_FROM_CLIENT = policy(
    "server",
    {
        "podSelector": {"matchLabels": {"app": "server"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
    },
)


def local_keys(c: Compiler, node: str = "n1") -> dict[str, tuple[str, ...]]:
    return {p.key: tuple(map(str, p.ips)) for p in c.node_rules(node).pods}


def client_group(c: Compiler) -> frozenset[str]:
    (name,) = c.node_rules("n1").groups()
    group = c.group(name)
    assert isinstance(group, AddressGroup)
    return frozenset(map(str, group.addresses))


# ---- the ownership rule --------------------------------------------------------------------


def test_newest_pod_owns_the_address_as_target_and_as_peer() -> None:
    # old: a stuck client (allowed in, enforced as a server); new: a server on its IP
    old = pod("old", created=OLD, app="client")
    new = pod("new", created=NEW, app="server")
    peer = pod("peer", "10.244.1.20", created=OLD, app="client")
    c = compile_objects([SERVER_FROM_CLIENT, old, new, peer])
    # every local pod with an address is listed; old has none left
    assert local_keys(c) == {"x/new": ("10.244.1.10",), "x/peer": ("10.244.1.20",)}
    assert client_group(c) == {"10.244.1.20"}  # the old pod's address is not a client any more
    assert c.take_ip_conflicts() == [IPConflict(IP, "x/new", ("x/old",))]
    assert c.take_ip_conflicts() == []  # reported once per change


def test_old_pod_gets_its_address_back_when_the_new_one_goes() -> None:
    old = pod("zz-old", created=OLD, app="client")  # its name sorts last: time decides
    new = pod("new", created=NEW, app="server")
    c = compile_objects([SERVER_FROM_CLIENT, old, new])
    (group,) = c.node_rules("n1").groups()
    assert local_keys(c) == {"x/new": ("10.244.1.10",)}
    assert client_group(c) == frozenset()
    assert c.take_ip_conflicts() == [IPConflict(IP, "x/new", ("x/zz-old",))]
    c.take_changes()
    c.delete_pod("x/new")
    changes = c.take_changes()
    assert group in changes.groups and "n1" in changes.nodes
    members = c.group(group)
    assert isinstance(members, AddressGroup) and members.addresses == {IP}
    assert c.take_ip_conflicts() == []  # resolved


@pytest.mark.parametrize(
    ("phase", "host_network"), [("Succeeded", False), ("Failed", False), ("Running", True)]
)
def test_pods_without_addresses_claim_nothing(phase: str, host_network: bool) -> None:
    old = pod("old", created=OLD, app="server")
    gone = Pod("x", "new", {"app": "server"}, "n1", (IP,), host_network, phase, created=NEW)
    c = compile_objects([SERVER_FROM_CLIENT, old, gone])
    assert local_keys(c) == {"x/old": ("10.244.1.10",)}
    assert c.take_ip_conflicts() == []


def test_equal_timestamps_fall_back_to_the_greater_name_and_unknown_is_oldest() -> None:
    c = compile_objects([SERVER_FROM_CLIENT, pod("a", app="server"), pod("b", app="server")])
    assert local_keys(c) == {"x/b": ("10.244.1.10",)}
    c.upsert_pod(pod("a", created=OLD, app="server"))  # a timestamp beats none
    assert local_keys(c) == {"x/a": ("10.244.1.10",)}
    assert c.take_ip_conflicts() == [IPConflict(IP, "x/a", ("x/b",))]


def test_a_dual_stack_pod_loses_only_the_contested_family() -> None:
    v6 = ipaddress.ip_address("fd00:244:1::10")
    old = Pod("x", "old", {"app": "server"}, "n1", (IP, v6), created=OLD)
    c = compile_objects([SERVER_FROM_CLIENT, old, pod("new", created=NEW)])
    # new (not isolated) is listed with the address it owns, old with the other family's
    assert local_keys(c) == {"x/old": ("fd00:244:1::10",), "x/new": ("10.244.1.10",)}


def test_status_churn_of_a_conflicting_pod_reports_nothing_new() -> None:
    old, new = pod("old", created=OLD, app="server"), pod("new", created=NEW, app="server")
    c = compile_objects([SERVER_FROM_CLIENT, old, new])
    c.take_changes()
    c.take_ip_conflicts()
    c.upsert_pod(old)
    c.upsert_pod(new)
    assert not c.take_changes()
    assert c.take_ip_conflicts() == []


def test_an_event_re_evaluates_only_the_pods_sharing_its_addresses() -> None:
    owners = IPOwners()
    for i in range(1000):
        owners.upsert(pod(f"p{i}", f"10.1.{i // 250}.{i % 250}", created=OLD))
    assert owners.upsert(pod("new", created=NEW)) == [("x/new", pod("new", created=NEW))]
    changed = owners.upsert(pod("newer", "10.1.0.0", created=NEW))  # takes p0's address
    assert [key for key, _ in changed] == ["x/newer", "x/p0"]
    effective = changed[1][1]
    assert effective is not None and effective.addresses == ()
    assert [key for key, _ in owners.delete("x/newer")] == ["x/newer", "x/p0"]


# ---- the renderer's defence: rules that list one address twice ----------------------------


def duplicate_rules() -> NodeRules:
    """What an older operator published for a stuck pod and the new pod on its address: two
    pods on one IP, isolated with different allowances."""
    b = ipaddress.ip_address("10.244.1.20")
    return NodeRules(
        "n1",
        pods=(LocalPod("x/a-old", (IP,)), LocalPod("x/b-new", (IP, b))),
        policies=(
            CompiledPolicy("x/old", ("x/a-old",), frozenset({Direction.INGRESS})),
            CompiledPolicy(
                "x/new", ("x/b-new",), frozenset({Direction.INGRESS}), ingress=(Rule(),)
            ),
        ),
    )


def vmap_elements(doc: dict[str, Any], name: str) -> list[Any]:
    (spec,) = (
        c["add"]["map"]
        for c in doc["nftables"]
        if c.get("add", {}).get("map", {}).get("name") == name
    )
    return list(spec.get("elem", ()))


def test_render_keeps_one_verdict_per_address_and_reports_the_duplicate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules = duplicate_rules()
    assert duplicate_addresses(rules) == [IPConflict(IP, "x/b-new", ("x/a-old",))]
    with caplog.at_level(logging.WARNING, logger="controller.agent.render"):
        doc = render(rules, {})
    elements = [e[0]["elem"]["val"] for e in vmap_elements(doc, "in4")]
    assert sorted(elements) == ["10.244.1.10", "10.244.1.20"]
    assert "10.244.1.10 is reported by x/b-new, x/a-old: x/b-new owns it" in caplog.text
    ruleset = Ruleset(doc)
    src = ipaddress.ip_address("10.244.2.5")
    assert ruleset.forward((src, IP, Protocol.TCP.number, 80))  # b-new allows all in


# ---- properties over random clusters with colliding addresses ------------------------------

TIMES = (None, OLD, NEW, "2024-05-01T10:00:02Z")


@st.composite
def colliding_clusters(draw: st.DrawFn) -> GeneratedCluster:
    """Random clusters in which pods take each other's addresses (per family, on any node),
    with creation times that tie or are missing, and some pods terminated or hostNetwork."""
    cluster = copy.deepcopy(draw(clusters(max_pods=6)))
    pods = cluster.pods()
    addresses = [[entry["ip"] for entry in p["status"]["podIPs"]] for p in pods]
    for p, own in zip(pods, addresses, strict=True):
        created = draw(st.sampled_from(TIMES))
        if created is not None:
            p["metadata"]["creationTimestamp"] = created
        ips = [draw(st.sampled_from([a[f] for a in addresses])) for f in range(len(own))]
        p["status"].update(podIP=ips[0], podIPs=[{"ip": ip} for ip in ips])
        p["status"]["phase"] = draw(st.sampled_from(["Running"] * 4 + ["Pending", "Succeeded"]))
        p["spec"]["hostNetwork"] = draw(st.integers(0, 9)) == 0
    return cluster


def parse(cluster: GeneratedCluster) -> list[ApiObject]:
    return [parse_object(o) for o in cluster.objects]


def outputs(c: Compiler) -> tuple[dict[str, object], dict[str, object]]:
    return {n: c.group(n) for n in c.group_names()}, {n: c.node_rules(n) for n in NODES}


@settings(max_examples=300, deadline=None)
@given(colliding_clusters(), colliding_clusters(), st.randoms(use_true_random=False))
def test_incremental_with_collisions_equals_fresh_compile(
    a: GeneratedCluster, b: GeneratedCluster, rnd: Any
) -> None:
    before, after = parse(a), parse(b)
    c = compile_objects(before)
    c.take_changes()
    groups_before, nodes_before = outputs(c)
    keys_after = {o.key for o in after if isinstance(o, Pod | NetworkPolicy)}
    events: list[tuple[bool, ApiObject]] = [(True, o) for o in after]
    events += [
        (False, o) for o in before if isinstance(o, Pod | NetworkPolicy) and o.key not in keys_after
    ]
    rnd.shuffle(events)
    for upsert, obj in events:
        if upsert:
            c.upsert(obj)
        elif isinstance(obj, Pod):
            c.delete_pod(obj.key)
        else:
            assert isinstance(obj, NetworkPolicy)
            c.delete_policy(obj.key)
    changes = c.take_changes()
    groups, nodes = outputs(c)
    assert (groups, nodes) == outputs(compile_objects(after))
    assert {n for n in NODES if nodes[n] != nodes_before[n]} <= changes.nodes
    assert {g for g in {*groups, *groups_before} if groups.get(g) != groups_before.get(g)} <= (
        changes.groups
    )


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(colliding_clusters())
def test_verdicts_with_collisions_equal_semantics(cluster: GeneratedCluster) -> None:
    objects = parse(cluster)
    config = DefaultDeny(directions=parse_direction_set(cluster.default_deny, "", ""))
    compiler = compile_objects(objects, config)
    snap = Snapshot.of(objects, config)
    rulesets = {}
    for node in NODES:
        rules = compiler.node_rules(node)
        assert duplicate_addresses(rules) == []  # the compiler gives every address one pod
        rulesets[node] = Ruleset(render(rules, groups_for(compiler, rules)))
    addresses = {ip for p in snap.pods for ip in p.addresses}
    owner = {ip: snap.pod_at(ip) for ip in addresses}
    node_of_ip = {ip: p.node for ip, p in owner.items() if p is not None and p.node}
    outsiders = [ipaddress.ip_address(a) for a in ("10.244.3.7", "fd00:244:3::7")]
    for src, dst in itertools.permutations([*addresses, *outsiders], 2):
        if src.version != dst.version or (src not in node_of_ip and dst not in node_of_ip):
            continue
        for proto, port in itertools.product((Protocol.TCP, Protocol.UDP), (53, 80, 8080)):
            want = evaluate(snap, src, dst, proto, port).allowed
            got = cluster_allows(rulesets, node_of_ip, (src, dst, proto.number, port))
            assert got == want, f"{src} -> {dst} {proto}/{port}: rules {got}, semantics {want}"
