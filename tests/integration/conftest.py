"""Fixtures for integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.netns_cluster import NetnsCluster, cleanup_dead_runs, unavailable_reason


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
