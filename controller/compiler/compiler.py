"""Incremental compiler: cluster events in, changed groups and node rules out.

Every event updates indexes in time proportional to what it touches (the selectors that could
match a pod's labels, the pods of one namespace), never a rescan of the cluster. The compiler
only records *which* groups and nodes changed; their contents are materialized on demand by
``group()`` and ``node_rules()``, so a burst of events costs one materialization per consumer.

Its cost is bounded per object: peers and rules compile in O(n log n) in a policy's size, and a
policy over a limit of ``model/limits.py`` compiles fail-closed (it isolates the pods it
selects and allows nothing), reported by ``policy_problems()``.

It does no I/O: the operator feeds it watch events and publishes what ``take_changes()``
reports; the CLI feeds it files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType

from controller.compiler.ip_owners import IPConflict, IPOwners
from controller.compiler.ir import (
    AddressGroup,
    CompiledPolicy,
    Group,
    LocalPod,
    NodeRules,
    PortGroup,
    PortRange,
    Rule,
)
from controller.compiler.peers import (
    AnyPeer,
    BlockPeer,
    Peer,
    PodPeer,
    address_group_name,
    describe,
    normalize_peers,
    peer_matches_pod,
    port_group_name,
)
from controller.compiler.selector_index import SelectorIndex
from controller.model import (
    ApiObject,
    Direction,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    PolicyRule,
    Protocol,
)
from controller.model.config import DefaultDeny
from controller.model.dns import DnsService, Endpoint, dns_endpoints, is_dns_pod
from controller.model.limits import too_large
from controller.model.namespaces import default_deny_directions, namespace_labels
from controller.model.pod import IPAddress

ALL_PORTS = (0, 65535)
# The cluster DNS port groups (see ``model/dns.py``): fixed names, one object per protocol
# however many nodes refer to them, so a DNS pod coming or going rewrites these two only.
DNS_GROUPS = {Protocol.UDP: "dns-udp", Protocol.TCP: "dns-tcp"}
_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Changes:
    """Names of groups and nodes whose compiled form may differ since the last call."""

    groups: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.groups or self.nodes)


@dataclass
class _PeerState:
    peer: Peer
    address_group: str | None = None
    port_groups: set[str] = field(default_factory=set)
    # Pod keys of members, tracked only where membership matters (see ``tracks_members``).
    members: set[str] = field(default_factory=set)

    @property
    def tracks_members(self) -> bool:
        return isinstance(self.peer, PodPeer) or bool(self.port_groups)

    def group_names(self) -> set[str]:
        names = set(self.port_groups)
        if self.address_group is not None:
            names.add(self.address_group)
        return names


@dataclass
class _GroupState:
    peer: Peer
    refs: int = 0
    port: tuple[str, Protocol] | None = None  # (name, protocol) for port groups


@dataclass(frozen=True)
class _PolicyCode:
    ingress: tuple[Rule, ...]
    egress: tuple[Rule, ...]
    groups: tuple[str, ...]  # every group acquired, with repetition, released on removal


def _label_keys(pod: Pod) -> Iterator[tuple[str, str, str | None]]:
    """Index entries of a pod: (namespace, key, value) and (namespace, key, None)."""
    for k, v in pod.labels.items():
        yield (pod.namespace, k, v)
        yield (pod.namespace, k, None)


def _relevant(pod: Pod) -> tuple[object, ...]:
    """The fields of a pod that can change compiled output (status churn is ignored)."""
    return (pod.labels, pod.addresses, pod.node, pod.ports)


class Compiler:
    def __init__(self, default_deny: DefaultDeny | None = None) -> None:
        self._default_deny = default_deny or DefaultDeny()
        self._namespaces: dict[str, Namespace] = {}
        self._nodes: dict[str, Node] = {}
        self._ip_owners = IPOwners()
        self._pods: dict[str, Pod] = {}  # effective pods (see ip_owners.py)
        self._pods_by_ns: dict[str, set[str]] = {}
        self._pods_by_label: dict[tuple[str, str, str | None], set[str]] = {}
        self._pods_by_node: dict[str, set[str]] = {}
        self._policies: dict[str, NetworkPolicy] = {}
        self._policy_code: dict[str, _PolicyCode] = {}
        self._problems: dict[str, str] = {}  # policies over a limit -> why (see limits.py)
        self._policy_index: dict[str, SelectorIndex[str]] = {}
        self._selected: dict[str, set[str]] = {}
        self._pod_policies: dict[str, set[str]] = {}
        self._peers: dict[Peer, _PeerState] = {}
        self._peer_index: dict[str, SelectorIndex[Peer]] = {}  # PodPeers of one namespace
        self._ns_peer_index: SelectorIndex[Peer] = SelectorIndex()  # by namespace selector
        self._ns_peers_matching: dict[str, set[Peer]] = {}  # namespace -> those that match it
        self._scan_peers: set[Peer] = set()  # ipBlock/any peers that track pod members
        self._groups: dict[str, _GroupState] = {}
        self._dirty_groups: set[str] = set()
        self._dirty_nodes: set[str] = set()
        self._dns_pods: set[str] = set()  # keys of the DNS pods (with addresses)
        self._dns_services: dict[str, DnsService] = {}

    # ---- outputs -------------------------------------------------------------------------

    def take_changes(self) -> Changes:
        changes = Changes(frozenset(self._dirty_groups), frozenset(self._dirty_nodes))
        self._dirty_groups = set()
        self._dirty_nodes = set()
        return changes

    def group_names(self) -> list[str]:
        """The groups of policies (the DNS groups are published through the nodes that
        refer to them, see ``node_rules``)."""
        return sorted(self._groups)

    def policies_using(self, group: str) -> list[str]:
        """Keys of the policies whose rules refer to ``group`` (to report a failed write)."""
        return sorted(k for k, code in self._policy_code.items() if group in code.groups)

    def policy_problems(self) -> Mapping[str, str]:
        """Policies compiled fail-closed because they exceed a limit (``model/limits.py``):
        key -> one-line reason, for the operator to report. A read-only live view."""
        return MappingProxyType(self._problems)

    def node_names(self) -> list[str]:
        return sorted(set(self._nodes) | {n for n, pods in self._pods_by_node.items() if pods})

    def group(self, name: str) -> Group | None:
        state = self._groups.get(name)
        if state is None:
            return self._dns_group(name)
        peer = state.peer
        members = self._peers[peer].members
        if state.port is not None:
            port_name, protocol = state.port
            pairs: set[tuple[IPAddress, int]] = set()
            for key in members:
                pod = self._pods[key]
                number = pod.named_port(port_name, protocol)
                if number is None:
                    continue
                ips = pod.addresses
                if isinstance(peer, BlockPeer):  # a dual-stack pod may be in the block by one IP
                    ips = tuple(ip for ip in ips if peer.contains(ip))
                pairs.update((ip, number) for ip in ips)
            return PortGroup(name, describe(peer), protocol, port_name, frozenset(pairs))
        if isinstance(peer, BlockPeer):
            return AddressGroup(name, describe(peer), blocks=peer.blocks)
        addresses = {ip for key in members for ip in self._pods[key].addresses}
        return AddressGroup(name, describe(peer), addresses=frozenset(addresses))

    def node_rules(self, node: str) -> NodeRules:
        """Every local pod with addresses (the agent drops addresses of the node's pod
        ranges that no listed pod has), and the policies isolating some of them."""
        local: list[LocalPod] = []
        applied: dict[str, list[str]] = {}  # policy -> local pods it selects, sorted
        for key in sorted(self._pods_by_node.get(node, ())):
            pod = self._pods[key]
            if not pod.addresses:
                continue
            deny = default_deny_directions(self._namespaces, pod.namespace, self._default_deny)
            policies = self._pod_policies.get(key, set())
            if not policies and not deny:
                local.append(LocalPod(key, pod.addresses))  # known, and open
                continue
            for pkey in policies:
                applied.setdefault(pkey, []).append(key)
            named = pod.named_ports  # Kubernetes' resolution order, first declared wins
            local.append(LocalPod(key, pod.addresses, named, deny))
        compiled = []
        for pkey in sorted(applied):
            policy, code = self._policies[pkey], self._policy_code[pkey]
            compiled.append(
                CompiledPolicy(
                    key=pkey,
                    applied_to=tuple(applied[pkey]),
                    isolates=policy.policy_types,
                    ingress=code.ingress,
                    egress=code.egress,
                )
            )
        known = self._nodes.get(node)
        return NodeRules(
            node,
            tuple(local),
            tuple(compiled),
            dns=self._dns_refs(local),
            pod_cidrs=known.pod_cidrs if known is not None else (),
        )

    # ---- events ------------------------------------------------------------------------------

    def upsert(self, obj: ApiObject) -> None:
        """Add or replace any kind of object (what a watch ADDED/MODIFIED event means)."""
        if isinstance(obj, Namespace):
            self.upsert_namespace(obj)
        elif isinstance(obj, Pod):
            self.upsert_pod(obj)
        elif isinstance(obj, NetworkPolicy):
            self.upsert_policy(obj)
        else:
            self.upsert_node(obj)

    # ---- configuration and nodes -----------------------------------------------------------

    def set_default_deny(self, config: DefaultDeny) -> None:
        if config != self._default_deny:
            old, self._default_deny = self._default_deny, config
            self._dirty_nodes.update(self.node_names())
            if old.dns != config.dns:
                dns = config.dns
                selected = self._pods_selected(dns.namespace, dns.pod_selector)
                self._dns_pods = {p.key for p in selected if p.addresses}
            self._dirty_groups.update(DNS_GROUPS.values())

    # ---- the cluster's DNS (default deny's DNS allowance, see model/dns.py) ----------------

    def set_dns_service(self, key: str, service: DnsService | None) -> None:
        """A DNS Service (one the operator's narrow watch reports) changed or is gone."""
        if service is None:
            changed = self._dns_services.pop(key, None) is not None
        else:
            changed = self._dns_services.get(key) != service
            self._dns_services[key] = service
        if changed:
            self._dirty_groups.update(DNS_GROUPS.values())

    def dns_service_keys(self) -> frozenset[str]:
        return frozenset(self._dns_services)

    def dns_endpoints(self) -> frozenset[Endpoint]:
        """What the DNS allowance opens: O(DNS pods x DNS Services' ports)."""
        pods = (self._pods[key] for key in self._dns_pods)
        return dns_endpoints(self._default_deny.dns, pods, self._dns_services.values())

    def _dns_group(self, name: str) -> PortGroup | None:
        protocol = next((p for p, n in DNS_GROUPS.items() if n == name), None)
        if protocol is None or not self._default_deny.allow_dns:
            return None
        dns = self._default_deny.dns
        where = f"cluster DNS: pods[{dns.pod_selector}] and services[{dns.service_selector}]"
        extra = f" in namespace {dns.namespace}, {len(dns.addresses)} address(es)"
        members = frozenset((ip, port) for p, ip, port in self.dns_endpoints() if p is protocol)
        return PortGroup(name, where + extra, protocol, "", members)

    def _dns_refs(self, local: list[LocalPod]) -> tuple[str, ...]:
        """The DNS groups a node's rules refer to: only where some pod is isolated for
        egress by default deny, so the groups span just the nodes that use them."""
        if self._default_deny.allow_dns and any(
            Direction.EGRESS in pod.default_deny for pod in local
        ):
            return tuple(sorted(DNS_GROUPS.values()))
        return ()

    def upsert_node(self, node: Node) -> None:
        if self._nodes.get(node.name) != node:
            self._nodes[node.name] = node
            self._dirty_nodes.add(node.name)

    def delete_node(self, name: str) -> None:
        if self._nodes.pop(name, None) is not None:
            self._dirty_nodes.add(name)

    # ---- namespaces --------------------------------------------------------------------------

    def upsert_namespace(self, ns: Namespace) -> None:
        old = self._namespaces.get(ns.name)
        self._namespaces[ns.name] = ns
        if old is None or old.labels != ns.labels:
            self._rematch_namespace(ns.name)
        if old is None or old.default_deny != ns.default_deny:
            self._dirty_pods_nodes(self._pods_by_ns.get(ns.name, ()))

    def delete_namespace(self, name: str) -> None:
        old = self._namespaces.pop(name, None)
        if old is not None:
            self._rematch_namespace(name)
            self._dirty_pods_nodes(self._pods_by_ns.get(name, ()))

    def _rematch_namespace(self, name: str) -> None:
        """Namespace labels changed: re-evaluate the peers that select namespaces by label."""
        labels = namespace_labels(self._namespaces, name)
        before = self._ns_peers_matching.get(name, set())
        after = set(self._ns_peer_index.matching(labels))
        self._ns_peers_matching[name] = after
        for peer in before ^ after:
            assert isinstance(peer, PodPeer)
            state = self._peers[peer]
            for pod in self._pods_selected(name, peer.pod_selector):
                if pod.addresses:
                    if peer in after:
                        state.members.add(pod.key)
                    else:
                        state.members.discard(pod.key)
                    self._dirty_groups |= self._groups_of(state, pod)

    # ---- pods ------------------------------------------------------------------------------------

    def upsert_pod(self, pod: Pod) -> None:
        for key, effective in self._ip_owners.upsert(pod):
            self._set_pod(key, effective)

    def delete_pod(self, key: str) -> None:
        for k, effective in self._ip_owners.delete(key):
            self._set_pod(k, effective)

    def take_ip_conflicts(self) -> list[IPConflict]:
        """Addresses reported by several live pods whose claimants changed since the last
        call, with the pod that owns each (see ``ip_owners.py``): for the operator to report."""
        return self._ip_owners.take_conflicts()

    def _set_pod(self, key: str, pod: Pod | None) -> None:
        """Make ``pod`` (an effective pod: only the addresses it owns) the pod ``key``, or
        remove it (None)."""
        old = self._pods.get(key)
        if old is not None:
            if pod is not None and _relevant(old) == _relevant(pod):
                self._pods[key] = pod
                return
            self._remove_pod(old)
        if pod is not None:
            self._add_pod(pod)

    def _add_pod(self, pod: Pod) -> None:
        key = pod.key
        if pod.namespace not in self._ns_peers_matching:
            self._rematch_namespace(pod.namespace)  # first sight of this namespace
        self._pods[key] = pod
        self._pods_by_ns.setdefault(pod.namespace, set()).add(key)
        for label in _label_keys(pod):
            self._pods_by_label.setdefault(label, set()).add(key)
        if pod.node:
            self._pods_by_node.setdefault(pod.node, set()).add(key)
        if pod.addresses and is_dns_pod(self._default_deny.dns, pod):
            self._dns_pods.add(key)
            self._dirty_groups.update(DNS_GROUPS.values())
        if pod.addresses:
            for peer in self._peers_matching(pod):
                state = self._peers[peer]
                state.members.add(key)
                self._dirty_groups |= self._groups_of(state, pod)
        index = self._policy_index.get(pod.namespace)
        policies = set(index.matching(pod.labels)) if index is not None else set()
        for pkey in policies:
            self._selected[pkey].add(key)
        if policies:
            self._pod_policies[key] = policies
        self._dirty_pods_nodes((key,))

    def _remove_pod(self, pod: Pod) -> None:
        key = pod.key
        self._dirty_pods_nodes((key,))
        if pod.addresses:
            for peer in self._peers_matching(pod):
                state = self._peers[peer]
                state.members.discard(key)
                self._dirty_groups |= self._groups_of(state, pod)
        for pkey in self._pod_policies.pop(key, ()):
            self._selected[pkey].discard(key)
        if key in self._dns_pods:
            self._dns_pods.discard(key)
            self._dirty_groups.update(DNS_GROUPS.values())
        del self._pods[key]
        self._pods_by_ns[pod.namespace].discard(key)
        for label in _label_keys(pod):
            bucket = self._pods_by_label[label]
            bucket.discard(key)
            if not bucket:
                del self._pods_by_label[label]
        if pod.node:
            self._pods_by_node[pod.node].discard(key)

    def _pods_selected(self, namespace: str, selector: LabelSelector) -> Iterator[Pod]:
        """Pods of ``namespace`` that ``selector`` matches, looking only at the pods that
        carry the rarest label (key, or key=value) the selector requires."""
        candidates: AbstractSet[str] = self._pods_by_ns.get(namespace, _NONE)
        size = len(candidates)
        index = self._pods_by_label
        for key, values in selector.required_keys():
            if values is None:
                bucket: AbstractSet[str] = index.get((namespace, key, None), _NONE)
            elif len(values) == 1:
                bucket = index.get((namespace, key, values[0]), _NONE)
            else:
                bucket = set().union(*(index.get((namespace, key, v), _NONE) for v in values))
            if len(bucket) < size:
                candidates, size = bucket, len(bucket)
        pods = self._pods
        if selector.is_empty:
            yield from (pods[key] for key in candidates)
            return
        for key in candidates:
            pod = pods[key]
            if selector.matches(pod.labels):
                yield pod

    def _groups_of(self, state: _PeerState, pod: Pod) -> set[str]:
        """The groups of ``state`` whose contents depend on ``pod`` (a member): the address
        group, and the port groups whose named port the pod actually has."""
        names = {state.address_group} if state.address_group is not None else set()
        for name in state.port_groups:
            port = self._groups[name].port
            assert port is not None
            if pod.named_port(*port) is not None:
                names.add(name)
        return names

    def _peers_matching(self, pod: Pod) -> Iterable[Peer]:
        index = self._peer_index.get(pod.namespace)
        if index is not None:
            yield from index.matching(pod.labels)
        for peer in self._ns_peers_matching.get(pod.namespace, ()):
            assert isinstance(peer, PodPeer)
            if peer.pod_selector.matches(pod.labels):
                yield peer
        labels = namespace_labels(self._namespaces, pod.namespace)
        for peer in self._scan_peers:
            if peer_matches_pod(peer, pod, labels):
                yield peer

    def _dirty_pods_nodes(self, keys: Iterable[str]) -> None:
        for key in keys:
            node = self._pods[key].node
            if node:
                self._dirty_nodes.add(node)

    # ---- policies --------------------------------------------------------------------------------

    def upsert_policy(self, policy: NetworkPolicy) -> None:
        old = self._policies.get(policy.key)
        if old == policy:
            return
        if old is not None:
            self._remove_policy(old)
        self._add_policy(policy)

    def delete_policy(self, key: str) -> None:
        old = self._policies.get(key)
        if old is not None:
            self._remove_policy(old)

    def _add_policy(self, policy: NetworkPolicy) -> None:
        key = policy.key
        acquired: list[str] = []
        problem = too_large(policy)
        if problem is None:
            ingress = tuple(
                self._compile_rule(policy, Direction.INGRESS, r, acquired) for r in policy.ingress
            )
            egress = tuple(
                self._compile_rule(policy, Direction.EGRESS, r, acquired) for r in policy.egress
            )
        else:  # fail closed: it still isolates what it selects (policy_types), allows nothing
            self._problems[key] = problem
            ingress = egress = ()
        self._policies[key] = policy
        self._policy_code[key] = _PolicyCode(ingress, egress, tuple(acquired))
        self._policy_index.setdefault(policy.namespace, SelectorIndex()).add(
            key, policy.pod_selector
        )
        selected = {p.key for p in self._pods_selected(policy.namespace, policy.pod_selector)}
        self._selected[key] = selected
        for k in selected:
            self._pod_policies.setdefault(k, set()).add(key)
        self._dirty_pods_nodes(selected)

    def _remove_policy(self, policy: NetworkPolicy) -> None:
        key = policy.key
        selected = self._selected.pop(key)
        self._dirty_pods_nodes(selected)
        for k in selected:
            pols = self._pod_policies[k]
            pols.discard(key)
            if not pols:
                del self._pod_policies[k]
        self._policy_index[policy.namespace].remove(key)
        for name in self._policy_code.pop(key).groups:
            self._release_group(name)
        self._problems.pop(key, None)
        del self._policies[key]

    def _compile_rule(
        self, policy: NetworkPolicy, direction: Direction, rule: PolicyRule, acquired: list[str]
    ) -> Rule:
        peers = normalize_peers(rule.peers, policy.namespace)
        if not rule.ports:
            return Rule(peers=self._address_groups(peers, acquired) if peers else None, ports=None)
        ranges: set[PortRange] = set()
        named: set[tuple[str, Protocol]] = set()
        for pp in rule.ports:
            if pp.port is None:
                ranges.add(PortRange(pp.protocol, *ALL_PORTS))
            elif isinstance(pp.port, int):
                ranges.add(PortRange(pp.protocol, pp.port, pp.end_port or pp.port))
            else:
                named.add((pp.port, pp.protocol))
        port_groups: list[str] = []
        if direction is Direction.EGRESS:
            # Egress named ports resolve on each destination pod: one group per peer and name.
            for port_name, protocol in sorted(named):
                for peer in peers or [AnyPeer()]:
                    port_groups.append(self._acquire(peer, acquired, (port_name, protocol)))
            named = set()
        address_part = bool(ranges or named)
        return Rule(
            peers=(self._address_groups(peers, acquired) if peers else None)
            if address_part
            else (),
            ports=tuple(sorted(ranges)),
            named_ports=tuple(sorted(named)),
            port_groups=tuple(sorted(set(port_groups))),
        )

    def _address_groups(self, peers: list[Peer], acquired: list[str]) -> tuple[str, ...]:
        return tuple(sorted({self._acquire(peer, acquired, None) for peer in peers}))

    # ---- groups --------------------------------------------------------------------------------

    def _acquire(self, peer: Peer, acquired: list[str], port: tuple[str, Protocol] | None) -> str:
        name = address_group_name(peer) if port is None else port_group_name(peer, *port)
        acquired.append(name)
        group = self._groups.get(name)
        if group is not None:
            group.refs += 1
            return name
        self._groups[name] = _GroupState(peer, 1, port)
        self._dirty_groups.add(name)
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _PeerState(peer)
        was_tracked = state.tracks_members and bool(state.group_names())
        if port is None:
            state.address_group = name
        else:
            state.port_groups.add(name)
        if not was_tracked and state.tracks_members:
            self._track_peer(state)
        return name

    def _release_group(self, name: str) -> None:
        group = self._groups[name]
        group.refs -= 1
        if group.refs:
            return
        del self._groups[name]
        self._dirty_groups.add(name)
        state = self._peers[group.peer]
        if group.port is None:
            state.address_group = None
        else:
            state.port_groups.discard(name)
        if not state.tracks_members or not state.group_names():
            self._untrack_peer(state)
        if not state.group_names():
            del self._peers[group.peer]

    def _track_peer(self, state: _PeerState) -> None:
        """Start maintaining the members of a peer: file it in an index, compute its pods."""
        peer = state.peer
        if isinstance(peer, PodPeer) and peer.namespace_selector is None:
            assert peer.namespace is not None
            self._peer_index.setdefault(peer.namespace, SelectorIndex()).add(
                peer, peer.pod_selector
            )
            namespaces: Iterable[str] = (peer.namespace,)
        elif isinstance(peer, PodPeer):
            assert peer.namespace_selector is not None
            self._ns_peer_index.add(peer, peer.namespace_selector)
            # every namespace seen so far has an entry (see _add_pod and upsert_namespace)
            namespaces = []
            for ns, matching in self._ns_peers_matching.items():
                if peer.matches_namespace(ns, namespace_labels(self._namespaces, ns)):
                    matching.add(peer)
                    namespaces.append(ns)
        else:
            self._scan_peers.add(peer)
            for pod in self._pods.values():
                if pod.addresses and peer_matches_pod(peer, pod, {}):  # labels unused here
                    state.members.add(pod.key)
            return
        for ns in namespaces:
            state.members.update(
                p.key for p in self._pods_selected(ns, peer.pod_selector) if p.addresses
            )

    def _untrack_peer(self, state: _PeerState) -> None:
        peer = state.peer
        state.members.clear()
        if isinstance(peer, PodPeer) and peer.namespace_selector is None:
            assert peer.namespace is not None
            self._peer_index[peer.namespace].remove(peer)
        elif isinstance(peer, PodPeer):
            self._ns_peer_index.remove(peer)
            for matching in self._ns_peers_matching.values():
                matching.discard(peer)
        else:
            self._scan_peers.discard(peer)
