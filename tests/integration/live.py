"""A live nftpolicy installation for tests: real API server, operator and one agent per node.

Pods are network namespaces (``NetnsCluster``) and Pod objects whose status the harness
patches the way a kubelet would. The operator and the agents run as real processes of the
``nftpolicy`` command; agents run in the test's network namespace and apply into their node's
namespace (``--netns``), as a hostNetwork DaemonSet pod would on its node.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client, config

from controller.testing.apiserver import TestControlPlane
from controller.testing.netns import NetnsCluster, Probe

ROOT = Path(__file__).parents[2]
CRDS = ROOT / "charts" / "nftpolicy" / "crds"


def install_crds(plane: TestControlPlane) -> None:
    subprocess.run(
        [
            plane.kubectl_path or "kubectl",
            "--kubeconfig",
            str(plane.kubeconfig),
            "apply",
            "-f",
            str(CRDS),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            plane.kubectl_path or "kubectl",
            "--kubeconfig",
            str(plane.kubeconfig),
            "wait",
            "--for",
            "condition=Established",
            "crd/addressgroups.nftpolicy.io",
            "crd/noderules.nftpolicy.io",
        ],
        check=True,
        capture_output=True,
    )


class Live:
    def __init__(self, plane: TestControlPlane, net: NetnsCluster, logs: Path) -> None:
        self.plane = plane
        self.net = net
        self.logs = logs
        self.api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.networking = client.NetworkingV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ns = f"t-{uuid.uuid4().hex[:6]}"  # namespaces never go away without a KCM

    # ---- processes -------------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        args: Sequence[str],
        log_level: str = "debug",
        kubeconfig: Path | None = None,
    ) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.processes[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.cli",
                *args,
                "--kubeconfig",
                str(kubeconfig or self.plane.kubeconfig),
                "--log-level",
                log_level,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    # At debug level the agents' conntrack clean-up logs every netlink message (hundreds of
    # MB per minute of probing), which slows them down: long runs pass log_level="info".
    def start_operator(self, name: str = "operator", log_level: str = "debug") -> None:
        self._spawn(
            name, ["operator", "--lease-namespace", "default", "--identity", name], log_level
        )

    def start_agent(
        self,
        node: str,
        log_level: str = "debug",
        kubeconfig: Path | None = None,
        metrics_port: int = 0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._spawn(
            f"agent-{node}",
            [
                "agent",
                "--node",
                node,
                "--netns",
                self.net.node_netns(node),
                "--resync-period",
                "5",
                "--metrics-port",
                str(metrics_port),
                "--state-dir",
                str(self.state_dir(node)),
                *extra_args,
            ],
            log_level,
            kubeconfig,
        )

    def state_dir(self, node: str) -> Path:
        """Where ``node``'s agent keeps its last applied ruleset (the host's /var/lib/nftpolicy)."""
        return self.logs / f"state-{node}"

    def kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.processes.pop(name)
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        for name in list(self.processes):
            self.kill(name)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    # ---- cluster objects -------------------------------------------------------------------

    def add_node(self, name: str, index: int) -> None:
        node = self.net.add_node(name, f"10.{100 + index}.0.0/24")
        self.core.create_node(
            {
                "metadata": {"name": name},
                "spec": {"podCIDR": node.pod_cidr_v4, "podCIDRs": [node.pod_cidr_v4]},
            }
        )
        self.core.patch_node_status(
            name, {"status": {"addresses": [{"type": "InternalIP", "address": node.ipv4}]}}
        )

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})

    def add_pod(
        self,
        ns: str,
        name: str,
        node: str,
        ip: str,
        labels: dict[str, str],
        ports: Sequence[int] = (80,),
    ) -> None:
        self.net.add_pod(ns, name, node, ip, tcp_ports=ports, udp_ports=ports)
        container = {
            "name": "c",
            "image": "agnhost",
            "ports": [{"containerPort": p, "name": f"p{p}"} for p in ports],
        }
        self.core.create_namespaced_pod(
            ns,
            {
                "metadata": {"name": name, "labels": labels},
                "spec": {"nodeName": node, "containers": [container]},
            },
        )
        self.core.patch_namespaced_pod_status(
            name, ns, {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
        )

    def label_pod(self, ns: str, name: str, labels: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod(name, ns, {"metadata": {"labels": labels}})

    def apply_policy(self, ns: str, policy: dict[str, Any]) -> None:
        body = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", **policy}
        name = body["metadata"]["name"]
        try:
            self.networking.read_namespaced_network_policy(name, ns)
            self.networking.replace_namespaced_network_policy(name, ns, body)
        except client.exceptions.ApiException as e:
            if e.status != 404:
                raise
            self.networking.create_namespaced_network_policy(ns, body)

    def delete_policy(self, ns: str, name: str) -> None:
        self.networking.delete_namespaced_network_policy(name, ns)

    # ---- observing -------------------------------------------------------------------------

    def wait_for(
        self, probes: Sequence[Probe], expected: Sequence[bool], timeout: float = 10.0
    ) -> float:
        """Probe until the results equal ``expected``; returns the seconds it took."""
        start = time.monotonic()
        last: list[bool] = []
        while time.monotonic() - start < timeout:
            last = self.net.probe_many(probes, 0.3)
            if last == list(expected):
                return time.monotonic() - start
        raise AssertionError(
            f"not converged after {timeout:.0f} s: got {last}, want {list(expected)}\n"
            + "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in self.processes)
        )

    def events(self, ns: str, name: str) -> list[str]:
        items = self.core.list_namespaced_event(
            ns, field_selector=f"involvedObject.name={name}"
        ).items
        return [f"{e.reason}: {e.message}" for e in items]


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ---- additions for the upstream suite on a live cluster (tests/integration/test_netpol_upstream_live.py)


def add_node_dual_stack(live: Live, name: str, pod_cidr_v4: str, pod_cidr_v6: str | None) -> None:
    """Like ``Live.add_node`` with explicit pod CIDRs, IPv6 optional (node addresses of both
    families are reported as InternalIPs, as a dual-stack kubelet does)."""
    node = live.net.add_node(name, pod_cidr_v4, pod_cidr_v6)
    cidrs = [c for c in (pod_cidr_v4, pod_cidr_v6) if c]
    live.core.create_node(
        {"metadata": {"name": name}, "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}}
    )
    addresses = [{"type": "InternalIP", "address": node.ipv4}]
    if pod_cidr_v6:
        addresses.append({"type": "InternalIP", "address": node.ipv6})
    live.core.patch_node_status(name, {"status": {"addresses": addresses}})


def add_pod_object(
    live: Live,
    pod: dict[str, Any],
    ipv4: str,
    ipv6: str | None,
    tcp_ports: Sequence[int] = (80, 81),
    udp_ports: Sequence[int] = (80, 81),
) -> None:
    """A netns pod plus its Pod object, from a full Pod dict (``metadata.name/namespace/labels``
    and ``spec`` are used; ``status`` is patched afterwards like a kubelet would: Running,
    Ready, ``podIP``/``podIPs``)."""
    meta = pod["metadata"]
    ns, name = meta["namespace"], meta["name"]
    live.net.add_pod(
        ns, name, pod["spec"]["nodeName"], ipv4, ipv6, tcp_ports=tcp_ports, udp_ports=udp_ports
    )
    live.core.create_namespaced_pod(
        ns,
        {"metadata": {"name": name, "labels": dict(meta.get("labels") or {})}, "spec": pod["spec"]},
    )
    ips = [ip for ip in (ipv4, ipv6) if ip]
    live.core.patch_namespaced_pod_status(
        name,
        ns,
        {
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "podIP": ips[0],
                "podIPs": [{"ip": ip} for ip in ips],
            }
        },
    )


def _label_patch(current: dict[str, str] | None, labels: dict[str, str]) -> dict[str, Any]:
    """JSON merge patch making the label set exactly ``labels`` (others set to None)."""
    return {
        "metadata": {"labels": {**{k: None for k in current or {} if k not in labels}, **labels}}
    }


def set_pod_labels(live: Live, ns: str, name: str, labels: dict[str, str]) -> None:
    """Replace the complete label set of a pod."""
    current = live.core.read_namespaced_pod(name, ns).metadata.labels
    live.core.patch_namespaced_pod(name, ns, _label_patch(current, labels))


def set_namespace_labels(live: Live, name: str, labels: dict[str, str]) -> None:
    """Replace the complete label set of a namespace (the API server keeps
    ``kubernetes.io/metadata.name`` whatever is asked)."""
    current = live.core.read_namespace(name).metadata.labels
    live.core.patch_namespace(name, _label_patch(current, labels))


def delete_all_policies(live: Live, namespaces: Sequence[str]) -> list[str]:
    """Delete every NetworkPolicy in ``namespaces``; returns their ``ns/name``."""
    deleted = []
    for ns in namespaces:
        for policy in live.networking.list_namespaced_network_policy(ns).items:
            live.networking.delete_namespaced_network_policy(policy.metadata.name, ns)
            deleted.append(f"{ns}/{policy.metadata.name}")
    return deleted


def rules_applied(live: Live, nodes: Sequence[str]) -> bool:
    """Every node's NodeRules exists and its agent reported applying its current generation."""
    for node in nodes:
        try:
            obj = live.custom.get_cluster_custom_object(
                "nftpolicy.io", "v1alpha1", "noderules", node
            )
        except client.exceptions.ApiException as e:
            if e.status == 404:
                return False
            raise
        applied = (obj.get("status") or {}).get("appliedGeneration")
        if applied is None or int(applied) < int(obj["metadata"].get("generation", 0)):
            return False
    return True


