"""Failures only a real cluster (kubelet, scheduler, controllers) can stage.

* An agent pod is deleted: the kernel keeps enforcing its node's table meanwhile, the
  DaemonSet recreates the pod, and the new agent applies later changes.
* The node running the leading operator is drained: the operator pod is evicted (the
  PodDisruptionBudget keeps one replica), the standby takes the Lease over and publishes the
  next change, and the agents on the cordoned node keep enforcing.
* The leading operator's pod is deleted: the same hand-over, without a drain.
* An agent is killed (no grace) while it applies a large change, three times over: no window
  in which denied traffic passes, and every replacement converges.
"""

from __future__ import annotations

import functools
import threading
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


def test_deleting_the_leading_operator_pod_hands_over(
    nftpolicy: Model, k: Kubectl, prober: Prober, clean: None
) -> None:
    """The leader's pod deleted outright (not drained): the standby, or the Deployment's
    replacement, takes the Lease and publishes the next change; enforcement never lapses."""
    m = nftpolicy
    k.apply(deny_ingress_to_a())
    expect(k, prober, m, [False, False, True])
    leader = eventually(lambda: lease_holder(k), 60, "a Lease holder")
    k.run("-n", install.NAMESPACE, "delete", "pod", leader, "--wait=false")
    result = prober.probe(PROBES, m.addresses, 80, "TCP")
    assert [result[p] for p in PROBES] == [False, False, True], result
    new_leader = eventually(
        lambda: (h := lease_holder(k)) not in (None, leader) and h,
        90,
        f"another operator to take the Lease from the deleted {leader}",
    )
    print(f"Lease: {leader} (deleted) -> {new_leader}")
    k.apply(allow_b_to_a())
    expect(k, prober, m, [True, False, True])
    wait_settled(k)
    eventually(
        lambda: len([p for p in pods(k, install.OPERATOR_SELECTOR) if ready(p)]) == 2,
        180,
        "two Ready operator replicas again",
    )


def many_excepts(name: str, count: int, third: int) -> dict[str, Any]:
    """A policy for x/a that is costly to render and apply (``count`` except entries) and
    allows nothing that exists: its block is TEST-NET-2 (198.51.100.0/24 and its /16), where no
    pod lives, so the denied probes must stay denied whichever version is in force."""
    excepts = [f"198.{third}.{i // 256}.{i % 256}/32" for i in range(count)]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {"from": [{"ipBlock": {"cidr": f"198.{third}.0.0/16", "except": excepts}}]}
            ],
        },
    }


def newer_rules(k: Kubectl, node: str, than: int) -> dict[str, Any] | None:
    rules: dict[str, Any] = k.json("get", "noderules.nftpolicy.io", node)
    return rules if rules["metadata"]["generation"] > than else None


class DeniedWatch:
    """Probes pairs that must stay denied, over and over in a thread, and keeps every pair
    that connected: a window in which the node was open would show up here."""

    def __init__(self, prober: Prober, m: Model, pairs: list[tuple[str, str]]) -> None:
        self.prober, self.m, self.pairs = prober, m, pairs
        self.rounds = 0
        self.opened: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            result = self.prober.probe(self.pairs, self.m.addresses, 80, "TCP")
            self.opened += [p for p, ok in result.items() if ok]
            self.rounds += 1

    def __enter__(self) -> DeniedWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def test_agent_killed_while_applying_keeps_enforcing_and_converges(
    nftpolicy: Model, k: Kubectl, prober: Prober, clean: None
) -> None:
    """The agent killed (SIGKILL, no grace) right after its NodeRules changed, three times, while
    it renders and applies a policy of thousands of entries: the node's table is either the old
    one or the new one, never none (the denied pairs never connect, probed throughout); each
    replacement agent applies the newest generation; the last one takes later changes."""
    m = nftpolicy
    node = node_of(TARGET, m.nodes)
    k.apply(deny_ingress_to_a())
    expect(k, prober, m, [False, False, True])
    wait_settled(k)
    behind_at_kill = 0
    try:
        with DeniedWatch(prober, m, [("y/b", TARGET), ("z/c", TARGET)]) as watch:
            for round_ in range(3):
                before = k.json("get", "noderules.nftpolicy.io", node)["metadata"]["generation"]
                k.apply(many_excepts("e2e-many-excepts", 8000 + round_, 51 + round_))
                rules = eventually(
                    functools.partial(newer_rules, k, node, before),
                    60,
                    f"{node}'s NodeRules to change",
                    interval=0.1,
                )
                agent = agent_on(k, node)
                assert agent is not None
                k.run(
                    "-n", install.NAMESPACE, "delete", "pod", agent["metadata"]["name"],
                    "--grace-period=0", "--force", "--wait=false",
                )  # fmt: skip
                status = rules.get("status") or {}
                if status.get("appliedGeneration") != rules["metadata"]["generation"]:
                    behind_at_kill += 1

                def replaced(old: str = agent["metadata"]["uid"]) -> bool:
                    new = agent_on(k, node)
                    return bool(new and new["metadata"]["uid"] != old and ready(new))

                eventually(replaced, 180, f"a new Ready agent pod on {node}")
                wait_settled(k, timeout=120)
        print(f"killed 3 times, {behind_at_kill} before the new generation was applied; "
              f"{watch.rounds} probe rounds, opened: {watch.opened}")  # fmt: skip
        assert watch.rounds >= 3, "the watch hardly probed: the test proves nothing"
        assert watch.opened == [], (
            f"denied pairs connected while the agent restarted: {watch.opened}"
        )
        k.apply(allow_b_to_a())
        expect(k, prober, m, [True, False, True])
    finally:
        k.run("-n", "x", "delete", "networkpolicy", "e2e-many-excepts", "--ignore-not-found")
