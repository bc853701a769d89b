"""Random clusters on real nftables: every probed verdict must equal ``controller.semantics``.

Hypothesis generates namespaces, labels, named ports, policies and default-deny settings for
a fixed pool of real pod namespaces (two nodes, dual-stack, TCP and UDP servers on every
port the generator uses); each example is compiled, applied to both nodes, and every ordered
pod pair is probed on every (protocol, port) over IPv4 and IPv6.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from controller.model import Protocol, parse_object
from controller.model.config import DefaultDeny
from controller.model.direction import parse_direction_set
from controller.semantics import Snapshot, evaluate
from controller.testing.netns import (
    NetnsCluster,
    Probe,
    cleanup_dead_runs,
    unavailable_reason,
)
from tests.cluster_strategies import NODES, PORTS, GeneratedCluster, clusters, pod_ipv4, pod_ipv6
from tests.integration.enforcer import Enforcer

pytestmark = pytest.mark.integration

POOL = 5
SERVED = (*PORTS, 53)
TIMEOUT = 0.5
RETRY_TIMEOUT = 3.0


def slot(i: int) -> tuple[str, str, str]:
    node = i % len(NODES)
    return NODES[node], pod_ipv4(node, i), pod_ipv6(node, i)


@pytest.fixture(scope="module")
def pool() -> Iterator[NetnsCluster]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"netns cluster unavailable: {reason}")
    cleanup_dead_runs()
    with NetnsCluster() as cluster:
        for n, node in enumerate(NODES):
            cluster.add_node(node, f"10.244.{n + 1}.0/24", f"fd00:244:{n + 1}::/64")
        for i in range(POOL):
            node, v4, v6 = slot(i)
            cluster.add_pod("pool", f"pod{i}", node, v4, v6, tcp_ports=SERVED, udp_ports=SERVED)
        cluster.wait_ready()
        yield cluster


def place_on_pool(cluster: GeneratedCluster) -> list[dict[str, Any]]:
    """Pin generated pod i to pool slot i (node and addresses)."""
    out = []
    for obj in cluster.objects:
        if obj["kind"] == "Pod":
            i = int(obj["metadata"]["name"].removeprefix("pod"))
            node, v4, v6 = slot(i)
            obj = {
                **obj,
                "spec": {**obj["spec"], "nodeName": node},
                "status": {"phase": "Running", "podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}]},
            }
        out.append(obj)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(clusters(max_pods=POOL, max_policies=4))
def test_kernel_verdicts_equal_semantics(pool: NetnsCluster, cluster: GeneratedCluster) -> None:
    objects = [parse_object(o) for o in place_on_pool(cluster)]
    config = DefaultDeny(directions=parse_direction_set(cluster.default_deny, "", ""))
    enforcer = Enforcer(pool, list(NODES), config)
    for obj in objects:
        enforcer.feed(obj)
    enforcer.sync()
    try:
        snap = Snapshot.of(objects, config)
        pods = [p for p in snap.pods]
        cases = []
        for src, dst in itertools.permutations(pods, 2):
            for family, (proto, port) in itertools.product(
                (0, 1), itertools.product(("tcp", "udp"), SERVED)
            ):
                cases.append((src, dst, family, proto, port))
        probes = [
            Probe(f"pool/{s.name}", str(d.addresses[f]), port, proto)
            for s, d, f, proto, port in cases
        ]
        want = [
            evaluate(snap, s.addresses[f], d.addresses[f], Protocol(proto.upper()), port)
            for s, d, f, proto, port in cases
        ]
        got = pool.probe_many(probes, TIMEOUT)
        retry = [i for i, (w, g) in enumerate(zip(want, got, strict=True)) if w.allowed and not g]
        if retry:
            again = pool.probe_many([probes[i] for i in retry], RETRY_TIMEOUT)
            for i, ok in zip(retry, again, strict=True):
                got[i] = ok
        wrong = [
            f"{p.src} -> {p.dst_ip} {p.proto}/{p.port}: kernel {'allowed' if g else 'denied'}, "
            f"semantics {w}"
            for p, w, g in zip(probes, want, got, strict=True)
            if w.allowed != g
        ]
        assert not wrong, "\n".join(wrong[:20])
    finally:
        enforcer.clear()
