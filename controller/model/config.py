"""Cluster-wide settings that change what the compiler emits (helm values)."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.model.direction import Direction
from controller.model.ipaddr import IPAddress
from controller.model.selector import LabelSelector, Operator, Requirement

DNS_PORT = 53
KUBE_DNS = LabelSelector((Requirement("k8s-app", Operator.IN, ("kube-dns",)),))


@dataclass(frozen=True)
class ClusterDNS:
    """Where the cluster's DNS is: what default deny's DNS allowance leads to, and nothing else.

    Pods of ``namespace`` matching ``pod_selector`` (CoreDNS / kube-dns; their address on the
    port the DNS Services target: kube-proxy DNATs a ClusterIP before the forward hook, so
    these are what the agent sees), the ClusterIPs of the Services of ``namespace`` matching
    ``service_selector`` on port 53 (for paths where no DNAT happened first), and
    ``addresses`` on port 53 (DNS elsewhere: an upstream resolver reached through the node).
    Nothing matching means no allowance at all (fail closed), which the operator reports.
    """

    namespace: str = "kube-system"
    pod_selector: LabelSelector = KUBE_DNS
    service_selector: LabelSelector = KUBE_DNS
    addresses: frozenset[IPAddress] = frozenset()


@dataclass(frozen=True)
class DefaultDeny:
    """Opt-in isolation of every pod, beyond what NetworkPolicies select.

    ``directions`` is the cluster-wide default (empty = off); namespaces listed in
    ``exempt_namespaces`` are left out of it. A namespace annotation can still opt in on its own.
    ``allow_dns`` keeps egress to the cluster's DNS (``dns``) on UDP and TCP open for pods
    isolated only this way or in addition to policies, so that default deny does not break
    name resolution; it opens port 53 of no other address.
    """

    directions: frozenset[Direction] = frozenset()
    exempt_namespaces: frozenset[str] = frozenset({"kube-system"})
    allow_dns: bool = True
    dns: ClusterDNS = field(default_factory=ClusterDNS)
