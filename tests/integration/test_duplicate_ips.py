"""Two live pods reporting one IP on a node: the node keeps enforcing, the newest pod decides.

A pod stuck terminating still reports Running and its IP while the CNI gives that IP to a new
pod (or a deletion was missed). Before, both pods got a verdict-map entry for the IP, the
kernel refused the node's whole transaction (``Could not process rule: File exists``) and the
node took no update any more; and the new pod was admitted by the old pod's allowances.
Shown with real packets: in the kernel alone, and end to end through the API server.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.agent.kernel import Kernel
from controller.agent.render import RenderOptions, render
from controller.compiler.ir import AddressGroup, CompiledPolicy, LocalPod, NodeRules, Rule
from controller.model import Direction, parse_object
from controller.testing.apiserver import TestControlPlane
from controller.testing.netns import NetnsCluster, Probe
from tests.integration.enforcer import Enforcer
from tests.integration.live import Live, install_crds, wait_log

pytestmark = pytest.mark.integration

SHARED = "10.244.1.10"  # the address both pods report
X, Y, S = "10.244.2.20", "10.244.2.21", "10.244.1.30"  # two clients and a server
OLD, NEW = "2024-05-01T10:00:00Z", "2024-05-01T10:00:05Z"
INGRESS = frozenset({Direction.INGRESS})


def network(cluster: NetnsCluster) -> None:
    """n1 holds the shared address (one namespace: only one pod can really have it) and the
    server; n2 the clients x and y."""
    cluster.add_node("n1", "10.244.1.0/24")
    cluster.add_node("n2", "10.244.2.0/24")
    cluster.add_pod("x", "holder", "n1", SHARED)
    cluster.add_pod("x", "srv", "n1", S)
    cluster.add_pod("x", "xc", "n2", X)
    cluster.add_pod("x", "yc", "n2", Y)
    cluster.wait_ready()


def into_shared(src: str) -> Probe:
    return Probe(f"x/{src}", SHARED, 80)


# ---- (a) in the kernel alone ------------------------------------------------------------------


def test_rules_listing_one_ip_twice_still_apply(netns_cluster: NetnsCluster) -> None:
    """NodeRules as an older operator publishes them: x/a-old (admits x) and x/b-new (admits
    y) both on the shared IP. The transaction goes through and one pod, b-new, decides."""
    network(netns_cluster)
    ip = ipaddress.ip_address(SHARED)
    groups = {
        "gx": AddressGroup("gx", "x", frozenset({ipaddress.ip_address(X)})),
        "gy": AddressGroup("gy", "y", frozenset({ipaddress.ip_address(Y)})),
    }
    rules = NodeRules(
        "n1",
        pods=(LocalPod("x/a-old", (ip,)), LocalPod("x/b-new", (ip,))),
        policies=(
            CompiledPolicy("x/old-in", ("x/a-old",), INGRESS, ingress=(Rule(peers=("gx",)),)),
            CompiledPolicy("x/new-in", ("x/b-new",), INGRESS, ingress=(Rule(peers=("gy",)),)),
        ),
    )
    kernel = Kernel(netns_cluster.node_netns("n1"))
    kernel.apply(render(rules, groups, RenderOptions(log_group=None)))  # raised File exists
    probes = [into_shared("xc"), into_shared("yc")]
    assert netns_cluster.probe_many(probes, 1.0) == [False, True]


def pod(name: str, ip: str, created: str, **labels: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "x",
            "labels": labels,
            "creationTimestamp": created,
        },
        "spec": {"nodeName": "n1" if ip.startswith("10.244.1.") else "n2"},
        "status": {"phase": "Running", "podIP": ip},
    }


def ingress_policy(name: str, target: str, source: str) -> dict[str, Any]:
    """Pods labelled app=target admit only pods labelled app=source."""
    return {
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"app": target}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": source}}}]}],
        },
    }


# Policies both tests use: the old pod admits x, the new pod admits y, the server only "old".
POLICIES = (
    ingress_policy("old-in", "old", "xc"),
    ingress_policy("new-in", "new", "yc"),
    ingress_policy("srv-in", "srv", "old"),
)


def test_compiled_duplicate_ips_apply_and_the_newest_pod_decides(
    netns_cluster: NetnsCluster,
) -> None:
    """Through the compiler: the stuck pod (named to sort last, so time decides) neither keeps
    its verdict on the address nor its membership as a peer, until the new pod goes."""
    network(netns_cluster)
    enforcer = Enforcer(netns_cluster, ["n1", "n2"])
    objects = [
        *POLICIES,
        pod("zz-old", SHARED, OLD, app="old"),
        pod("new", SHARED, NEW, app="new"),
        pod("srv", S, OLD, app="srv"),
        pod("xc", X, OLD, app="xc"),
        pod("yc", Y, OLD, app="yc"),
    ]
    for obj in objects:
        enforcer.feed(parse_object(obj))
    enforcer.sync()  # raised File exists
    probes = [into_shared("xc"), into_shared("yc"), Probe("x/holder", S, 80)]
    assert netns_cluster.probe_many(probes, 1.0) == [False, True, False]
    enforcer.compiler.delete_pod("x/new")
    enforcer.sync()
    assert netns_cluster.probe_many(probes, 1.0) == [True, False, True]


# ---- (b) end to end: real API server, operator and agents -------------------------------------

CONVERGENCE = 20.0  # generous: the machine may be busy
OPERATOR_START = 60.0  # process start -> leading; a loaded CI machine took over 20 s


@pytest.fixture
def live(
    control_plane: TestControlPlane, netns_cluster: NetnsCluster, tmp_path: Path
) -> Iterator[Live]:
    install_crds(control_plane)
    live = Live(control_plane, netns_cluster, tmp_path)
    try:
        n1, n2 = f"{live.ns}-n1", f"{live.ns}-n2"
        live.add_node(n1, 1)
        live.add_node(n2, 2)
        live.add_namespace(live.ns)
        yield live
    finally:
        live.close()


def test_stuck_pod_and_new_pod_on_one_ip(live: Live) -> None:
    ns, n1, n2 = live.ns, f"{live.ns}-n1", f"{live.ns}-n2"
    shared, x, y, s, c = "10.101.0.10", "10.102.0.20", "10.102.0.21", "10.101.0.30", "10.101.0.31"
    live.add_pod(ns, "old", n1, shared, {"app": "old"})
    live.add_pod(ns, "srv", n1, s, {"app": "srv"})
    live.add_pod(ns, "c", n1, c, {"app": "c"})
    live.add_pod(ns, "xc", n2, x, {"app": "xc"})
    live.add_pod(ns, "yc", n2, y, {"app": "yc"})
    live.net.wait_ready()
    for policy in POLICIES:
        live.apply_policy(ns, {**policy, "metadata": {**policy["metadata"], "namespace": ns}})
    live.start_operator()
    live.start_agent(n1)
    live.start_agent(n2)

    def at_shared(src: str) -> Probe:
        return Probe(f"{ns}/{src}", shared, 80)

    probes = [at_shared("xc"), at_shared("yc"), Probe(f"{ns}/xc", c, 80)]
    wait_log(live, "operator", "leading:", timeout=OPERATOR_START)
    live.wait_for([*probes, Probe(f"{ns}/old", s, 80)], [True, False, True, True], CONVERGENCE)

    # old gets stuck terminating: deleted with a grace period and no kubelet to finish it, it
    # stays Running with its IP; the CNI gives that IP to a new pod on the same node.
    live.core.delete_namespaced_pod("old", ns)
    stuck = live.core.read_namespaced_pod("old", ns)
    assert stuck.metadata.deletion_timestamp is not None and stuck.status.phase == "Running"
    live.net.delete_pod(ns, "old")
    created = stuck.metadata.creation_timestamp
    time.sleep(max(0.0, 1.1 - (datetime.now(UTC) - created).total_seconds()))  # a later second
    live.add_pod(ns, "new", n1, shared, {"app": "new"})
    live.net.wait_ready()
    newest = [*probes, Probe(f"{ns}/new", s, 80)]  # not a member of old's peer group either
    live.wait_for(newest, [False, True, True, False], CONVERGENCE)

    # n1 still takes updates: a policy added now isolates c
    live.apply_policy(
        ns,
        {
            "metadata": {"name": "c-in", "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": "c"}}, "policyTypes": ["Ingress"]},
        },
    )
    live.wait_for(newest, [False, True, False, False], CONVERGENCE)

    # the new pod goes: the stuck one owns the address again (and holds it on the network)
    live.core.delete_namespaced_pod("new", ns, grace_period_seconds=0)
    live.net.delete_pod(ns, "new")
    live.net.add_pod(ns, "old", n1, shared)
    live.net.wait_ready()
    live.wait_for([*probes, Probe(f"{ns}/old", s, 80)], [True, False, False, True], CONVERGENCE)
    live.core.delete_namespaced_pod("old", ns, grace_period_seconds=0)
