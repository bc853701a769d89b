"""A weave-npc style iptables + ipset layout for the same policies, as a datapath baseline.

This rebuilds the *shape* of weave-npc's ingress enforcement (from the public description of
its design, not its code) so the benchmark can compare per-connection costs:

* ``FORWARD -o cali+ -j WEAVE-NPC`` then ``FORWARD -o cali+ -j DROP``: everything routed to a
  local pod goes through the policy chains, and what they do not accept is dropped (weave uses
  ``-o weave``, its bridge; here the pods hang off ``cali*`` veths);
* ``WEAVE-NPC``: ``-m state --state RELATED,ESTABLISHED -j ACCEPT``, multicast accept, then
  for ``NEW`` connections a jump to ``WEAVE-NPC-DEFAULT`` and to ``WEAVE-NPC-INGRESS``;
* ``WEAVE-NPC-DEFAULT``: one rule per namespace accepting destinations in an ipset of that
  namespace's pods that no ingress policy selects (non-isolated pods);
* ``WEAVE-NPC-INGRESS``: one linear chain, one rule per (policy rule, peer, port):
  ``-m set --match-set SRC src -m set --match-set DST dst -p tcp --dport P -m comment ...
  -j ACCEPT``, in policy creation order, where DST is a ``hash:ip`` set of the pods the policy
  selects (cluster-wide, as weave installs every policy on every node), SRC is a ``hash:ip``
  set of the peer's pods, a ``list:set`` of per-namespace pod sets for a bare
  ``namespaceSelector``, or a ``hash:net`` set (``except`` entries as ``nomatch``) for an
  ``ipBlock``.  Named ports are resolved on the selected pods (one DST set per number).

Egress policies are not modelled (the benchmark has none); weave-npc would in addition send
every packet from a pod through its egress chains, so this baseline is, if anything, cheaper
than the real thing.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from controller.model import ApiObject, Direction, Namespace, NetworkPolicy, Pod, PolicyPeer
from controller.model.namespaces import namespace_labels

POD_IFACES = "cali+"
CHAINS = ("WEAVE-NPC", "WEAVE-NPC-DEFAULT", "WEAVE-NPC-INGRESS")
LIST_SET_SIZE = 1024


@dataclass
class IpSet:
    """One ipset: ``kind`` is ``hash:ip``, ``hash:net`` or ``list:set``."""

    name: str
    kind: str
    members: list[str] = field(default_factory=list)


@dataclass
class WeaveLayout:
    """The ipsets and the filter-table rules (per chain, without ``-A CHAIN``)."""

    sets: dict[str, IpSet] = field(default_factory=dict)
    rules: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def ipset_restore(self) -> str:
        """Input for ``ipset restore`` (member sets of ``list:set`` sets come first)."""
        lines: list[str] = []
        ordered = sorted(self.sets.values(), key=lambda s: (s.kind == "list:set", s.name))
        for s in ordered:
            if s.kind == "list:set":
                lines.append(f"create {s.name} list:set size {LIST_SET_SIZE}")
            else:
                maxelem = max(65536, 2 * len(s.members))
                lines.append(f"create {s.name} {s.kind} family inet maxelem {maxelem}")
            lines.extend(f"add {s.name} {m}" for m in s.members)
        return "\n".join(lines) + "\n"

    def iptables_restore(self) -> str:
        """Input for ``iptables-restore``: the whole filter table."""
        lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
        lines += [f":{chain} - [0:0]" for chain in CHAINS]
        for chain in ("FORWARD", *CHAINS):
            lines += [f"-A {chain} {rule}" for rule in self.rules.get(chain, ())]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def rule_counts(self) -> dict[str, int]:
        """Number of rules per chain."""
        return {chain: len(self.rules.get(chain, ())) for chain in ("FORWARD", *CHAINS)}

    def set_summary(self) -> dict[str, int]:
        """Number of sets per kind, total members and the largest set."""
        out: dict[str, int] = defaultdict(int)
        for s in self.sets.values():
            out[f"{s.kind} sets"] += 1
            out["members"] += len(s.members)
            out["largest"] = max(out["largest"], len(s.members))
        return dict(out)


class _Builder:
    def __init__(self, objects: list[ApiObject]) -> None:
        self.namespaces = {o.name: o for o in objects if isinstance(o, Namespace)}
        self.pods = [o for o in objects if isinstance(o, Pod) and o.addresses]
        self.policies = [o for o in objects if isinstance(o, NetworkPolicy)]
        self.layout = WeaveLayout()

    def set_for(self, kind: str, key: Any, members: list[str]) -> str:
        digest = hashlib.sha256(json.dumps([kind, key], sort_keys=True).encode()).hexdigest()
        name = f"npc-{digest[:16]}"
        if name not in self.layout.sets:
            self.layout.sets[name] = IpSet(name, kind, members)
        return name

    def ips(self, pods: list[Pod]) -> list[str]:
        return sorted({str(ip) for p in pods for ip in p.addresses if ip.version == 4})

    def selected(self, policy: NetworkPolicy) -> list[Pod]:
        return [
            p
            for p in self.pods
            if p.namespace == policy.namespace and policy.pod_selector.matches(p.labels)
        ]

    def ns_matches(self, peer: PolicyPeer, pod: Pod) -> bool:
        assert peer.namespace_selector is not None
        return peer.namespace_selector.matches(namespace_labels(self.namespaces, pod.namespace))

    def src_set(self, policy: NetworkPolicy, peer: PolicyPeer) -> str:
        if peer.ip_block is not None:
            block = peer.ip_block
            members = [str(block.cidr)] + [f"{e} nomatch" for e in block.excepts]
            return self.set_for("hash:net", ["block", members], members)
        if peer.namespace_selector is not None and peer.pod_selector is None:
            # A bare namespaceSelector: a list:set of the matching namespaces' pod sets.
            names = sorted({p.namespace for p in self.pods if self.ns_matches(peer, p)})
            members = [
                self.set_for(
                    "hash:ip",
                    ["ns", ns],
                    self.ips([p for p in self.pods if p.namespace == ns]),
                )
                for ns in names
            ]
            return self.set_for("list:set", ["nssel", peer.namespace_selector.canonical()], members)
        pod_selector = peer.pod_selector
        assert pod_selector is not None
        if peer.namespace_selector is None:
            pods = [
                p
                for p in self.pods
                if p.namespace == policy.namespace and pod_selector.matches(p.labels)
            ]
            key: Any = ["pods", policy.namespace, pod_selector.canonical()]
        else:
            pods = [
                p for p in self.pods if self.ns_matches(peer, p) and pod_selector.matches(p.labels)
            ]
            key = ["pods", peer.namespace_selector.canonical(), pod_selector.canonical()]
        return self.set_for("hash:ip", key, self.ips(pods))

    def dst_sets(self, policy: NetworkPolicy, port: Any, protocol: str) -> list[tuple[str, str]]:
        """(DST set, ``--dport`` value) pairs for one policy port (named ports per number)."""
        selected = self.selected(policy)
        base = ["dst", policy.namespace, policy.pod_selector.canonical()]
        if port.port is None:
            return [(self.set_for("hash:ip", base, self.ips(selected)), "")]
        if isinstance(port.port, int):
            dport = str(port.port) if port.end_port is None else f"{port.port}:{port.end_port}"
            return [(self.set_for("hash:ip", base, self.ips(selected)), dport)]
        by_number: dict[int, list[Pod]] = defaultdict(list)
        for pod in selected:
            number = pod.named_port(port.port, port.protocol)
            if number is not None:
                by_number[number].append(pod)
        return [
            (self.set_for("hash:ip", [*base, port.port, protocol, n], self.ips(pods)), str(n))
            for n, pods in sorted(by_number.items())
        ]

    def build(self) -> WeaveLayout:
        rules = self.layout.rules
        rules["FORWARD"] = [f"-o {POD_IFACES} -j WEAVE-NPC", f"-o {POD_IFACES} -j DROP"]
        rules["WEAVE-NPC"] = [
            "-m state --state RELATED,ESTABLISHED -j ACCEPT",
            "-d 224.0.0.0/4 -j ACCEPT",
            "-m state --state NEW -j WEAVE-NPC-DEFAULT",
            "-m state --state NEW -j WEAVE-NPC-INGRESS",
        ]
        isolated: set[str] = set()
        for policy in self.policies:
            if Direction.INGRESS not in policy.policy_types:
                continue
            isolated.update(p.key for p in self.selected(policy))
            comment = f'-m comment --comment "{policy.namespace}/{policy.name}"'
            for rule in policy.ingress:
                peers: list[PolicyPeer | None] = list(rule.peers) or [None]
                ports: list[Any] = list(rule.ports) or [None]
                for peer in peers:
                    src = (
                        ""
                        if peer is None
                        else f"-m set --match-set {self.src_set(policy, peer)} src "
                    )
                    for port in ports:
                        if port is None:
                            dst = self.set_for(
                                "hash:ip",
                                ["dst", policy.namespace, policy.pod_selector.canonical()],
                                self.ips(self.selected(policy)),
                            )
                            rules["WEAVE-NPC-INGRESS"].append(
                                f"{src}-m set --match-set {dst} dst {comment} -j ACCEPT"
                            )
                            continue
                        proto = str(port.protocol).lower()
                        for dst, dport in self.dst_sets(policy, port, proto):
                            match_port = f"-p {proto}" + (f" --dport {dport}" if dport else "")
                            rules["WEAVE-NPC-INGRESS"].append(
                                f"{src}-m set --match-set {dst} dst {match_port} {comment} "
                                "-j ACCEPT"
                            )
        by_ns: dict[str, list[Pod]] = defaultdict(list)
        for pod in self.pods:
            by_ns[pod.namespace].append(pod)
        for ns in sorted(by_ns):
            open_pods = [p for p in by_ns[ns] if p.key not in isolated]
            name = self.set_for("hash:ip", ["default-allow", ns], self.ips(open_pods))
            rules["WEAVE-NPC-DEFAULT"].append(
                f'-m set --match-set {name} dst -m comment --comment "DefaultAllow {ns}" -j ACCEPT'
            )
        return self.layout


def build_layout(objects: list[ApiObject]) -> WeaveLayout:
    """The weave-npc style layout enforcing the ingress policies among ``objects`` (IPv4)."""
    return _Builder(objects).build()
