"""Driving the cluster: kubectl, the model pods, probe matrices, convergence.

Needs ``kubectl`` at run time (everything goes through the API server, whatever the provider);
importing this module does not.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e import install, netpol
from tests.netpol_upstream import model
from tests.netpol_upstream.cases import Case
from tests.netpol_upstream.model import Addresses, Family, Reachability

PROBE_WORKERS = 12
RETRY_TIMEOUT = 3  # seconds, for the second try of a pair that should have connected
SETTLE_TIMEOUT = 60.0
MATRIX_ATTEMPTS = 4  # probe rounds before a case fails (enforcement may lag the API write)


class Kubectl:
    def __init__(self, kubeconfig: Path, binary: str = "kubectl") -> None:
        self.kubeconfig = kubeconfig
        self.binary = binary

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.binary, f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(self, obj: Mapping[str, Any]) -> None:
        self.run("apply", "-f", "-", stdin=json.dumps(obj))


# ---- the model -----------------------------------------------------------------------------------


@dataclass
class Model:
    nodes: list[str]
    addresses: Addresses
    labels: netpol.Labels = field(default_factory=netpol.pristine_labels)


def create_model(k: Kubectl, nodes: Sequence[str], family: Family) -> Model:
    """Namespaces x, y, z and the nine agnhost pods, Ready; their addresses in ``family``."""
    for namespace in netpol.namespace_manifests():
        k.apply(namespace)
    for pod in netpol.pod_manifests(nodes):
        k.apply(pod)
    for ns in model.NAMESPACES:
        k.run(
            "-n", ns, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=600s", timeout=620
        )
    items = [p for ns in model.NAMESPACES for p in k.json("-n", ns, "get", "pods")["items"]]
    addresses = Addresses.from_pods(items, family)
    missing = [p for p in model.ALL_PODS if p not in addresses.ips]
    assert not missing, f"pods without an IPv{family} address: {missing}"
    return Model(nodes=list(nodes), addresses=addresses)


# ---- probes --------------------------------------------------------------------------------------


class Prober:
    def __init__(self, k: Kubectl, workers: int = PROBE_WORKERS) -> None:
        self.k = k
        self.workers = workers

    def one(self, src: str, dst_ip: str, port: int, protocol: str, timeout: int) -> bool:
        args = netpol.probe_command(src, dst_ip, port, protocol, timeout)
        return self.k.run(*args, check=False, timeout=timeout + 60).returncode == 0

    def probe(
        self,
        pairs: Sequence[tuple[str, str]],
        addresses: Addresses,
        port: int,
        protocol: str,
        timeout: int = netpol.PROBE_TIMEOUT,
    ) -> dict[tuple[str, str], bool]:
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            futures = {
                pair: pool.submit(self.one, pair[0], addresses.ip(pair[1]), port, protocol, timeout)
                for pair in pairs
            }
            return {pair: f.result() for pair, f in futures.items()}

    def matrix(
        self, expected: Reachability, addresses: Addresses, port: int, protocol: str
    ) -> dict[tuple[str, str], bool]:
        """Observed connectivity for every pair but src == dst (which upstream ignores)."""
        observed = self.probe(netpol.pairs_to_probe(expected), addresses, port, protocol)
        again = netpol.retry_pairs(expected, observed)
        if again:
            observed.update(self.probe(again, addresses, port, protocol, RETRY_TIMEOUT))
        return observed


# ---- convergence ---------------------------------------------------------------------------------


def unsettled_nodes(k: Kubectl) -> list[str]:
    """NodeRules whose agent has not applied the latest generation (or reported an error)."""
    items = k.json("get", "noderules.nftpolicy.io")["items"]
    out = []
    for nr in items:
        status = nr.get("status") or {}
        if status.get("appliedGeneration") != nr["metadata"]["generation"] or status.get("error"):
            out.append(f"{nr['metadata']['name']} {status}")
    return out


def wait_settled(k: Kubectl, timeout: float = SETTLE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        pending = unsettled_nodes(k)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"agents did not apply the latest rules: {pending}")
        time.sleep(0.5)


def check_matrix(
    k: Kubectl,
    prober: Prober,
    addresses: Addresses,
    expected: Reachability,
    port: int,
    protocol: str,
    title: str,
    attempts: int = MATRIX_ATTEMPTS,
) -> None:
    """Probe until the matrix matches ``expected`` (src == dst ignored), ``attempts`` rounds."""
    observed: dict[tuple[str, str], bool] = {}
    for attempt in range(attempts):
        time.sleep(1.0 if attempt == 0 else 3.0)  # let the operator see and publish the change
        wait_settled(k)
        observed = prober.matrix(expected, addresses, port, protocol)
        if not expected.compare(observed):
            return
    raise AssertionError(expected.format_comparison(observed, title=title))


def run_case(k: Kubectl, prober: Prober, m: Model, case: Case, family: int) -> None:
    for n, step in enumerate(case.steps):
        for action in step.actions:
            args, manifest = netpol.action_command(action, m.addresses, m.labels)
            k.run(*args, stdin=json.dumps(manifest) if manifest is not None else None)
        for probe in step.probes:
            check_matrix(
                k,
                prober,
                m.addresses,
                probe.expected,
                probe.port,
                probe.protocol,
                title=f"{case.name}: step {n} {probe.protocol}/{probe.port} IPv{family}",
            )


def reset_model(k: Kubectl, m: Model) -> None:
    for args in netpol.reset_commands(m.labels):
        k.run(*args)


# ---- nftpolicy pods ------------------------------------------------------------------------------


def pods(k: Kubectl, selector: str, namespace: str = install.NAMESPACE) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = k.json("-n", namespace, "get", "pods", "-l", selector)["items"]
    return items


def ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return pod["metadata"].get("deletionTimestamp") is None and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def agent_on(k: Kubectl, node: str) -> dict[str, Any] | None:
    for pod in pods(k, install.AGENT_SELECTOR):
        if pod["spec"].get("nodeName") == node and pod["metadata"].get("deletionTimestamp") is None:
            return pod
    return None


def lease_holder(k: Kubectl) -> str | None:
    lease = k.json("-n", install.NAMESPACE, "get", "lease", install.LEASE)
    holder: str | None = (lease.get("spec") or {}).get("holderIdentity")
    return holder


def eventually(check: Any, timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ---- diagnostics ---------------------------------------------------------------------------------


def diagnostics(k: Kubectl, nodes: Sequence[str]) -> str:
    """What to look at when a test fails: pods, nftpolicy logs, NodeRules, and each node's
    table as its agent sees it (``kubectl exec`` into the hostNetwork agent: any provider)."""
    parts = []
    for title, args in (
        ("pods", ["get", "pods", "-A", "-o", "wide"]),
        ("noderules", ["get", "noderules.nftpolicy.io", "-o", "yaml"]),
        ("networkpolicies", ["get", "networkpolicies", "-A"]),
        (
            "nftpolicy logs",
            [
                "-n",
                install.NAMESPACE,
                "logs",
                "-l",
                "app.kubernetes.io/name=nftpolicy",
                "--prefix",
                "--tail=150",
                "--max-log-requests=20",
            ],
        ),
    ):
        proc = k.run(*args, check=False)
        parts.append(f"===== {title}\n{proc.stdout}{proc.stderr}")
    for node in nodes:
        agent = agent_on(k, node)
        if agent is None:
            parts.append(f"===== nft table on {node}: no agent pod")
            continue
        proc = k.run(*agent_exec(agent, "nft", "list", "table", "inet", "nftpolicy"), check=False)
        parts.append(f"===== nft table on {node}\n{proc.stdout}{proc.stderr}")
    return "\n".join(parts)


def agent_exec(agent: Mapping[str, Any], *argv: str) -> list[str]:
    """kubectl arguments running ``argv`` in an agent pod: in its node's network namespace."""
    return ["-n", install.NAMESPACE, "exec", agent["metadata"]["name"], "-c", "agent", "--", *argv]
