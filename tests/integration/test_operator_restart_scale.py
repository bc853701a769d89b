"""An operator restart over thousands of objects: leading within seconds, no write, quiet log.

The operator runs as a real process against the real API server; the pods are API objects
only (no kubelet, no network namespaces), unscheduled so they can be deleted at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kubernetes import client, config

from controller.resources import GROUP, NODE_RULES, VERSION
from controller.testing.apiserver import TestControlPlane
from tests.integration.live import install_crds
from tests.integration.proxy import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PODS = 4000
# kopf's index barrier made a restart quadratic: 84 s to lead at 4k pods on an idle machine
# (17.5 s at 2k, 328 s at 8k). Without it a few seconds; this holds on a loaded machine.
LEAD_BOUND = 40.0
SLACK = 120.0  # a deadline on a loaded machine, never a measured bound
M = "nftpolicy_operator_"


@pytest.fixture
def crowded(control_plane: TestControlPlane) -> Iterator[tuple[client.ApiClient, str]]:
    """A namespace of PODS pods (the first ten on a node, with IPs; the rest unscheduled)
    and a policy isolating some of them, so there is something to publish."""
    install_crds(control_plane)
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    core = client.CoreV1Api(api)
    networking = client.NetworkingV1Api(api)
    ns = node = f"crowd-{os.getpid()}"
    core.create_namespace({"metadata": {"name": ns}})
    core.create_node({"metadata": {"name": node}, "spec": {"podCIDR": "10.200.0.0/24"}})

    def create(k: int) -> None:
        spec: dict[str, object] = {"containers": [{"name": "c", "image": "agnhost"}]}
        if k < 10:
            spec["nodeName"] = node
        body = {"metadata": {"name": f"p{k:05d}", "labels": {"app": f"a{k % 10}"}}, "spec": spec}
        core.create_namespaced_pod(ns, body, _preload_content=False)
        if k < 10:
            ip = f"10.200.0.{10 + k}"
            status = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
            core.patch_namespaced_pod_status(f"p{k:05d}", ns, status, _preload_content=False)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(PODS)))
    selector = {"matchLabels": {"app": "a1"}}
    networking.create_namespaced_network_policy(
        ns, {"metadata": {"name": "deny-a1"}, "spec": {"podSelector": selector}}
    )
    try:
        yield api, ns
    finally:
        core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
        networking.delete_namespaced_network_policy("deny-a1", ns)
        core.delete_node(node)
        with contextlib.suppress(client.exceptions.ApiException):  # published: remove it
            client.CustomObjectsApi(api).delete_cluster_custom_object(
                GROUP, VERSION, NODE_RULES, node
            )


class Operator:
    def __init__(self, plane: TestControlPlane, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.started = time.monotonic()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "controller.cli",
                    "operator",
                    "--lease-namespace",
                    "default",
                    "--identity",
                    "crowd",
                    "--metrics-port",
                    str(self.port),
                    "--kubeconfig",
                    str(plane.kubeconfig),
                    "--log-level",
                    "info",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            lines = r.read().decode().splitlines()
        return {
            name: float(value)
            for name, _, value in (line.rpartition(" ") for line in lines)
            if name and not name.startswith("#")
        }

    def wait(self, what: str, check: object, timeout: float) -> float:
        """Seconds since start when ``check()`` first held."""
        assert callable(check)
        deadline = time.monotonic() + timeout
        while not check():
            assert self.proc.poll() is None, f"operator exited\n{self.text()[-5000:]}"
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.text()[-5000:]}")
            time.sleep(0.1)
        return time.monotonic() - self.started

    def settled(self) -> float:
        """Wait until nothing is pending and the write count stays put for 2 s."""
        last: list[float] = [-1.0, time.monotonic()]

        def quiet() -> bool:
            m = self.metrics()
            if m[M + "writes_total"] != last[0]:
                last[:] = [m[M + "writes_total"], time.monotonic()]
            return m[M + "pending_writes"] == 0 and time.monotonic() - last[1] >= 2.0

        self.wait("the first publish to complete", quiet, SLACK)
        return last[0]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_restart_over_thousands_of_pods_leads_within_seconds_and_writes_nothing(
    control_plane: TestControlPlane, crowded: tuple[client.ApiClient, str], tmp_path: Path
) -> None:
    """Catches: a per-object barrier in the initial sync (kopf indexes: each listed object's
    first handler call waits on one condition notified per object indexed, quadratic), a
    restart that rewrites what is published, and kopf's info line per event (thousands of
    lines per restart)."""
    first = Operator(control_plane, tmp_path / "first.log")
    try:
        first.wait("the first operator to lead", lambda: "leading:" in first.text(), SLACK)
        assert first.settled() > 0, "nothing was published"
    finally:
        first.stop()

    second = Operator(control_plane, tmp_path / "second.log")
    try:
        took = second.wait(
            "the restarted operator to lead", lambda: "leading:" in second.text(), SLACK
        )
        writes = second.settled()
        text = second.text()
    finally:
        second.stop()
    print(f"restart over {PODS} pods: leading {took:.1f} s after start; {writes:.0f} writes")
    assert took <= LEAD_BOUND, f"restart took {took:.1f} s to lead\n{text[-3000:]}"
    assert writes == 0, "a restart with nothing changed wrote objects"
    match = re.search(r"initial listing: Pod: (\d+) objects", text)
    assert match and int(match.group(1)) >= PODS, text[-3000:]
    assert text.count("\n") < 200, f"{text.count(chr(10))} log lines:\n{text[-3000:]}"
