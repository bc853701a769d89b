"""Installing nftpolicy into the kind cluster (pure: argument lists only)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "nftpolicy"
RELEASE = "nftpolicy"
NAMESPACE = "nftpolicy-system"
DEFAULT_IMAGE = "nftpolicy:e2e"
IMAGE = os.environ.get("NFTPOLICY_E2E_IMAGE", DEFAULT_IMAGE)  # the image under test
OPERATOR_SELECTOR = "app.kubernetes.io/component=operator"
AGENT_SELECTOR = "app.kubernetes.io/component=agent"
LEASE = "nftpolicy-operator"


def split_image(ref: str) -> tuple[str, str]:
    """``registry:5000/name:tag`` -> (``registry:5000/name``, ``tag``); no tag -> ``latest``."""
    if "@" in ref:
        raise ValueError(f"use a tag, not a digest: {ref!r} (kind load needs a tag)")
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :]
    return ref, "latest"


def docker_build_args(image: str, context: Path = ROOT) -> list[str]:
    return ["build", "--tag", image, str(context)]


def helm_install_args(
    image: str,
    *,
    chart: Path = CHART,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    timeout: str = "5m",
    extra_values: dict[str, str] | None = None,
) -> list[str]:
    """``helm upgrade --install`` for an image loaded into the nodes (pullPolicy Never)."""
    repository, tag = split_image(image)
    values = {
        "image.repository": repository,
        "image.tag": tag,
        "image.pullPolicy": "Never",
        "agent.resyncPeriod": "10",
        "logLevel": "debug",
        **(extra_values or {}),
    }
    args = [
        "upgrade",
        "--install",
        release,
        str(chart),
        "--namespace",
        namespace,
        "--create-namespace",
        "--wait",
        "--timeout",
        timeout,
    ]
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args
