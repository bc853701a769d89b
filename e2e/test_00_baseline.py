"""The premise of the suite: before nftpolicy is installed, nothing enforces NetworkPolicy.

If this fails, the cluster's CNI enforces policies by itself (kind >= v0.24's kindnet does),
and every later result would say nothing about nftpolicy: see ``e2e/kind_config.py``.
"""

from __future__ import annotations

import time

import pytest

from e2e import netpol
from e2e.cluster import Kubectl, Model, Prober
from e2e.conftest import nftpolicy_installed


def test_deny_all_has_no_effect_before_nftpolicy_is_installed(
    k: Kubectl, model_cluster: Model, prober: Prober
) -> None:
    if nftpolicy_installed():
        pytest.skip("nftpolicy is already installed in this session (run this test first)")
    policy = netpol.baseline_policy()
    k.apply(policy)
    try:
        expected = netpol.nothing_enforced_matrix()
        would_be = netpol.expected_with_baseline_enforced()
        for _ in range(2):  # give an enforcing CNI time to act before concluding it does not
            time.sleep(5)
            observed = prober.matrix(expected, model_cluster.addresses, 80, "TCP")
            assert not expected.compare(observed), (
                "a deny-all policy took effect before nftpolicy was installed: the cluster's "
                "CNI enforces NetworkPolicy itself (kind >= v0.24 kindnet does; see "
                "e2e/kind_config.py)\n"
                + expected.format_comparison(observed, title="deny-all in x, nothing installed")
                + "\n\nwhat enforcement would look like:\n"
                + would_be.pretty("  ")
            )
    finally:
        k.run("-n", "x", "delete", "networkpolicy", policy["metadata"]["name"], check=False)
