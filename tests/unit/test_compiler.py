"""Compiler output on hand-written cases that matter to operators."""

from __future__ import annotations

import dataclasses
from typing import Any

from controller.compiler import compile_objects
from controller.compiler.ir import AddressGroup, PortGroup
from controller.model import ApiObject, Pod, parse_object


def pod(name: str, ns: str, ip: str, node: str = "n1", **labels: str) -> Pod:
    obj = parse_object(
        {
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}],
            },
            "status": {"phase": "Running", "podIP": ip},
        }
    )
    assert isinstance(obj, Pod)
    return obj


def policy(name: str, ns: str, **spec: Any) -> ApiObject:
    return parse_object(
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {}, **spec},
        }
    )


FROM_APP_A = {"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]}


def test_identical_peers_share_one_group_with_a_stable_name() -> None:
    c1 = compile_objects(
        [
            pod("a", "x", "10.0.0.1", app="a"),
            policy("p1", "x", **FROM_APP_A),
            policy("p2", "x", **FROM_APP_A),
        ]
    )
    c2 = compile_objects([policy("other", "x", **FROM_APP_A), pod("a", "x", "10.0.0.1", app="a")])
    assert len(c1.group_names()) == 1
    assert c1.group_names() == c2.group_names()  # same name in another process/order
    # the same selector in another namespace is another peer
    c3 = compile_objects([policy("p", "y", **FROM_APP_A)])
    assert c3.group_names() != c1.group_names()


def test_deleting_the_last_policy_deletes_the_group() -> None:
    c = compile_objects(
        [
            pod("a", "x", "10.0.0.1", app="a"),
            policy("p1", "x", **FROM_APP_A),
            policy("p2", "x", **FROM_APP_A),
        ]
    )
    (name,) = c.group_names()
    c.take_changes()
    c.delete_policy("x/p1")
    assert c.group(name) is not None
    c.delete_policy("x/p2")
    assert c.group(name) is None and name in c.take_changes().groups


def test_reused_ip_never_inherits_the_old_pods_allowance() -> None:
    c = compile_objects([pod("a", "x", "10.0.0.1", app="a"), policy("p", "x", **FROM_APP_A)])
    (name,) = c.group_names()
    c.delete_pod("x/a")
    c.upsert_pod(pod("new", "x", "10.0.0.1", app="b"))  # same IP, not selected
    group = c.group(name)
    assert isinstance(group, AddressGroup) and group.addresses == frozenset()


def test_terminated_pod_leaves_groups_and_node_rules() -> None:
    a = pod("a", "x", "10.0.0.1", app="a")
    c = compile_objects([a, policy("p", "x", **FROM_APP_A)])
    c.upsert_pod(dataclasses.replace(a, phase="Succeeded"))
    (name,) = c.group_names()
    group = c.group(name)
    assert isinstance(group, AddressGroup) and not group.addresses
    assert c.node_rules("n1").pods == ()


def test_egress_named_port_resolves_per_destination() -> None:
    objs = [
        pod("a", "x", "10.0.0.1", app="a"),
        pod("b", "x", "10.0.0.2", app="b"),
        policy(
            "p",
            "x",
            podSelector={"matchLabels": {"app": "a"}},
            policyTypes=["Egress"],
            egress=[{"ports": [{"port": "http"}, {"port": "nope"}]}],
        ),
    ]
    c = compile_objects(objs)
    rules = c.node_rules("n1")
    (compiled,) = rules.policies
    assert compiled.egress[0].peers == ()  # only named ports: no address part
    groups = [c.group(n) for n in compiled.egress[0].port_groups]
    members = {
        g.port_name: {(str(ip), p) for ip, p in g.members}
        for g in groups
        if isinstance(g, PortGroup)
    }
    assert members == {"http": {("10.0.0.1", 8080), ("10.0.0.2", 8080)}, "nope": set()}