def enforced_events(live: Live, ns: str, uid: str) -> int:
    """How many ``Enforced`` Events the operator posted for the policy with this uid."""
    items = live.core.list_namespaced_event(ns, field_selector=f"involvedObject.uid={uid}").items
    return sum(1 for e in items if e.reason == "Enforced")


# ---- additions for tests/integration/test_operator_robustness.py


def start_operator_with(
    live: Live,
    name: str,
    *args: str,
    metrics_port: int = 0,
    kubeconfig: Path | None = None,
) -> None:
    """``Live.start_operator`` with a metrics port, more flags and another kubeconfig."""
    base = ["operator", "--lease-namespace", "default", "--identity", name]
    live._spawn(name, [*base, "--metrics-port", str(metrics_port), *args], kubeconfig=kubeconfig)


def scrape(port: int) -> dict[str, float]:
    """A process's /metrics on 127.0.0.1 as name -> value (prefix included)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in text.splitlines())
        if name and not name.startswith("#")
    }


def wait_log(
    live: Live, name: str, needle: str | re.Pattern[str], offset: int = 0, timeout: float = 10.0
) -> float:
    """Wait until ``name``'s log (from byte ``offset``) contains ``needle``; returns when."""
    deadline = time.monotonic() + timeout
    while True:
        text = live.log(name)[offset:]
        found = needle.search(text) if isinstance(needle, re.Pattern) else needle in text
        if found:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} did not log {needle!r}:\n{text[-4000:]}")
        time.sleep(0.05)


# A pod of ``two_nodes``: (name, node number 1 or 2, IPv4 address, labels).
PodSpec = tuple[str, int, str, dict[str, str]]


@contextmanager
def two_nodes(
    control_plane: TestControlPlane,
    netns_cluster: NetnsCluster,
    tmp_path: Path,
    pods: Sequence[PodSpec],
    namespace_labels: dict[str, str] | None = None,
) -> Iterator[Live]:
    """The CRDs, nodes ``<ns>-n1`` and ``<ns>-n2``, the test namespace and ``pods``, their
    probe agents ready; no operator or agent started. Closed on exit."""
    install_crds(control_plane)
    live = Live(control_plane, netns_cluster, tmp_path)
    try:
        for i, node in enumerate(("n1", "n2")):
            live.add_node(f"{live.ns}-{node}", i + 1)
        live.add_namespace(live.ns, namespace_labels)
        for name, node_number, ip, labels in pods:
            live.add_pod(live.ns, name, f"{live.ns}-n{node_number}", ip, labels)
        netns_cluster.wait_ready()
        yield live
    finally:
        live.close()
