"""The local cluster's teardown walk of node cgroups (controller/testing/cluster.py)."""

from __future__ import annotations

from pathlib import Path

from controller.testing.cluster import _cgroup_dirs


def test_cgroup_walk_lists_what_exists_and_skips_what_vanished(tmp_path: Path) -> None:
    """Catches: the teardown dying (and leaving the cluster's namespaces behind) when a pod's
    cgroup is removed by the kubelet while it is being walked: a root or a directory that is
    gone is skipped, not an error."""
    root = tmp_path / "node-1"
    (root / "kubepods" / "pod-a" / "c1").mkdir(parents=True)
    (root / "kubepods" / "pod-b").mkdir(parents=True)
    found = {p.relative_to(tmp_path).as_posix() for p in _cgroup_dirs([root, tmp_path / "gone"])}
    assert found == {
        "node-1",
        "node-1/kubepods",
        "node-1/kubepods/pod-a",
        "node-1/kubepods/pod-a/c1",
        "node-1/kubepods/pod-b",
    }
