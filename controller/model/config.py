"""Cluster-wide settings that change what the compiler emits (helm values)."""

from __future__ import annotations

from dataclasses import dataclass

from controller.model.direction import Direction


@dataclass(frozen=True)
class DefaultDeny:
    """Opt-in isolation of every pod, beyond what NetworkPolicies select.

    ``directions`` is the cluster-wide default (empty = off); namespaces listed in
    ``exempt_namespaces`` are left out of it. A namespace annotation can still opt in on its own.
    ``allow_dns`` keeps egress to port 53 (UDP and TCP) open for pods isolated only this way or
    in addition to policies, so that default-deny does not break name resolution.
    """

    directions: frozenset[Direction] = frozenset()
    exempt_namespaces: frozenset[str] = frozenset({"kube-system"})
    allow_dns: bool = True


DNS_PORT = 53
