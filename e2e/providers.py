"""Where the e2e suite's cluster comes from: kind (where Docker exists) or any cluster given by
a kubeconfig (the local real-node cluster ``scripts/e2e.sh`` starts, or one of yours).

Both give the suite the same three things: a kubeconfig, the nodes the model pods go on, and a
way to get the image under test onto the nodes. Everything else (probes, diagnostics, the nodes'
nftables) goes through the API server, so the tests never depend on the provider.

Environment (read by ``e2e/conftest.py``):
  NFTPOLICY_E2E_KUBECONFIG    use this cluster instead of creating a kind one; the image must
                              already be on its nodes or pullable (``scripts/e2e.sh`` imports it)
  NFTPOLICY_E2E_NODES         comma-separated nodes for the model pods (default: every Ready
                              node without a NoSchedule/NoExecute taint, sorted; at least two)
  NFTPOLICY_E2E_PULL_POLICY   the chart's image.pullPolicy (default: Never on kind, which loads
                              the image; IfNotPresent on a given cluster)
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from e2e import install, kind_config


class Provider(Protocol):
    name: str
    kubeconfig: Path
    pull_policy: str

    def nodes(self, node_list: Mapping[str, Any]) -> list[str]:
        """The nodes the model pods go on, given ``kubectl get nodes -o json``."""
        ...

    def load_image(self, image: str) -> None:
        """Make ``image`` available on every node (or do nothing when it already is)."""
        ...

    def close(self) -> None: ...


def schedulable_nodes(node_list: Mapping[str, Any]) -> list[str]:
    """Ready nodes that take ordinary pods (no NoSchedule/NoExecute taint, not cordoned), sorted."""
    out = []
    for node in node_list.get("items", ()):
        spec, status = node.get("spec") or {}, node.get("status") or {}
        if spec.get("unschedulable"):
            continue
        if any(t.get("effect") in ("NoSchedule", "NoExecute") for t in spec.get("taints") or ()):
            continue
        conditions = status.get("conditions") or ()
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            out.append(node["metadata"]["name"])
    return sorted(out)


def pick_nodes(node_list: Mapping[str, Any], wanted: Sequence[str] = ()) -> list[str]:
    """``wanted`` when given (each must be schedulable), else every schedulable node. The model
    needs two nodes: same-node and cross-node pairs are both checked."""
    usable = schedulable_nodes(node_list)
    if wanted:
        missing = [n for n in wanted if n not in usable]
        if missing:
            raise ValueError(
                f"NFTPOLICY_E2E_NODES names {missing}, which are not Ready schedulable nodes "
                f"(those are {usable})"
            )
        usable = list(wanted)
    if len(usable) < 2:
        raise ValueError(
            f"the e2e suite needs two Ready schedulable nodes, the cluster has {usable}"
        )
    return usable


@dataclass
class KubeconfigProvider:
    """A running cluster: nothing is created or deleted, images are expected on the nodes."""

    kubeconfig: Path
    wanted_nodes: tuple[str, ...] = ()
    pull_policy: str = "IfNotPresent"
    name: str = "kubeconfig"

    def nodes(self, node_list: Mapping[str, Any]) -> list[str]:
        return pick_nodes(node_list, self.wanted_nodes)

    def load_image(self, image: str) -> None:
        del image  # on the nodes already (scripts/e2e.sh imports it), or pullable

    def close(self) -> None:
        pass


class KindProvider:
    """A kind cluster created for the session (pytest-kind), deleted afterwards unless kept."""

    name = "kind"
    pull_policy = "Never"  # the image is loaded with `kind load docker-image`

    def __init__(self, cluster: Any, keep: bool) -> None:
        self.cluster = cluster
        self.keep = keep
        self.kubeconfig = Path(cluster.kubeconfig_path)

    @classmethod
    def create(cls, config: Path, ip_family: str, keep: bool) -> KindProvider:
        from pytest_kind import KindCluster  # type: ignore[import-untyped]

        config.write_text(kind_config.kind_config_yaml(ip_family))
        version = subprocess.run(["kind", "version"], capture_output=True, text=True, check=False)
        print(f"kind: {version.stdout.strip()} (suite written for {kind_config.KIND_VERSION})")
        cluster = KindCluster(
            kind_config.CLUSTER_NAME,
            kind_path=Path(shutil.which("kind") or "kind"),
            kubectl_path=Path(shutil.which("kubectl") or "kubectl"),
        )
        cluster.create(config_file=config)
        return cls(cluster, keep)

    def nodes(self, node_list: Mapping[str, Any]) -> list[str]:
        del node_list
        return kind_config.worker_names()

    def load_image(self, image: str) -> None:
        inspect = subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, check=False
        )
        if inspect.returncode != 0:
            build = subprocess.run(["docker", *install.docker_build_args(image)], check=False)
            assert build.returncode == 0, f"docker build of {image} failed"
        self.cluster.load_docker_image(image)

    def close(self) -> None:
        if not self.keep:
            self.cluster.delete()


def kind_unavailable_reason() -> str | None:
    """Why kind cannot run here, or None."""
    missing = [t for t in ("docker", "kind", "kubectl", "helm") if shutil.which(t) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"
    try:
        import pytest_kind  # noqa: F401
    except ImportError:
        return "pytest-kind is not installed (scripts/bootstrap.sh)"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        return f"docker is not usable: {info.stderr.strip()[:200]}"
    return None
