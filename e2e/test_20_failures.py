"""Failures only a real cluster (kubelet, scheduler, controllers) can stage.

* An agent pod is deleted: the kernel keeps enforcing its node's table meanwhile, the
  DaemonSet recreates the pod, and the new agent applies later changes.
* The node running the leading operator is drained: the operator pod is evicted (the
  PodDisruptionBudget keeps one replica), the standby takes the Lease over and publishes the
  next change, and the agents on the cordoned node keep enforcing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e import install
from e2e.cluster import (
    Kubectl,
    Model,
    Prober,
    agent_on,
    eventually,
    lease_holder,
    pods,
    ready,
    wait_settled,
)
from e2e.netpol import node_of

TARGET = "x/a"


def deny_ingress_to_a() -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "e2e-deny-a", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]},
    }


def allow_b_to_a() -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "e2e-allow-b", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}]}
            ],
        },
    }


# y/b is on the other worker than x/a, z/c on the same one: both paths are checked.
PROBES = [("y/b", TARGET), ("z/c", TARGET), ("y/b", "x/b")]


def expect(k: Kubectl, prober: Prober, m: Model, want: list[bool], timeout: float = 60) -> None:
    got: list[bool] = []

    def matches() -> bool:
        nonlocal got
        result = prober.probe(PROBES, m.addresses, 80, "TCP")
        got = [result[p] for p in PROBES]
        return got == want

    try:
        eventually(matches, timeout, f"{PROBES} -> {want}", interval=2.0)
    except AssertionError as e:
        raise AssertionError(f"{e}; last observed {got}") from None


@pytest.fixture
def clean(k: Kubectl) -> Iterator[None]:
    yield
    for name in ("e2e-deny-a", "e2e-allow-b"):
        k.run("-n", "x", "delete", "networkpolicy", name, "--ignore-not-found")


def test_deleted_agent_pod_is_recreated_and_enforcement_continues(
    nftpolicy: Model, k: Kubectl, prober: Prober, clean: None
) -> None:
    m = nftpolicy
    node = node_of(TARGET, m.nodes)
    k.apply(deny_ingress_to_a())
    expect(k, prober, m, [False, False, True])

    old = agent_on(k, node)
    assert old is not None
    k.run("-n", install.NAMESPACE, "delete", "pod", old["metadata"]["name"], "--wait=false")
    # While no agent runs on the node, its table stays in the kernel.
    for _ in range(3):
        result = prober.probe(PROBES, m.addresses, 80, "TCP")
        assert [result[p] for p in PROBES] == [False, False, True], result
        time.sleep(1)

    def replaced() -> dict[str, Any] | None:
        new = agent_on(k, node)
        if new and new["metadata"]["uid"] != old["metadata"]["uid"] and ready(new):
            return new
        return None

    eventually(replaced, 180, f"a new Ready agent pod on {node}")
    k.run("-n", install.NAMESPACE, "rollout", "status", "daemonset", "--timeout=180s")

    # The new agent applies what changes next: allow from b, then drop the deny entirely.
    k.apply(allow_b_to_a())
    expect(k, prober, m, [True, False, True])
    k.run("-n", "x", "delete", "networkpolicy", "e2e-deny-a", "e2e-allow-b")
    expect(k, prober, m, [True, True, True])
    wait_settled(k)


def test_draining_the_leaders_node_hands_over_and_enforcement_continues(
    nftpolicy: Model, k: Kubectl, prober: Prober, clean: None
) -> None:
    m = nftpolicy
    leader = eventually(lambda: lease_holder(k), 60, "a Lease holder")
    by_name = {p["metadata"]["name"]: p for p in pods(k, install.OPERATOR_SELECTOR)}
    assert leader in by_name, f"Lease holder {leader} is no operator pod: {sorted(by_name)}"
    node = by_name[leader]["spec"]["nodeName"]
    k.apply(deny_ingress_to_a())
    expect(k, prober, m, [False, False, True])
    try:
        k.run(
            "drain",
            node,
            f"--pod-selector={install.OPERATOR_SELECTOR}",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=240s",
            timeout=300,
        )
        new_leader = eventually(
            lambda: (h := lease_holder(k)) not in (None, leader) and h,
            90,
            f"another operator to take the Lease from {leader}",
        )
        assert new_leader in {p["metadata"]["name"] for p in pods(k, install.OPERATOR_SELECTOR)}
        # The agents on the cordoned node were not evicted and keep the last rules ...
        assert agent_on(k, node) is not None
        result = prober.probe(PROBES, m.addresses, 80, "TCP")
        assert [result[p] for p in PROBES] == [False, False, True], result
        # ... and the new leader publishes the next change, which every node enforces.
        k.apply(allow_b_to_a())
        expect(k, prober, m, [True, False, True])
        wait_settled(k)
    finally:
        k.run("uncordon", node, check=False)
    eventually(
        lambda: len([p for p in pods(k, install.OPERATOR_SELECTOR) if ready(p)]) == 2,
        180,
        "two Ready operator replicas again",
    )
