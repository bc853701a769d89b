"""The kind cluster the e2e suite runs on (pure: builds data, runs nothing).

Which CNI, and why
------------------
The suite must prove that *nftpolicy* enforces NetworkPolicy, so the cluster's CNI must not
enforce it by itself. kind's default CNI, kindnet, does since kind v0.24.0 (kind PR #3612:
kindnetd runs kube-network-policies, an nfqueue-based enforcer, in the same DaemonSet; the
maintainers' stated opt-out is to disable kindnet). kind v0.23.0 is the last release whose
kindnet (kindest/kindnetd:v20240513-cd2ac642) has no NetworkPolicy code, and its default node
image (Kubernetes v1.30.0) satisfies the chart's kubeVersion >=1.25.

So the suite pins kind v0.23.0 (``KIND_VERSION`` here and in .github/workflows/e2e.yml) and
keeps its default node image and CNI: a plain routed CNI (ptp veths, host routes to other
nodes' pod CIDRs) whose pod-to-pod traffic crosses each node's forward hook, which is where
nftpolicy's table sits. ``e2e/test_00_baseline.py`` checks the premise on every run: a
deny-all policy has no effect before nftpolicy is installed; if a newer kind (or any CNI that
enforces policy) is used, it fails and says so.

With kind >= v0.24 the alternative is ``disable_default_cni=True`` (``networking.
disableDefaultCNI``) plus a CNI without NetworkPolicy support installed after ``kind create``
(e.g. flannel, which needs the CNI ``bridge`` plugin on the nodes); not used by default.
"""

from __future__ import annotations

from typing import Any

import yaml

KIND_VERSION = "v0.23.0"
"""The kind release the suite is written for (see the module docstring)."""

IP_FAMILIES = ("ipv4", "ipv6", "dual")
CLUSTER_NAME = "nftpolicy-e2e"
WORKERS = 2


def kind_config(
    ip_family: str = "ipv4", *, workers: int = WORKERS, disable_default_cni: bool = False
) -> dict[str, Any]:
    """A ``kind.x-k8s.io/v1alpha4`` Cluster: one control plane and ``workers`` workers.

    The model pods run on the workers only (the control plane keeps its NoSchedule taint), so
    every probe matrix has same-node and cross-node pairs.
    """
    if ip_family not in IP_FAMILIES:
        raise ValueError(f"ip_family must be one of {', '.join(IP_FAMILIES)}, not {ip_family!r}")
    if workers < 1:
        raise ValueError("at least one worker is needed")
    networking: dict[str, Any] = {"ipFamily": ip_family}
    if disable_default_cni:
        networking["disableDefaultCNI"] = True
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": networking,
        "nodes": [{"role": "control-plane"}] + [{"role": "worker"} for _ in range(workers)],
    }


def kind_config_yaml(ip_family: str = "ipv4", **kwargs: Any) -> str:
    return yaml.safe_dump(kind_config(ip_family, **kwargs), sort_keys=False)


def worker_names(cluster: str = CLUSTER_NAME, workers: int = WORKERS) -> list[str]:
    """kind's node names: ``<cluster>-worker``, ``<cluster>-worker2``, ..."""
    return [f"{cluster}-worker{'' if i == 1 else i}" for i in range(1, workers + 1)]


def ip_family_number(ip_family: str) -> int:
    """The address family the probes use: 4 or 6 (dual-stack probes IPv4)."""
    if ip_family not in IP_FAMILIES:
        raise ValueError(f"unknown ip family {ip_family!r}")
    return 6 if ip_family == "ipv6" else 4
