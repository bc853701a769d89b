"""Fail closed on real kubelets (issue 9): a new pod is never reachable from a peer its policies
do not allow, not even in the moments before its node has heard of it; an allowed peer reaches
it soon after its IP is reported.

Three sweeper pods connect to every address of the target node's pod range, over and over,
from before the first pod under test exists until after the last is gone: one allowed by the
policies (on another node), two not (one on another node, one on the target node itself). Pods
under test are created one after another in two namespaces: ``fc-deny`` (a deny-all policy) and
``fc-dd`` (isolated by the ``nftpolicy.io/default-deny`` annotation alone); in both an allow
policy lets the allowed sweeper reach the pods labelled ``sweeper-may-connect=yes``.

``NFTPOLICY_E2E_FAIL_CLOSED_PODS`` sets how many pods (default 50).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e import fail_closed as fc
from e2e.cluster import Kubectl, Model, eventually, wait_settled
from e2e.install import IMAGE
from tests.netpol_upstream.model import AGNHOST_IMAGE

CREATIONS = int(os.environ.get("NFTPOLICY_E2E_FAIL_CLOSED_PODS", "50"))
PROBE_NS, DENY_NS, DD_NS = "fc-probe", "fc-deny", "fc-dd"
SWEEPER_LABEL = ("fail-closed-sweeper", "allowed")
# Generous on purpose: a busy two-core machine runs the whole cluster. The figure the issue
# bounds (p99 <= 500 ms) is printed and recorded in the README, not asserted here.
WAIT_BOUND = 30.0


class PodWatch:
    """``kubectl get pods --watch`` on the pods under test, recording when each one's IP first
    appeared in the API and when it was deleted (wall clock, as the sweepers print)."""

    def __init__(self, k: Kubectl) -> None:
        self.reported: dict[str, tuple[float, str]] = {}
        self.gone: dict[str, float] = {}
        self._proc = subprocess.Popen(
            [
                k.binary, f"--kubeconfig={k.kubeconfig}", "get", "pods", "-A",
                "-l", "fail-closed=target", "--watch", "--output-watch-events", "-o", "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        decoder, buffer = json.JSONDecoder(), ""
        for line in self._proc.stdout:
            buffer += line
            try:
                event, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                continue
            buffer = buffer.lstrip()[end:]
            now = time.time()
            obj = event["object"]
            name = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            ip = (obj.get("status") or {}).get("podIP")
            if event["type"] == "DELETED":
                self.gone[name] = now
            elif ip and name not in self.reported:
                self.reported[name] = (now, ip)

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=30)


def namespace(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


@pytest.fixture(scope="module")
def stage(nftpolicy: Model, k: Kubectl) -> Iterator[tuple[str, str, str]]:
    """Namespaces, policies and the three sweepers, running; (target node, its pod range,
    another node)."""
    if len(nftpolicy.nodes) < 2:
        pytest.skip("needs two nodes: the allowed sweeper runs on another node than the targets")
    node, other = nftpolicy.nodes[0], nftpolicy.nodes[1]
    cidrs = k.json("get", "node", node)["spec"].get("podCIDRs") or []
    wanted = [c for c in cidrs if (":" in c) == (nftpolicy.addresses.family == 6)]
    assert wanted, f"node {node} has no IPv{nftpolicy.addresses.family} podCIDR: {cidrs}"
    cidr = wanted[0]
    try:
        k.apply(namespace(PROBE_NS))
        k.apply(namespace(DENY_NS))
        k.apply(namespace(DD_NS, {"nftpolicy.io/default-deny": "ingress"}))
        k.apply(fc.deny_all_ingress(DENY_NS))
        for ns in (DENY_NS, DD_NS):
            k.apply(fc.allow_from_label(ns, *SWEEPER_LABEL))
        sweepers = [
            fc.sweeper_pod("allowed", PROBE_NS, other, IMAGE, cidr, dict([SWEEPER_LABEL])),
            fc.sweeper_pod("denied-remote", PROBE_NS, other, IMAGE, cidr, {}),
            fc.sweeper_pod("denied-local", PROBE_NS, node, IMAGE, cidr, {}),
        ]
        for pod in sweepers:
            k.apply(pod)
        k.run("-n", PROBE_NS, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=300s",
              timeout=320)  # fmt: skip
        for pod in sweepers:
            name = pod["metadata"]["name"]
            eventually(
                lambda name=name: fc.sweep_started(sweeper_log(k, name).splitlines()),
                60,
                f"sweeper {name} to start",
            )
        wait_settled(k)
        yield node, cidr, other
    finally:
        for ns in (DENY_NS, DD_NS, PROBE_NS):
            k.run("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)


def sweeper_log(k: Kubectl, name: str) -> str:
    return k.run("-n", PROBE_NS, "logs", name, timeout=120).stdout


def opened_to_allowed(k: Kubectl, ip: str) -> bool:
    lines = k.run("-n", PROBE_NS, "logs", "allowed", "--since=120s", timeout=60).stdout
    return any(iv.ip == ip for iv in fc.parse_sweep(lines.splitlines()))


def test_new_pods_are_never_reachable_from_disallowed_peers(
    stage: tuple[str, str, str], k: Kubectl
) -> None:
    node, cidr, _other = stage
    watch = PodWatch(k)
    created: dict[str, float] = {}
    open_pods: set[str] = set()
    try:
        for i in range(CREATIONS):
            ns = (DENY_NS, DD_NS)[i % 2]
            open_ = (i // 2) % 2 == 0
            name = f"{ns}/t{i}"
            created[name] = time.time()
            k.apply(fc.target_pod(f"t{i}", ns, node, AGNHOST_IMAGE, open_))
            _at, ip = eventually(lambda n=name: watch.reported.get(n), 120, f"{name}'s IP")
            if open_:
                open_pods.add(name)
                eventually(
                    lambda ip=ip: opened_to_allowed(k, ip),
                    WAIT_BOUND + 30,
                    f"the allowed sweeper to reach {name} ({ip})",
                    interval=0.5,
                )
            else:
                k.run("-n", ns, "wait", "--for=condition=Ready", "pod", f"t{i}",
                      "--timeout=120s", timeout=140)  # fmt: skip
                time.sleep(1)  # known to its node and serving: exposed to every sweeper
            # Delete the previous pod (keeps a few alive at once without waiting on each).
            if i >= 2:
                old_ns, old = (DENY_NS, DD_NS)[(i - 2) % 2], f"t{i - 2}"
                k.run("-n", old_ns, "delete", "pod", old, "--wait=false")
            print(f"[fail-closed] {i + 1}/{CREATIONS} {name} {ip}", flush=True)
        for ns in (DENY_NS, DD_NS):
            k.run("-n", ns, "delete", "pods", "-l", "fail-closed=target", "--timeout=180s",
                  timeout=200)  # fmt: skip
        eventually(lambda: set(watch.gone) >= set(created), 120, "every pod under test gone")
        time.sleep(2)  # the sweepers' last transitions
    finally:
        watch.close()

    lifetimes = [
        fc.Lifetime(name, watch.reported[name][1], created[name], watch.reported[name][0],
                    watch.gone[name])
        for name in created
    ]  # fmt: skip
    logs = {name: sweeper_log(k, name).splitlines() for name in ("allowed", "denied-remote",
                                                                 "denied-local")}  # fmt: skip
    found = {}
    for name, lines in logs.items():
        subjects = [p for p in lifetimes if name != "allowed" or p.name not in open_pods]
        found[name] = fc.breaches(fc.parse_sweep(lines), subjects)
    waits = fc.waits(fc.parse_sweep(logs["allowed"]), [p for p in lifetimes if p.name in open_pods])
    measured = [w for w in waits.values() if w is not None]
    if measured:
        print(
            f"[fail-closed] {len(lifetimes)} pods on {node} ({cidr}); allowed sweeper waited "
            f"p50 {fc.percentile(measured, 50) * 1000:.0f} ms, "
            f"p99 {fc.percentile(measured, 99) * 1000:.0f} ms, "
            f"max {max(measured) * 1000:.0f} ms over {len(measured)} pods "
            "(IP reported -> its packets first reached the pod)"
        )
    assert found == {name: [] for name in logs}, (
        f"disallowed peers' packets reached pods under test: {found}"
    )
    never = [n for n, w in waits.items() if w is None]
    assert not never, f"the allowed sweeper never reached {never}"
    slow = {n: round(w, 3) for n, w in waits.items() if w is not None and w > WAIT_BOUND}
    assert not slow, f"allowed peers waited longer than {WAIT_BOUND} s: {slow}"
