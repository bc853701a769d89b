"""One IP, one owner: which of several live pods reporting the same address holds it.

Kubernetes does not guarantee that pod IPs are unique at any instant: a pod stuck terminating
still reports Running and its IP while the CNI has already handed that IP to a new pod, and a
deletion the operator missed (a watch re-list) leaves a stale pod behind. If both pods kept
the address, the node would get two verdict-map entries for one key (the kernel refuses the
whole transaction: ``File exists``) and the new pod would be admitted by the old pod's
allowances and group memberships.

So the compiler works on *effective* pods: a pod keeps an address only if it owns it. The
owner of an address is the newest of the pods that claim it (``Pod.addresses``: live, not
hostNetwork), by ``metadata.creationTimestamp`` (RFC 3339 in UTC, so it orders as text; an
unknown timestamp counts as oldest); at equal timestamps (they have one-second resolution) the
greater ``namespace/name`` wins, an arbitrary but deterministic choice. The newest pod is the
one the CNI most recently gave the address to, so it is the one that really has it. When the
owner goes away (deleted, terminated, re-addressed), the next newest claimant gets the address
back.

This layer is pure and incremental: a pod event re-evaluates only the pods that share one of
its addresses (old or new), so its cost is bounded by the number of conflicting pods, never by
the size of the cluster. ``controller/semantics.py`` decides ownership the same way, on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from controller.model import Pod
from controller.model.pod import IPAddress


@dataclass(frozen=True)
class IPConflict:
    """Several live pods report ``ip``: ``winner`` holds it, ``losers`` lost it."""

    ip: IPAddress
    winner: str  # pod key, namespace/name
    losers: tuple[str, ...]  # sorted

    def __str__(self) -> str:
        pods = ", ".join((self.winner, *self.losers))
        return f"{self.ip} is reported by {pods}: {self.winner} owns it"


def _ip_order(ip: IPAddress) -> tuple[int, int]:
    return (ip.version, int(ip))


class IPOwners:
    """The claims of live pods on addresses, and the effective pods that result."""

    def __init__(self) -> None:
        self._pods: dict[str, Pod] = {}  # pods claiming at least one address
        self._claimants: dict[IPAddress, set[str]] = {}
        self._lost: dict[str, frozenset[IPAddress]] = {}  # pods that do not own all they claim
        self._touched: set[IPAddress] = set()  # contested, claimants changed: to report

    def upsert(self, pod: Pod) -> list[tuple[str, Pod | None]]:
        """Record ``pod``; returns (key, effective pod) for it and every pod whose effective
        addresses changed because of it."""
        old = self._pods.get(pod.key)
        self._unclaim(old)
        if pod.addresses:
            self._pods[pod.key] = pod
            for ip in pod.addresses:
                self._claimants.setdefault(ip, set()).add(pod.key)
        old_ips = old.addresses if old is not None else ()
        if old is None or old.created != pod.created:
            self._touch(pod.addresses)  # its rank among the claimants may differ
        self._touch(set(old_ips) ^ set(pod.addresses))
        return [(pod.key, self._effective(pod)), *self._rerank(old_ips, pod.addresses, pod.key)]

    def delete(self, key: str) -> list[tuple[str, Pod | None]]:
        """Forget the pod ``key``; returns (key, None) and (key, effective pod) for every pod
        that got an address back."""
        old = self._pods.get(key)
        self._unclaim(old)
        self._lost.pop(key, None)
        if old is None:
            return [(key, None)]
        self._touch(old.addresses)
        return [(key, None), *self._rerank(old.addresses, (), key)]

    def take_conflicts(self) -> list[IPConflict]:
        """Addresses still contested whose claimants changed since the last call, by address."""
        out = []
        for ip in sorted(self._touched, key=_ip_order):
            claimants = self._claimants.get(ip, set())
            if len(claimants) > 1:
                winner = self._owner(ip)
                out.append(IPConflict(ip, winner, tuple(sorted(claimants - {winner}))))
        self._touched.clear()
        return out

    def _touch(self, ips: Iterable[IPAddress]) -> None:
        """Remember the contested ones of ``ips`` for ``take_conflicts`` (only those: without
        a caller that takes them, this stays as small as the conflicts)."""
        claimants = self._claimants
        self._touched.update(ip for ip in ips if len(claimants.get(ip, ())) > 1)

    def _unclaim(self, old: Pod | None) -> None:
        if old is None:
            return
        del self._pods[old.key]
        for ip in old.addresses:
            claimants = self._claimants[ip]
            claimants.discard(old.key)
            if not claimants:
                del self._claimants[ip]

    def _owner(self, ip: IPAddress) -> str:
        pods = self._pods
        return max(self._claimants[ip], key=lambda k: (pods[k].created, k))

    def _effective(self, pod: Pod) -> Pod:
        """``pod`` without the addresses a newer pod owns (itself when it owns them all)."""
        lost = frozenset(ip for ip in pod.addresses if self._owner(ip) != pod.key)
        if lost:
            self._lost[pod.key] = lost
            return dataclasses.replace(pod, ips=tuple(ip for ip in pod.ips if ip not in lost))
        self._lost.pop(pod.key, None)
        return pod

    def _rerank(
        self, before: Iterable[IPAddress], after: Iterable[IPAddress], changed: str
    ) -> list[tuple[str, Pod | None]]:
        """The other claimants of these addresses whose effective addresses changed."""
        others = {
            k for ip in {*before, *after} for k in self._claimants.get(ip, ()) if k != changed
        }
        out: list[tuple[str, Pod | None]] = []
        for key in sorted(others):
            lost = self._lost.get(key, frozenset())
            effective = self._effective(self._pods[key])
            if self._lost.get(key, frozenset()) != lost:
                out.append((key, effective))
        return out
