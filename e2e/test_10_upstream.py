"""The upstream ``test/e2e/network/netpol`` cases on real pods, enforced by nftpolicy.

Namespaces x/y/z x pods a/b/c (agnhost serve-hostname on 80 and 81, TCP and UDP) on two kind
workers; each case's actions go through the API server (kubectl apply/delete/patch), nftpolicy
(operator -> NodeRules/AddressGroups -> agents -> nftables) enforces them, and every ordered
pod pair is probed with ``agnhost connect`` and compared with the upstream truth table
(src == dst ignored, as upstream does). The address family is the cluster's
(``NFTPOLICY_E2E_IP_FAMILY``).
"""

from __future__ import annotations

import pytest

from e2e import netpol
from e2e.cluster import Kubectl, Model, Prober, reset_model, run_case
from tests.netpol_upstream.cases import Case

CASES = netpol.e2e_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_upstream_case(
    nftpolicy: Model, k: Kubectl, prober: Prober, family: int, case: Case
) -> None:
    try:
        run_case(k, prober, nftpolicy, case, family)
    finally:
        reset_model(k, nftpolicy)
