"""Unknown endpoints, with real packets: an address of a node's pod range that its NodeRules
do not list gets no new connection in either direction (issue 9, "fail closed")."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from controller.agent.kernel import Kernel
from controller.agent.render import UNKNOWN_COUNTER, RenderOptions
from controller.model import parse_object
from controller.testing.netns import NetnsCluster, Probe
from tests.integration.enforcer import Enforcer

pytestmark = pytest.mark.integration

A, A6 = "10.244.1.10", "fd00:244:1::10"  # n1, known, no policy
U, U6 = "10.244.1.99", "fd00:244:1::99"  # n1, a pod the rules do not list (yet)
B, B6 = "10.244.2.11", "fd00:244:2::11"  # n2, known


def pod_object(name: str, node: str, *ips: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {"nodeName": node, "containers": [{}]},
        "status": {"phase": "Running", "podIPs": [{"ip": ip} for ip in ips]},
    }


def node_object(name: str, *cidrs: str) -> dict[str, Any]:
    return {"kind": "Node", "metadata": {"name": name}, "spec": {"podCIDRs": list(cidrs)}}


@pytest.fixture
def enforcer(netns_cluster: NetnsCluster) -> Enforcer:
    cidrs = {"n1": ("10.244.1.0/24", "fd00:244:1::/64"), "n2": ("10.244.2.0/24", "fd00:244:2::/64")}
    for name, (v4, v6) in cidrs.items():
        netns_cluster.add_node(name, v4, v6)
    for name, node, v4, v6 in (("a", "n1", A, A6), ("u", "n1", U, U6), ("b", "n2", B, B6)):
        netns_cluster.add_pod("x", name, node, v4, v6, tcp_ports=(80,), udp_ports=(80,))
    netns_cluster.wait_ready()
    enforcer = Enforcer(netns_cluster, ["n1", "n2"])
    for name, (v4, v6) in cidrs.items():
        enforcer.feed(parse_object(node_object(name, v4, v6)))
    enforcer.feed(parse_object(pod_object("a", "n1", A, A6)))  # u is not fed: unknown
    enforcer.feed(parse_object(pod_object("b", "n2", B, B6)))
    enforcer.sync()
    return enforcer


KNOWN = [
    Probe("x/b", A, 80),
    Probe("x/a", B, 80),
    Probe("x/b", A6, 80),
    Probe("x/b", A, 80, "udp"),
]
UNKNOWN = [
    Probe("x/b", U, 80),  # into the unknown pod from another node
    Probe("x/u", B, 80),  # out of it
    Probe("x/a", U, 80),  # from a known pod of the same node
    Probe("x/u", A, 80),
    Probe("x/b", U6, 80),
    Probe("x/u", B6, 80),
    Probe("x/b", U, 80, "udp"),
]


def test_an_unknown_address_in_the_pod_range_gets_no_new_connection(
    netns_cluster: NetnsCluster, enforcer: Enforcer
) -> None:
    n1 = Kernel(netns_cluster.node_netns("n1"))
    assert n1.counter_packets(UNKNOWN_COUNTER) == 0
    results = netns_cluster.probe_many(KNOWN + UNKNOWN, 1.0)
    assert results[: len(KNOWN)] == [True] * len(KNOWN), "known pods stay open"
    assert results[len(KNOWN) :] == [False] * len(UNKNOWN), "unknown endpoints are dropped"
    dropped = n1.counter_packets(UNKNOWN_COUNTER)
    assert dropped is not None and dropped >= len(UNKNOWN)  # every probe crosses n1
    n2 = Kernel(netns_cluster.node_netns("n2"))
    assert n2.counter_packets(UNKNOWN_COUNTER) == 0  # U is not in n2's range

    enforcer.feed(parse_object(pod_object("u", "n1", U, U6)))  # its node learns the pod
    enforcer.sync()
    assert netns_cluster.probe_many(UNKNOWN, 1.0) == [True] * len(UNKNOWN)


def test_allow_mode_leaves_unknown_endpoints_open(
    netns_cluster: NetnsCluster, enforcer: Enforcer
) -> None:
    enforcer.options = RenderOptions(log_group=None, unknown_endpoints="allow")
    Kernel(netns_cluster.node_netns("n1")).apply(enforcer.ruleset("n1"))
    enforcer.flush_conntrack()
    assert netns_cluster.probe_many(KNOWN + UNKNOWN, 1.0) == [True] * (len(KNOWN) + len(UNKNOWN))


def test_the_pod_cidrs_option_replaces_the_nodes_ranges(
    netns_cluster: NetnsCluster, enforcer: Enforcer
) -> None:
    """A CNI that does not allocate from spec.podCIDRs: the agent is told the ranges."""
    enforcer.feed(parse_object(node_object("n1")))  # no podCIDRs: protection inactive
    enforcer.sync()
    assert netns_cluster.probe_many(UNKNOWN[:2], 1.0) == [True, True]
    enforcer.options = RenderOptions(
        log_group=None, pod_cidrs=(ipaddress.ip_network("10.244.1.64/26"),)
    )
    Kernel(netns_cluster.node_netns("n1")).apply(enforcer.ruleset("n1"))
    enforcer.flush_conntrack()
    # U (.99) is in the given range, U6 is not (no IPv6 range given)
    assert netns_cluster.probe_many(UNKNOWN, 1.0) == [
        False,
        False,
        False,
        False,
        True,
        True,
        False,
    ]
