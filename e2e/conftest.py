"""Fixtures: a cluster (kind, or any given by a kubeconfig) with the upstream model pods, and
nftpolicy installed into it.

Environment (and see ``e2e/providers.py`` for the cluster's own):
  NFTPOLICY_E2E_IP_FAMILY   ipv4 (default) | ipv6 | dual  (kind ``networking.ipFamily``; on a
                            given cluster, the family the model pods are probed in)
  NFTPOLICY_E2E_IMAGE       image to install (default nftpolicy:e2e; on kind built from the
                            repository's Dockerfile when docker does not have it, then loaded)
  NFTPOLICY_E2E_REQUIRED=1  fail instead of skip when no cluster can be had (CI)
  NFTPOLICY_E2E_KEEP=1      keep the kind cluster afterwards
  NFTPOLICY_E2E_KUBECTL, NFTPOLICY_E2E_HELM   the binaries (default: kubectl and helm in PATH)

Order matters once: ``test_00_baseline.py`` checks that a deny-all policy has no effect
*before* the ``nftpolicy`` fixture installs the chart; every later test shares the install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import install, kind_config
from e2e.cluster import (
    Kubectl,
    Model,
    Prober,
    create_model,
    diagnostics,
    eventually,
    pods,
    ready,
)
from e2e.providers import KindProvider, KubeconfigProvider, Provider, kind_unavailable_reason

IP_FAMILY = os.environ.get("NFTPOLICY_E2E_IP_FAMILY", "ipv4")
IMAGE = install.IMAGE
REQUIRED = os.environ.get("NFTPOLICY_E2E_REQUIRED") == "1"
KEEP = os.environ.get("NFTPOLICY_E2E_KEEP") == "1"
KUBECONFIG = os.environ.get("NFTPOLICY_E2E_KUBECONFIG", "")
WANTED_NODES = tuple(n for n in os.environ.get("NFTPOLICY_E2E_NODES", "").split(",") if n)
PULL_POLICY = os.environ.get("NFTPOLICY_E2E_PULL_POLICY", "")
KUBECTL = os.environ.get("NFTPOLICY_E2E_KUBECTL") or shutil.which("kubectl") or "kubectl"
HELM = os.environ.get("NFTPOLICY_E2E_HELM") or shutil.which("helm") or "helm"

_state: dict[str, Any] = {"installed": False, "kubectl": None, "nodes": []}


@pytest.fixture(scope="session")
def family() -> int:
    return kind_config.ip_family_number(IP_FAMILY)


@pytest.fixture(scope="session")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    chosen: Provider
    if KUBECONFIG:
        chosen = KubeconfigProvider(Path(KUBECONFIG), WANTED_NODES)
        if not chosen.kubeconfig.is_file():
            pytest.fail(f"NFTPOLICY_E2E_KUBECONFIG={KUBECONFIG}: no such file")
    else:
        reason = kind_unavailable_reason()
        if reason is not None:
            if REQUIRED:
                pytest.fail(f"e2e requirements missing: {reason}")
            pytest.skip(
                "e2e needs NFTPOLICY_E2E_KUBECONFIG (a running cluster; scripts/e2e.sh starts "
                f"one here), or docker, kind, kubectl, helm and pytest-kind: {reason}"
            )
        config = tmp_path_factory.mktemp("kind") / "kind.yaml"
        chosen = KindProvider.create(config, IP_FAMILY, KEEP)
    if PULL_POLICY:
        chosen.pull_policy = PULL_POLICY
    try:
        yield chosen
    finally:
        chosen.close()


@pytest.fixture(scope="session")
def k(provider: Provider) -> Kubectl:
    kubectl = Kubectl(provider.kubeconfig, KUBECTL)
    _state["kubectl"] = kubectl
    return kubectl


@pytest.fixture(scope="session")
def nodes(provider: Provider, k: Kubectl) -> list[str]:
    k.run("wait", "--for=condition=Ready", "node", "--all", "--timeout=300s", timeout=320)
    try:
        names = provider.nodes(k.json("get", "nodes"))
    except ValueError as e:
        pytest.fail(str(e))
    _state["nodes"] = names
    return names


@pytest.fixture(scope="session")
def model_cluster(k: Kubectl, nodes: list[str], family: int) -> Model:
    return create_model(k, nodes, family)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def prober(k: Kubectl) -> Prober:
    return Prober(k)


def nftpolicy_installed() -> bool:
    return bool(_state["installed"])


@pytest.fixture(scope="session")
def nftpolicy(provider: Provider, k: Kubectl, model_cluster: Model) -> Model:
    """The chart installed with the image under test; every agent and operator Ready."""
    provider.load_image(IMAGE)
    helm = subprocess.run(
        [
            HELM,
            f"--kubeconfig={provider.kubeconfig}",
            *install.helm_install_args(
                IMAGE, extra_values={"image.pullPolicy": provider.pull_policy}
            ),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=400,
    )
    _state["installed"] = True
    assert helm.returncode == 0, f"helm install failed:\n{helm.stdout}{helm.stderr}"
    # helm --wait counts a DaemonSet ready with desired - maxUnavailable (1) pods Ready, so
    # one agent may still be starting: wait for every node's agent and both operators.
    all_nodes = sorted(n["metadata"]["name"] for n in k.json("get", "nodes")["items"])

    def agents_on_every_node() -> bool:
        agents = [p for p in pods(k, install.AGENT_SELECTOR) if ready(p)]
        return sorted(p["spec"]["nodeName"] for p in agents) == all_nodes

    def both_operators() -> bool:
        return len([p for p in pods(k, install.OPERATOR_SELECTOR) if ready(p)]) == 2

    eventually(agents_on_every_node, 180, f"a Ready agent on each of {all_nodes}")
    eventually(both_operators, 180, "two Ready operator replicas")
    return model_cluster


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    kubectl = _state["kubectl"]
    if report.when in ("setup", "call") and report.failed and kubectl is not None:
        report.sections.append(("cluster diagnostics", diagnostics(kubectl, _state["nodes"])))
