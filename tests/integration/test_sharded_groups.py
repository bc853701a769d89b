"""A large group through a real API server: published as shards under the object limit, one
pod event writes one shard, and the agent enforces the union of the shards on real packets.

The group's members are Pod objects without kubelets (as bench/convergence.py's scale run
makes them); the probing pods are network namespaces.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.convergence import Bulk
from controller.publish.shards import OBJECT_LIMIT
from controller.resources import (
    ADDRESS_GROUPS,
    GROUP,
    GROUP_LABEL,
    NODE_RULES,
    VERSION,
    span_label,
)
from controller.testing.apiserver import TestControlPlane
from controller.testing.netns import NetnsCluster, Probe
from tests.integration.live import Live, eventually, rules_applied, two_nodes

pytestmark = pytest.mark.integration

MEMBERS = 12_000  # ~180 KB of addresses: three shards
GHOST_NODES = 40  # the members' nodes: no agents, no network namespaces
SERVER, FIRST, LAST, OTHER = "10.101.0.10", "10.102.0.11", "10.102.0.12", "10.102.0.13"
CONVERGENCE = 30.0  # seconds; the operator compiles a 12k-member group on a busy machine


@pytest.fixture
def live(
    control_plane: TestControlPlane, netns_cluster: NetnsCluster, tmp_path: Path
) -> Iterator[Live]:
    pods = [
        ("server", 1, SERVER, {"app": "server"}),
        ("first", 2, FIRST, {"app": "member"}),
        ("other", 2, OTHER, {"app": "other"}),
    ]
    with two_nodes(control_plane, netns_cluster, tmp_path, pods) as live:
        n1 = f"{live.ns}-n1"
        live.start_operator(log_level="info")
        live.start_agent(n1, log_level="info")
        eventually(lambda: rules_applied(live, [n1]), 120, "the agent's first apply")
        yield live


def ghost_pod(ns: str, i: int) -> list[tuple[str, str, Any]]:
    name, ip = f"ghost-{i:05d}", f"10.150.{i // 256}.{i % 256}"
    pod = {
        "metadata": {"name": name, "labels": {"app": "member"}},
        "spec": {
            "nodeName": f"{ns}-ghost{i % GHOST_NODES}",
            "containers": [{"name": "c", "image": "agnhost"}],
        },
    }
    status = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
    return [
        ("POST", f"/api/v1/namespaces/{ns}/pods", pod),
        ("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", status),
    ]


def ghost_pods(live: Live) -> int:
    """Pods the operator has compiled onto the members' nodes (their NodeRules list them)."""
    items = live.custom.list_cluster_custom_object(GROUP, VERSION, NODE_RULES)["items"]
    ghosts = [o for o in items if "-ghost" in o["metadata"]["name"]]
    return sum(len(o["spec"].get("pods", ())) for o in ghosts)


def shards(live: Live) -> dict[str, dict[str, Any]]:
    """Every AddressGroup object of the members' group, by name."""
    items = live.custom.list_cluster_custom_object(GROUP, VERSION, ADDRESS_GROUPS)["items"]
    return {o["metadata"]["name"]: o for o in items if "app=member" in o["spec"]["peer"]}


def holding(objects: dict[str, dict[str, Any]], ip: str) -> list[str]:
    return [n for n, o in objects.items() if ip in o["spec"].get("addresses", ())]


def settled(live: Live, ip: str, present: bool) -> dict[str, dict[str, Any]]:
    """The shards once ``ip`` is (or is no longer) in one, and nothing moved for 3 s."""
    eventually(lambda: bool(holding(shards(live), ip)) == present, CONVERGENCE, f"{ip} published")
    while True:
        before = shards(live)
        time.sleep(3)
        after = shards(live)
        if versions(before) == versions(after):
            return after


def kubectl(plane: TestControlPlane, *args: str) -> str:
    command = [plane.kubectl_path or "kubectl", "--kubeconfig", str(plane.kubeconfig), *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def versions(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {n: o["metadata"]["resourceVersion"] for n, o in objects.items()}


def test_a_large_group_is_sharded_and_its_union_enforced(
    live: Live, control_plane: TestControlPlane
) -> None:
    """Old code: one 174 KB object (at 30k members 440 KB, at ~90k over etcd's limit),
    rewritten whole on every pod event."""
    ns, n1 = live.ns, f"{live.ns}-n1"
    Bulk(control_plane, 16).run(ghost_pod(ns, i) for i in range(MEMBERS))
    # every member compiled before the group is first published: its layout is then the
    # planner's from scratch (so where "last" goes below is known)
    eventually(lambda: ghost_pods(live) == MEMBERS, 600, "the operator to compile every pod")
    live.apply_policy(
        ns,
        {
            "metadata": {"name": "server-from-members", "namespace": ns},
            "spec": {
                "podSelector": {"matchLabels": {"app": "server"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "member"}}}]}],
            },
        },
    )
    first, other = Probe(f"{ns}/first", SERVER, 80), Probe(f"{ns}/other", SERVER, 80)
    live.wait_for([first, other], [True, False], timeout=120)
    published = settled(live, FIRST, present=True)
    assert sum(len(o["spec"]["addresses"]) for o in published.values()) == MEMBERS + 1

    sizes = {n: len(json.dumps(o)) for n, o in published.items()}  # managedFields included
    print(f"{len(sizes)} shards, bytes: {sorted(sizes.values())}")
    assert len(published) >= 3 and max(sizes.values()) <= OBJECT_LIMIT, sizes
    (group,) = {o["metadata"]["labels"][GROUP_LABEL] for o in published.values()}
    assert group in published  # the base shard, named after the group
    assert all(span_label(n1) in o["metadata"]["labels"] for o in published.values())
    table = kubectl(control_plane, "get", "ag", "-l", f"{GROUP_LABEL}={group}")
    assert table.split()[:3] == ["NAME", "GROUP", "PEER"], table
    assert table.count(f" {group} ") == len(published), table  # each shard names its group

    # a new member goes into one shard with room (not the base: the agent must take the
    # union to admit it), and nothing else is written
    live.add_pod(ns, "last", f"{ns}-n2", LAST, {"app": "member"})
    live.net.wait_ready()
    after = settled(live, LAST, present=True)
    changed = [n for n in after if versions(after)[n] != versions(published).get(n)]
    assert changed == holding(after, LAST) and changed != [group], changed
    live.wait_for([Probe(f"{ns}/last", SERVER, 80), other], [True, False], timeout=CONVERGENCE)

    # a member leaves: its shard alone is rewritten
    gone = "10.150.0.7"  # ghost-00007
    (shard,) = holding(after, gone)
    live.core.delete_namespaced_pod("ghost-00007", ns, grace_period_seconds=0)
    final = settled(live, gone, present=False)
    assert [n for n in final if versions(final)[n] != versions(after).get(n)] == [shard]
    assert final.keys() == after.keys()
