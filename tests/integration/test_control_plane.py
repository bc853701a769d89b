"""End to end through a real API server: kubectl-style writes are enforced with real packets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.testing.apiserver import TestControlPlane
from controller.testing.netns import NetnsCluster, Probe
from tests.integration.live import Live, eventually, rules_applied, two_nodes

pytestmark = pytest.mark.integration

A, B, C = "10.101.0.10", "10.102.0.11", "10.101.0.12"
CONVERGENCE = 5.0  # seconds allowed from an API write to enforcement on every node


@pytest.fixture
def live(
    control_plane: TestControlPlane, netns_cluster: NetnsCluster, tmp_path: Path
) -> Iterator[Live]:
    pods = [("a", 1, A, {"app": "a"}), ("b", 2, B, {"app": "b"}), ("c", 1, C, {"app": "c"})]
    with two_nodes(control_plane, netns_cluster, tmp_path, pods, {"team": "a"}) as live:
        n1, n2 = f"{live.ns}-n1", f"{live.ns}-n2"
        live.start_operator()
        live.start_agent(n1)
        live.start_agent(n2)
        # Start-up (imports, first lists, the first publication) is not what CONVERGENCE
        # bounds: on a busy machine it alone can take longer.
        eventually(lambda: rules_applied(live, [n1, n2]), 120, "both agents' first apply")
        yield live


def to_a(src: str) -> Probe:
    return Probe(src, A, 80)


def test_policy_lifecycle_is_enforced_within_the_bound(live: Live) -> None:
    ns = live.ns
    probes = [to_a(f"{ns}/b"), to_a(f"{ns}/c"), Probe(f"{ns}/a", B, 80)]
    live.wait_for(probes, [True, True, True], timeout=20)  # nothing enforced yet

    live.apply_policy(
        ns,
        {
            "metadata": {"name": "a-from-b", "namespace": ns},
            "spec": {
                "podSelector": {"matchLabels": {"app": "a"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}],
            },
        },
    )
    took = live.wait_for(probes, [True, False, True], timeout=CONVERGENCE)
    print(f"apply -> enforced in {took:.2f} s")
    eventually(
        lambda: any(
            e.startswith("Enforced: enforced on 1 node") for e in live.events(ns, "a-from-b")
        ),
        what="an Enforced event on the policy",
    )

    live.label_pod(ns, "c", {"app": "b"})  # c joins the allowed group
    live.wait_for(probes, [True, True, True], timeout=CONVERGENCE)
    live.label_pod(ns, "b", {"app": "x"})  # b leaves it
    live.wait_for(probes, [False, True, True], timeout=CONVERGENCE)

    live.delete_policy(ns, "a-from-b")
    live.wait_for(probes, [True, True, True], timeout=CONVERGENCE)


def allow_a_from(live: Live, peer: dict[str, object]) -> None:
    live.apply_policy(
        live.ns,
        {
            "metadata": {"name": "a-in", "namespace": live.ns},
            "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"from": [peer]}]},
        },
    )


def test_namespace_label_change_is_enforced(live: Live) -> None:
    other = f"{live.ns}-o"
    live.add_namespace(other, {"team": "x"})
    live.add_pod(other, "o", f"{live.ns}-n2", "10.102.0.20", {"app": "o"})
    live.net.wait_ready()
    allow_a_from(live, {"namespaceSelector": {"matchLabels": {"team": "b"}}})
    probes = [to_a(f"{other}/o"), to_a(f"{live.ns}/b")]
    live.wait_for(probes, [False, False], timeout=CONVERGENCE)
    live.core.patch_namespace(other, {"metadata": {"labels": {"team": "b"}}})
    live.wait_for(probes, [True, False], timeout=CONVERGENCE)
    live.core.patch_namespace(other, {"metadata": {"labels": {"team": None}}})
    live.wait_for(probes, [False, False], timeout=CONVERGENCE)


def test_reused_ip_does_not_inherit_the_old_pods_allowance(live: Live) -> None:
    ns = live.ns
    allow_a_from(live, {"podSelector": {"matchLabels": {"app": "b"}}})
    live.wait_for([to_a(f"{ns}/b"), to_a(f"{ns}/c")], [True, False], timeout=CONVERGENCE)
    # b goes away; a new pod with another label gets b's IP on the same node
    live.core.delete_namespaced_pod("b", ns, grace_period_seconds=0)
    live.net.delete_pod(ns, "b")
    live.add_pod(ns, "d", f"{ns}-n2", B, {"app": "d"})
    live.net.wait_ready()
    live.wait_for([to_a(f"{ns}/d")], [False], timeout=CONVERGENCE)
    live.label_pod(ns, "d", {"app": "b"})
    live.wait_for([to_a(f"{ns}/d")], [True], timeout=CONVERGENCE)


def test_node_add_and_remove(live: Live) -> None:
    ns = live.ns
    allow_a_from(live, {"podSelector": {"matchLabels": {"app": "b"}}})
    n3 = f"{ns}-n3"
    live.add_node(n3, 3)
    live.add_pod(ns, "e", n3, "10.103.0.30", {"app": "b"})
    live.add_pod(ns, "f", n3, "10.103.0.31", {"app": "a"})  # an isolated pod on the new node
    live.net.wait_ready()
    live.start_agent(n3)
    live.wait_for(
        [to_a(f"{ns}/e"), Probe(f"{ns}/c", "10.103.0.31", 80), Probe(f"{ns}/b", "10.103.0.31", 80)],
        [True, False, True],
        timeout=CONVERGENCE * 2,
    )
    eventually(
        lambda: (
            (
                live.custom.get_cluster_custom_object("nftpolicy.io", "v1alpha1", "noderules", n3)
                .get("status", {})
                .get("appliedGeneration")
            )
            is not None
        ),
        what="the new node's agent to report",
    )
    # the node goes: its pods are deleted, then the Node; its NodeRules disappears
    for pod in ("e", "f"):
        live.core.delete_namespaced_pod(pod, ns, grace_period_seconds=0)
    live.core.delete_node(n3)
    live.kill(f"agent-{n3}")

    def gone() -> bool:
        try:
            live.custom.get_cluster_custom_object("nftpolicy.io", "v1alpha1", "noderules", n3)
        except Exception as e:  # ApiException 404
            return getattr(e, "status", None) == 404
        return False

    eventually(gone, what="NodeRules of the removed node to be deleted")
