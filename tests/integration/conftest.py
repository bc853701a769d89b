"""Fixtures for integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.testing.apiserver import GoUnavailableError, TestControlPlane, find_binaries
from controller.testing.netns import NetnsCluster, cleanup_dead_runs, unavailable_reason


@pytest.fixture
def netns_cluster() -> Iterator[NetnsCluster]:
    """A fresh, empty simulated cluster network (see ``netns_cluster.py``), torn down after
    the test.  Skips when not root or when ``ip netns`` is unusable."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"netns cluster unavailable: {reason}")
    cleanup_dead_runs()
    with NetnsCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def control_plane(pytestconfig: pytest.Config) -> Iterator[TestControlPlane]:
    """A started etcd + kube-apiserver (``controller.testing.apiserver``) shared by the session.

    The binaries come from ``$NFTPOLICY_TESTENV_BIN`` or ``scripts/testenv.sh``, whose first run
    builds them from Go modules (many minutes; its progress is shown, not captured). Skips only
    when nothing is cached and Go is not installed; a failed build or start fails the tests.
    """
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    try:
        if capture is not None:
            with capture.global_and_fixture_disabled():
                bin_dir = find_binaries()
        else:
            bin_dir = find_binaries()
    except GoUnavailableError as exc:
        pytest.skip(f"no control-plane binaries: {exc}")
    with TestControlPlane(bin_dir) as plane:
        yield plane
