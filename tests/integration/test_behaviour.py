"""Enforcement behaviours beyond the upstream suite, each shown with real packets."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from controller.agent.kernel import Kernel
from controller.model import parse_object
from controller.testing.netns import NetnsCluster, Probe
from tests.integration.enforcer import Enforcer

pytestmark = pytest.mark.integration


def pod(
    name: str,
    node: str,
    ip: str,
    ports: dict[str, int] | None = None,
    host: bool = False,
    **labels: str,
) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "x", "labels": labels},
        "spec": {
            "nodeName": node,
            "hostNetwork": host,
            "containers": [
                {"ports": [{"name": n, "containerPort": p} for n, p in (ports or {}).items()]}
            ],
        },
        "status": {"phase": "Running", "podIP": ip},
    }


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "x"}, "spec": spec}


def build(
    cluster: NetnsCluster, pods: list[dict[str, Any]], tcp: tuple[int, ...] = (80, 81)
) -> Enforcer:
    cluster.add_node("n1", "10.244.1.0/24")
    cluster.add_node("n2", "10.244.2.0/24")
    for p in pods:
        if not p["spec"]["hostNetwork"]:
            cluster.add_pod(
                "x",
                p["metadata"]["name"],
                p["spec"]["nodeName"],
                p["status"]["podIP"],
                tcp_ports=tcp,
                udp_ports=tcp,
            )
    cluster.wait_ready()
    enforcer = Enforcer(cluster, ["n1", "n2"])
    for p in pods:
        enforcer.feed(parse_object(p))
    return enforcer


A, B, C = "10.244.1.10", "10.244.2.11", "10.244.1.12"


def _loop_until(
    stop: threading.Event, cluster: NetnsCluster, probes: list[Probe]
) -> list[list[bool]]:
    rounds = []
    while not stop.is_set():
        rounds.append(cluster.probe_many(probes, 0.5))
    return rounds


def _updates(
    kernel_apply: Callable[[dict[str, Any]], None], rulesets: list[dict[str, Any]], n: int
) -> None:
    for i in range(n):
        kernel_apply(rulesets[i % 2])
        time.sleep(0.01)


def test_updates_are_atomic_under_a_probe_loop(netns_cluster: NetnsCluster) -> None:
    """Swapping between two rulesets that both allow b->a and both deny c->a never lets a
    probe see anything else; a flush-then-fill applier (the control) does."""
    enforcer = build(
        netns_cluster,
        [pod("a", "n1", A, app="a"), pod("b", "n2", B, app="b"), pod("c", "n1", C, app="c")],
    )
    allow_b = {"podSelector": {"matchLabels": {"app": "b"}}}
    rulesets = []
    for extra_port in (None, 81):
        rules: list[dict[str, Any]] = [
            {"from": [allow_b], "ports": [{"port": 80}, {"port": 80, "protocol": "UDP"}]}
        ]
        if extra_port:
            rules.append({"from": [allow_b], "ports": [{"port": extra_port}]})
        enforcer.feed(
            parse_object(policy("p", podSelector={"matchLabels": {"app": "a"}}, ingress=rules))
        )
        rulesets.append(enforcer.ruleset("n1"))
    assert rulesets[0] != rulesets[1]
    kernel = Kernel(netns_cluster.node_netns("n1"))
    kernel.apply(rulesets[0])
    probes = [
        Probe("x/b", A, 80, "tcp"),
        Probe("x/b", A, 80, "udp"),
        Probe("x/c", A, 80, "tcp"),
        Probe("x/c", A, 80, "udp"),
    ]
    expected = [True, True, False, False]
    assert netns_cluster.probe_many(probes, 1.0) == expected

    def run(apply: Callable[[dict[str, Any]], None]) -> list[list[bool]]:
        stop = threading.Event()
        worker = threading.Thread(target=lambda: (_updates(apply, rulesets, 60), stop.set()))
        worker.start()
        try:
            return _loop_until(stop, netns_cluster, probes)
        finally:
            worker.join()

    rounds = run(kernel.apply)
    assert len(rounds) >= 3
    wrong = [r for r in rounds if r != expected]
    assert not wrong, f"{len(wrong)} of {len(rounds)} probe rounds saw a wrong verdict: {wrong[:3]}"

    def flush_then_fill(ruleset: dict[str, Any]) -> None:
        kernel.remove()
        time.sleep(0.05)  # the window a non-atomic agent would have
        kernel.apply(ruleset)

    control = run(flush_then_fill)
    assert any(r[2] or r[3] for r in control), "the probe loop cannot see a non-atomic window"


def test_node_reaches_its_own_pods_but_not_remote_isolated_pods(
    netns_cluster: NetnsCluster,
) -> None:
    enforcer = build(netns_cluster, [pod("a", "n1", A, app="a"), pod("b", "n2", B, app="b")])
    enforcer.feed(
        parse_object(policy("deny-all", podSelector={}, policyTypes=["Ingress", "Egress"]))
    )
    enforcer.sync()
    results = netns_cluster.probe_many(
        [
            Probe("node:n1", A, 80),
            Probe("node:n2", B, 81, "udp"),
            Probe("node:n2", A, 80),
            Probe("x/b", A, 80),
        ],
        0.5,
    )
    assert results == [True, True, False, False]


def test_host_network_pods_are_not_enforced(netns_cluster: NetnsCluster) -> None:
    enforcer = build(netns_cluster, [pod("b", "n2", B, app="b")])
    node_ip = next(n.ipv4 for n in netns_cluster.nodes if n.name == "n1")
    netns_cluster.add_pod("x", "h", "n1", None, tcp_ports=(8443,), udp_ports=(), host_network=True)
    enforcer.feed(parse_object(pod("h", "n1", node_ip, {"https": 8443}, host=True, app="h")))
    enforcer.feed(
        parse_object(
            policy("deny-h", podSelector={"matchLabels": {"app": "h"}}, policyTypes=["Ingress"])
        )
    )
    enforcer.sync()
    assert netns_cluster.probe("x/b", node_ip, 8443, timeout=1.0)


def test_named_port_resolves_to_each_destinations_own_number(netns_cluster: NetnsCluster) -> None:
    pods = [
        pod("a", "n1", A, {"http": 8080}, app="a"),
        pod("b", "n2", B, {"http": 81}, app="b"),
        pod("c", "n1", C, app="c"),
    ]
    enforcer = build(netns_cluster, pods, tcp=(80, 81, 8080))
    enforcer.feed(
        parse_object(
            policy(
                "c-out",
                podSelector={"matchLabels": {"app": "c"}},
                policyTypes=["Egress"],
                egress=[{"ports": [{"port": "http"}]}],
            )
        )
    )
    enforcer.feed(
        parse_object(
            policy(
                "in",
                podSelector={"matchLabels": {"app": "a"}},
                ingress=[{"ports": [{"port": "http"}]}],
            )
        )
    )
    enforcer.sync()
    probes = [
        Probe("x/c", A, 8080),
        Probe("x/c", A, 81),
        Probe("x/c", B, 81),
        Probe("x/c", B, 8080),
        Probe("x/b", A, 8080),
        Probe("x/b", A, 80),
    ]
    assert netns_cluster.probe_many(probes, 0.5) == [True, False, True, False, True, False]
