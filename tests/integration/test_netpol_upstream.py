"""The upstream Kubernetes NetworkPolicy e2e cases, enforced by real nftables.

Each case of ``tests/netpol_upstream`` runs on a cluster of network namespaces (3 namespaces
x 3 pods on two nodes, dual-stack, TCP and UDP servers on 80 and 81). Actions are fed to the
incremental compiler as watch events would be, every node's table is applied in its node
namespace, and the full 9x9 matrix is probed with real connections and compared with the
upstream truth table (src == dst ignored, as upstream does).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.testing.netns import (
    NetnsCluster,
    Probe,
    cleanup_dead_runs,
    unavailable_reason,
)
from tests.integration.enforcer import Enforcer
from tests.netpol_upstream import model
from tests.netpol_upstream.cases import CASES, Case
from tests.netpol_upstream.model import ALL_PODS, Addresses, Reachability
from tests.netpol_upstream.replay import Deleted, Replay

pytestmark = pytest.mark.integration

NODES = ("node-1", "node-2")
TIMEOUT = 0.6  # for a denied probe; allowed answers arrive in well under a millisecond
RETRY_TIMEOUT = 3.0  # a probe expected to pass but failed gets one more, patient try


def node_of(ns: str, pod: str) -> str:
    # a and c share node-1, b is on node-2: same-node and cross-node paths in every matrix
    return NODES[model.POD_NAMES.index(pod) % 2]


def ip_of(ns: str, pod: str) -> tuple[str, str]:
    i, j = model.NAMESPACES.index(ns), model.POD_NAMES.index(pod)
    node = NODES.index(node_of(ns, pod)) + 1
    return f"10.244.{node}.{10 * (i + 1) + j}", f"fd00:244:{node}::{10 * (i + 1) + j:x}"


POD_DICTS = model.pods(node_of, ip_of)


@pytest.fixture(scope="module")
def upstream_cluster() -> Iterator[NetnsCluster]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"netns cluster unavailable: {reason}")
    cleanup_dead_runs()
    with NetnsCluster() as cluster:
        for i, node in enumerate(NODES):
            cluster.add_node(node, f"10.244.{i + 1}.0/24", f"fd00:244:{i + 1}::/64")
        for pod in ALL_PODS:
            ns, name = model.split_pod_string(pod)
            v4, v6 = ip_of(ns, name)
            cluster.add_pod(ns, name, node_of(ns, name), v4, v6)
        cluster.wait_ready()
        yield cluster


def observe(
    cluster: NetnsCluster, addresses: Addresses, port: int, protocol: str, expected: Reachability
) -> dict[tuple[str, str], bool]:
    pairs = [(s, d) for s in ALL_PODS for d in ALL_PODS]
    probes = [Probe(s, addresses.ip(d), port, protocol.lower()) for s, d in pairs]
    results = cluster.probe_many(probes, TIMEOUT)
    observed = dict(zip(pairs, results, strict=True))
    # Guard against a slow machine: re-probe, patiently, what should have passed but did not.
    retry = [p for p in pairs if expected[p] and not observed[p] and p[0] != p[1]]
    if retry:
        again = cluster.probe_many(
            [Probe(s, addresses.ip(d), port, protocol.lower()) for s, d in retry], RETRY_TIMEOUT
        )
        observed.update(zip(retry, again, strict=True))
    return observed


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_upstream_case(upstream_cluster: NetnsCluster, case: Case, family: int) -> None:
    addresses = Addresses.from_pods(POD_DICTS, family)
    replay = Replay(POD_DICTS, addresses)
    enforcer = Enforcer(upstream_cluster, list(NODES))
    for obj in replay.objects():
        enforcer.feed(obj)
    try:
        for n, step in enumerate(case.steps):
            for action in step.actions:
                event = replay.apply(action)
                if isinstance(event, Deleted):
                    enforcer.compiler.delete_policy(event.key)
                else:
                    enforcer.feed(event)
            enforcer.sync()
            for probe in step.probes:
                observed = observe(
                    upstream_cluster, addresses, probe.port, probe.protocol, probe.expected
                )
                mismatches = probe.expected.compare(observed)
                assert not mismatches, probe.expected.format_comparison(
                    observed,
                    title=f"{case.name}: step {n} {probe.protocol}/{probe.port} IPv{family}",
                )
    finally:
        enforcer.clear()
