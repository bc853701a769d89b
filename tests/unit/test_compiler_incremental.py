"""The incremental compiler must agree with a fresh compile, and report every change."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.compiler import Compiler, compile_objects
from controller.model import ApiObject, NetworkPolicy, Pod, parse_object
from controller.model.config import DefaultDeny
from tests.cluster_strategies import NODES, GeneratedCluster, clusters

CONFIG = DefaultDeny()


def _parse(cluster: GeneratedCluster) -> list[ApiObject]:
    return [parse_object(o) for o in cluster.objects]


def _outputs(c: Compiler) -> tuple[dict[str, object], dict[str, object]]:
    groups = {name: c.group(name) for name in c.group_names()}
    nodes = {node: c.node_rules(node) for node in NODES}
    return groups, nodes


@settings(max_examples=300, deadline=None)
@given(clusters(), clusters(), st.randoms(use_true_random=False))
def test_events_equal_fresh_compile(a: GeneratedCluster, b: GeneratedCluster, rnd: object) -> None:
    before, after = _parse(a), _parse(b)
    incremental = compile_objects(before, CONFIG)
    incremental.take_changes()
    groups_before, nodes_before = _outputs(incremental)

    keys_after = {o.key for o in after if isinstance(o, Pod | NetworkPolicy)}
    events: list[ApiObject | tuple[str, str]] = list(after)
    events += [
        ("pod" if isinstance(o, Pod) else "policy", o.key)
        for o in before
        if isinstance(o, Pod | NetworkPolicy) and o.key not in keys_after
    ]
    rnd.shuffle(events)  # type: ignore[attr-defined]
    for event in events:
        if isinstance(event, tuple):
            kind, key = event
            (incremental.delete_pod if kind == "pod" else incremental.delete_policy)(key)
        else:
            incremental.upsert(event)
    changes = incremental.take_changes()

    fresh = compile_objects(after, CONFIG)
    groups_inc, nodes_inc = _outputs(incremental)
    groups_fresh, nodes_fresh = _outputs(fresh)
    assert nodes_inc == nodes_fresh
    assert groups_inc == groups_fresh  # same names (no leaked groups) and same members

    for node in NODES:
        if nodes_before[node] != nodes_inc[node]:
            assert node in changes.nodes, f"node {node} changed but was not reported"
    for name in set(groups_before) | set(groups_inc):
        if groups_before.get(name) != groups_inc.get(name):
            assert name in changes.groups, f"group {name} changed but was not reported"


def test_status_only_pod_update_reports_nothing() -> None:
    pod = parse_object(
        {
            "kind": "Pod",
            "metadata": {"name": "a", "namespace": "x", "labels": {"app": "a"}},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.1"},
        }
    )
    policy = parse_object(
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]},
        }
    )
    c = compile_objects([pod, policy])
    assert c.take_changes()
    assert isinstance(pod, Pod)
    c.upsert_pod(dataclasses.replace(pod, phase="Running"))
    assert not c.take_changes()
