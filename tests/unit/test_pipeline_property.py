"""Compile + render, interpreted, must equal the reference evaluator on random clusters."""

from __future__ import annotations

import ipaddress
import itertools

from hypothesis import HealthCheck, given, settings

from controller.agent.render import render
from controller.agent.verdict import Ruleset, cluster_allows
from controller.compiler import compile_objects, groups_for
from controller.model import Pod, Protocol, parse_object
from controller.model.config import DefaultDeny
from controller.model.direction import parse_direction_set
from controller.semantics import Snapshot, evaluate
from tests.cluster_strategies import NODES, GeneratedCluster, clusters

PORTS = (53, 80, 81, 8080)
OUTSIDERS = ("10.244.3.7", "192.0.2.1", "fd00:244:3::7", "2001:db8::1")


def build(cluster: GeneratedCluster) -> tuple[Snapshot, dict[str, Ruleset], dict[str, str]]:
    objects = [parse_object(o) for o in cluster.objects]
    config = DefaultDeny(directions=parse_direction_set(cluster.default_deny, "", ""))
    compiler = compile_objects(objects, config)
    rulesets = {}
    for node in sorted(set(NODES) | set(compiler.node_names())):
        rules = compiler.node_rules(node)
        rulesets[node] = Ruleset(render(rules, groups_for(compiler, rules)))
    node_of_ip = {
        ip: o.node for o in objects if isinstance(o, Pod) and o.node for ip in o.addresses
    }
    return Snapshot.of(objects, config), rulesets, node_of_ip  # type: ignore[return-value]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_rendered_rules_equal_reference_semantics(cluster: GeneratedCluster) -> None:
    assert_rendered_rules_equal_semantics(cluster)


def assert_rendered_rules_equal_semantics(cluster: GeneratedCluster) -> None:
    """Connections between all pods and some outsiders on some ports: the rendered rulesets
    decide as the reference evaluator does (also used by the hostile-input test)."""
    snap, rulesets, node_of_ip = build(cluster)
    addresses = [ip for p in snap.pods for ip in p.addresses]
    endpoints = addresses + [ipaddress.ip_address(a) for a in OUTSIDERS]
    unplaced = {ip for ip in addresses if ip not in node_of_ip}
    for src in endpoints:
        for dst in endpoints:
            if src == dst or src.version != dst.version:
                continue
            if src not in node_of_ip and dst not in node_of_ip:
                continue
            if unplaced & {src, dst}:
                # a pod with addresses but no node (only hostile input has it): no node
                # enforces for it, so the kernel model cannot say anything about it
                continue
            for proto, port in itertools.product((Protocol.TCP, Protocol.UDP), PORTS):
                want = evaluate(snap, src, dst, proto, port)
                got = cluster_allows(rulesets, node_of_ip, (src, dst, proto.number, port))  # type: ignore[arg-type]
                assert got == want.allowed, (
                    f"{src} -> {dst} {proto}/{port}: kernel model says {got}, semantics says {want}"
                )
