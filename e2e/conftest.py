"""Fixtures: a kind cluster with the upstream model pods, and nftpolicy installed into it.

Environment:
  NFTPOLICY_E2E_IP_FAMILY   ipv4 (default) | ipv6 | dual  (kind ``networking.ipFamily``)
  NFTPOLICY_E2E_IMAGE       image to load and install (default nftpolicy:e2e; built from the
                            repository's Dockerfile when docker does not have it)
  NFTPOLICY_E2E_REQUIRED=1  fail instead of skip when docker/kind/kubectl/helm are missing (CI)
  NFTPOLICY_E2E_KEEP=1      keep the kind cluster afterwards

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
from e2e.cluster import Kubectl, Model, Prober, create_model, diagnostics, pods, ready

try:  # pytest-kind is in the [test] extra; e2e/ stays importable without it
    from pytest_kind import KindCluster  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - depends on the environment
    KindCluster = None

IP_FAMILY = os.environ.get("NFTPOLICY_E2E_IP_FAMILY", "ipv4")
IMAGE = os.environ.get("NFTPOLICY_E2E_IMAGE", install.DEFAULT_IMAGE)
REQUIRED = os.environ.get("NFTPOLICY_E2E_REQUIRED") == "1"
KEEP = os.environ.get("NFTPOLICY_E2E_KEEP") == "1"
TOOLS = ("docker", "kind", "kubectl", "helm")

_state: dict[str, Any] = {"installed": False, "kubectl": None, "nodes": []}


def unavailable_reason() -> str | None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"
    if KindCluster is None:
        return "pytest-kind is not installed (pip install -e '.[test]')"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        return f"docker is not usable: {info.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="session")
def family() -> int:
    return kind_config.ip_family_number(IP_FAMILY)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = unavailable_reason()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"e2e requirements missing: {reason}")
        pytest.skip(f"e2e needs docker, kind, kubectl, helm and pytest-kind: {reason}")
    config = tmp_path_factory.mktemp("kind") / "kind.yaml"
    config.write_text(kind_config.kind_config_yaml(IP_FAMILY))
    version = subprocess.run(["kind", "version"], capture_output=True, text=True, check=False)
    print(f"kind: {version.stdout.strip()} (suite written for {kind_config.KIND_VERSION})")
    assert KindCluster is not None
    kc = KindCluster(
        kind_config.CLUSTER_NAME,
        kind_path=Path(shutil.which("kind") or "kind"),
        kubectl_path=Path(shutil.which("kubectl") or "kubectl"),
    )
    kc.create(config_file=config)
    try:
        yield kc
    finally:
        if not KEEP:
            kc.delete()


@pytest.fixture(scope="session")
def k(cluster: Any) -> Kubectl:
    kubectl = Kubectl(Path(cluster.kubeconfig_path), shutil.which("kubectl") or "kubectl")
    _state["kubectl"] = kubectl
    return kubectl


@pytest.fixture(scope="session")
def nodes() -> list[str]:
    names = kind_config.worker_names()
    _state["nodes"] = names
    return names


@pytest.fixture(scope="session")
def model_cluster(k: Kubectl, nodes: list[str], family: int) -> Model:
    k.run("wait", "--for=condition=Ready", "node", "--all", "--timeout=300s", timeout=320)
    return create_model(k, nodes, family)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def prober(k: Kubectl) -> Prober:
    return Prober(k)


def nftpolicy_installed() -> bool:
    return bool(_state["installed"])


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="session")
def nftpolicy(cluster: Any, k: Kubectl, model_cluster: Model, nodes: list[str]) -> Model:
    """The chart installed with the image under test; every agent and operator Ready."""
    if _docker("image", "inspect", IMAGE).returncode != 0:
        build = subprocess.run(
            ["docker", *install.docker_build_args(IMAGE)], text=True, check=False
        )
        assert build.returncode == 0, f"docker build of {IMAGE} failed"
    cluster.load_docker_image(IMAGE)
    helm = subprocess.run(
        ["helm", f"--kubeconfig={cluster.kubeconfig_path}", *install.helm_install_args(IMAGE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=400,
    )
    _state["installed"] = True
    assert helm.returncode == 0, f"helm install failed:\n{helm.stdout}{helm.stderr}"
    all_nodes = [n["metadata"]["name"] for n in k.json("get", "nodes")["items"]]
    agents = [p for p in pods(k, install.AGENT_SELECTOR) if ready(p)]
    assert sorted(p["spec"]["nodeName"] for p in agents) == sorted(all_nodes), agents
    operators = [p for p in pods(k, install.OPERATOR_SELECTOR) if ready(p)]
    assert len(operators) == 2, operators
    return model_cluster


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    kubectl = _state["kubectl"]
    if report.when in ("setup", "call") and report.failed and kubectl is not None:
        report.sections.append(("cluster diagnostics", diagnostics(kubectl, _state["nodes"])))
