"""Deterministic synthetic clusters for benchmarks, shaped like real multi-team clusters.

The shape, in short:

* namespaces belong to a team and an environment (``team``/``env`` labels, a few with
  ``istio-injection`` or the ``nftpolicy.io/default-deny`` annotation), plus ``kube-system``
  (CoreDNS) and ``monitoring`` (Prometheus, a hostNetwork node-exporter DaemonSet);
* pods come from Deployments of 5-50 replicas that share ``app``, ``tier``, ``version`` and
  ``pod-template-hash`` labels (some mid-rollout with two versions), and have named container
  ports (``http``, ``metrics``, ``grpc``) whose numbers differ between Deployments;
* pods are spread round-robin over nodes and get addresses from per-node pod CIDRs
  (``10.x.y.z/22``); every fourth node is dual-stack and gives its pods an IPv6 address too;
  a few pods are Pending (no IP yet) or Succeeded (terminated);
* about ten policies per namespace, mixing default-deny, same-app, frontend-to-backend on named
  ports, ``namespaceSelector`` by team, ``podSelector`` + ``namespaceSelector`` with
  ``matchExpressions`` (``In``/``NotIn``/``Exists``), ``ipBlock`` with ``except``, egress to
  DNS in ``kube-system``, ``endPort`` ranges and egress to named ports; Prometheus scrapes the
  ``metrics`` named port of every pod in the cluster.

Everything is built as Kubernetes API dicts and parsed with :func:`controller.model.parse_object`
so the objects are exactly what the operator would see. The same seed gives the same cluster.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controller.model import Namespace, NetworkPolicy, Node, Pod, parse_object

TEAM_WORDS = (
    "payments", "search", "identity", "checkout", "catalog", "ads", "billing", "growth",
    "platform", "data", "ml", "mobile", "web", "infra", "security", "support", "media",
    "maps", "mail", "chat", "video", "storage", "risk", "fraud", "ledger", "pricing",
    "inventory", "shipping", "orders", "reviews", "loyalty", "partners", "analytics",
    "reporting", "notify", "content", "social", "games", "travel", "labs",
)  # fmt: skip
APP_WORDS = (
    "api", "web", "auth", "cart", "gateway", "worker", "indexer", "cache", "db", "queue",
    "scheduler", "frontend", "backend", "importer", "exporter", "renderer", "proxy", "store",
    "sync", "notifier",
)  # fmt: skip
ENVS = ("prod", "prod", "prod", "prod", "prod", "staging", "staging", "staging", "dev", "dev")
TIERS = ("frontend", "backend", "backend", "worker", "db", "cache")
HTTP_PORTS = (80, 8080, 8000, 3000, 5000)
METRICS_PORTS = (9090, 9100, 8081, 9102, 15020)
GRPC_PORTS = (50051, 9000, 8443, 6565)
DB_PORTS = {"db": 5432, "cache": 6379}
LB_RANGE = "172.16.0.0/12"  # load balancers and node addresses live here

T = TypeVar("T")


@dataclass(frozen=True)
class ClusterShape:
    """How big a synthetic cluster is; pods and policies are exact totals."""

    name: str
    namespaces: int
    nodes: int
    pods: int
    policies: int

    def scaled(self, factor: float) -> ClusterShape:
        """The same shape ``factor`` times as large (at least 3 namespaces and 1 node)."""
        return ClusterShape(
            self.name,
            max(3, round(self.namespaces * factor)),
            max(1, round(self.nodes * factor)),
            max(1, round(self.pods * factor)),
            max(1, round(self.policies * factor)),
        )


SMALL = ClusterShape("small", namespaces=100, nodes=100, pods=10_000, policies=1_000)
BIG = ClusterShape("big", namespaces=1_000, nodes=1_000, pods=100_000, policies=10_000)


@dataclass
class Deployment:
    """Pods of one app in one namespace: the labels they share and their container ports."""

    namespace: str
    app: str
    tier: str
    replicas: int
    ports: list[dict[str, Any]]
    # (version, pod-template-hash) of the ReplicaSets; two while a rollout is in progress.
    revisions: list[tuple[str, str]] = field(default_factory=list)
    host_network: bool = False

    def labels(self, revision: int = 0) -> dict[str, str]:
        version, template_hash = self.revisions[revision % len(self.revisions)]
        return {
            "app": self.app,
            "tier": self.tier,
            "version": version,
            "pod-template-hash": template_hash,
        }


@dataclass
class _NodeAddresses:
    v4: ipaddress.IPv4Network
    v6: ipaddress.IPv6Network | None
    next_host: int = 2


class SyntheticCluster:
    """A generated cluster (model objects) plus generators for follow-up events.

    ``namespaces``, ``nodes``, ``pods`` and ``policies`` are the initial objects; the
    ``new_*``/``relabel*`` methods produce realistic events against them from ``events_rng``.
    """

    def __init__(self, shape: ClusterShape, seed: int = 1) -> None:
        self.shape = shape
        self._rng = random.Random(seed)
        self.events_rng = random.Random(seed + 1)
        self._hash_counter = 0
        self._pod_counter = 0
        self._policy_counter = 0
        self.teams = _teams(max(4, shape.namespaces // 25))
        self.namespaces: list[Namespace] = []
        self.nodes: list[Node] = []
        self.pods: list[Pod] = []
        self.policies: list[NetworkPolicy] = []
        self.deployments: dict[str, list[Deployment]] = {}
        self.namespace_team: dict[str, str] = {}
        self._addresses: list[_NodeAddresses] = []
        self._build_nodes()
        self._build_namespaces()
        self._build_deployments()
        self._build_pods()
        self._build_policies()

    # ---- initial objects -----------------------------------------------------------------

    def _build_nodes(self) -> None:
        for i in range(self.shape.nodes):
            v4 = ipaddress.IPv4Network((int(ipaddress.IPv4Address("10.0.0.0")) + i * 1024, 22))
            v6 = ipaddress.IPv6Network(f"fd00:10:0:{i:x}::/64") if i % 4 == 0 else None
            self._addresses.append(_NodeAddresses(v4, v6))
            internal = ipaddress.IPv4Address(int(ipaddress.IPv4Address("172.16.0.10")) + i)
            raw = {
                "kind": "Node",
                "metadata": {"name": f"node-{i:04d}"},
                "spec": {"podCIDRs": [str(v4)] + ([str(v6)] if v6 else [])},
                "status": {"addresses": [{"type": "InternalIP", "address": str(internal)}]},
            }
            self.nodes.append(_parse(raw, Node))

    def _build_namespaces(self) -> None:
        rng = self._rng
        specials = [("kube-system", {}), ("monitoring", {"team": "platform", "env": "prod"})]
        for name, labels in specials:
            self.namespaces.append(_parse(_namespace_dict(name, labels, None), Namespace))
        for i in range(self.shape.namespaces - len(specials)):
            team = self.teams[i % len(self.teams)]
            env = rng.choice(ENVS)
            name = f"{team}-{rng.choice(APP_WORDS)}-{env}-{i:04d}"
            labels = {"team": team, "env": env}
            if rng.random() < 0.3:
                labels["istio-injection"] = "enabled"
            deny = "ingress" if rng.random() < 0.05 else None
            self.namespaces.append(_parse(_namespace_dict(name, labels, deny), Namespace))
            self.namespace_team[name] = team

    def _build_deployments(self) -> None:
        rng = self._rng
        nodes = self.shape.nodes
        coredns = Deployment(
            "kube-system",
            "coredns",
            "infra",
            max(2, min(nodes // 50, 20)),
            [
                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
            ],
        )
        prometheus = Deployment(
            "monitoring",
            "prometheus",
            "infra",
            2,
            [{"name": "http", "containerPort": 9090}, {"name": "metrics", "containerPort": 9090}],
        )
        exporter = Deployment(
            "monitoring",
            "node-exporter",
            "infra",
            nodes,
            [{"name": "metrics", "containerPort": 9100}],
            host_network=True,
        )
        special = [coredns, prometheus, exporter]
        for d in special:
            d.revisions = [("v1", self._template_hash())]
            self.deployments.setdefault(d.namespace, []).append(d)
        app_namespaces = [ns.name for ns in self.namespaces[2:]]
        remaining = self.shape.pods - sum(d.replicas for d in special)
        if remaining < len(app_namespaces):
            raise ValueError(f"{self.shape}: too few pods for {len(app_namespaces)} namespaces")
        for i, ns in enumerate(app_namespaces):
            budget = remaining // len(app_namespaces) + (
                1 if i < remaining % len(app_namespaces) else 0
            )
            used: set[str] = set()
            while budget > 0:
                replicas = min(budget, rng.randint(5, 50))
                budget -= replicas
                app = rng.choice([w for w in APP_WORDS if w not in used] or [f"app{len(used)}"])
                used.add(app)
                tier = rng.choice(TIERS)
                d = Deployment(ns, app, tier, replicas, self._container_ports(tier))
                d.revisions = [("v1", self._template_hash())]
                if rng.random() < 0.1:  # mid-rollout: a second ReplicaSet
                    d.revisions.append(("v2", self._template_hash()))
                elif rng.random() < 0.05:
                    d.revisions.append(("canary", self._template_hash()))
                self.deployments.setdefault(ns, []).append(d)

    def _container_ports(self, tier: str) -> list[dict[str, Any]]:
        rng = self._rng
        ports: list[dict[str, Any]] = []
        if tier in DB_PORTS:
            ports.append({"name": "tcp-" + tier, "containerPort": DB_PORTS[tier]})
        else:
            ports.append({"name": "http", "containerPort": rng.choice(HTTP_PORTS)})
            if rng.random() < 0.4:
                ports.append({"name": "grpc", "containerPort": rng.choice(GRPC_PORTS)})
        if rng.random() < 0.8:
            ports.append({"name": "metrics", "containerPort": rng.choice(METRICS_PORTS)})
        return ports

    def _build_pods(self) -> None:
        rng = self._rng
        for deployments in self.deployments.values():
            for d in deployments:
                for r in range(d.replicas):
                    revision = 1 if len(d.revisions) > 1 and rng.random() < 0.3 else 0
                    if d.host_network:
                        node = r
                    else:
                        node = self._pod_counter % self.shape.nodes
                        self._pod_counter += 1
                    phase = "Running"
                    roll = rng.random()
                    if roll < 0.01:
                        phase = "Pending"
                    elif roll < 0.02:
                        phase = "Succeeded"
                    self.pods.append(self._pod(d, revision, node, phase, suffix=f"{r}"))

    def _pod(self, d: Deployment, revision: int, node: int, phase: str, suffix: str) -> Pod:
        labels = d.labels(revision)
        raw: dict[str, Any] = {
            "kind": "Pod",
            "metadata": {
                "name": f"{d.app}-{labels['pod-template-hash']}-{suffix}",
                "namespace": d.namespace,
                "labels": labels,
            },
            "spec": {
                "containers": [{"name": d.app, "ports": d.ports}],
                "hostNetwork": d.host_network,
            },
            "status": {"phase": phase},
        }
        if phase == "Pending":
            return _parse(raw, Pod)
        raw["spec"]["nodeName"] = self.nodes[node].name
        ips = [str(self.nodes[node].internal_ips[0])] if d.host_network else self._allocate(node)
        raw["status"]["podIPs"] = [{"ip": ip} for ip in ips]
        raw["status"]["podIP"] = ips[0]
        return _parse(raw, Pod)

    def _allocate(self, node: int) -> list[str]:
        addrs = self._addresses[node]
        host = addrs.next_host
        if host >= addrs.v4.num_addresses - 1:
            raise ValueError(f"pod CIDR {addrs.v4} of node {node} is full")
        addrs.next_host += 1
        ips = [str(addrs.v4.network_address + host)]
        if addrs.v6 is not None:
            ips.append(str(addrs.v6.network_address + host))
        return ips

    def _template_hash(self) -> str:
        self._hash_counter += 1
        return f"{(self._hash_counter * 2654435761) % (1 << 40):010x}"[:10]

    # ---- policies --------------------------------------------------------------------------

    def _build_policies(self) -> None:
        special = [
            _policy(
                "kube-system",
                "allow-dns",
                {"matchLabels": {"k8s-app": "kube-dns"}},
                ingress=[
                    {
                        "from": [{"namespaceSelector": {}}],
                        "ports": [
                            {"protocol": "UDP", "port": 53},
                            {"protocol": "TCP", "port": 53},
                        ],
                    }
                ],
            ),
            _policy(
                "monitoring",
                "prometheus-scrape",
                {"matchLabels": {"app": "prometheus"}},
                types=["Egress"],
                egress=[
                    {
                        "to": [{"namespaceSelector": {}}],
                        "ports": [{"port": "metrics"}, {"port": "http-metrics"}],
                    },
                    {"to": [{"ipBlock": {"cidr": LB_RANGE}}], "ports": [{"port": 9100}]},
                    _DNS_EGRESS,
                ],
            ),
        ]
        self.policies.extend(_parse(p, NetworkPolicy) for p in special)
        app_namespaces = [ns.name for ns in self.namespaces[2:]]
        remaining = max(0, self.shape.policies - len(special))
        for i, ns in enumerate(app_namespaces):
            budget = remaining // len(app_namespaces) + (
                1 if i < remaining % len(app_namespaces) else 0
            )
            for raw in self._namespace_policies(ns, budget):
                self.policies.append(_parse(raw, NetworkPolicy))
        del self.policies[self.shape.policies :]

    def _namespace_policies(self, ns: str, budget: int) -> Iterator[dict[str, Any]]:
        """``budget`` policies for one app namespace: a baseline, a shuffled mix, then per-app."""
        optional = list(_KINDS[len(_BASELINE_KINDS) :])
        self._rng.shuffle(optional)
        kinds = itertools.chain(_BASELINE_KINDS, optional, itertools.cycle(_PER_APP_KINDS))
        for serial, kind in zip(range(budget), kinds, strict=False):
            yield self._make_policy(kind, ns, serial)

    def _make_policy(self, kind: str, ns: str, serial: int) -> dict[str, Any]:
        """One policy of ``kind`` (see ``_KINDS``) for namespace ``ns``."""
        rng = self._rng
        apps = self.deployments[ns]
        app = rng.choice(apps)
        other = rng.choice(apps)
        team = self.namespace_team.get(ns, "platform")
        other_team = rng.choice(self.teams)
        name = f"{kind}-{serial}"
        if kind == "default-deny-ingress":
            return _policy(ns, name, {}, types=["Ingress"])
        if kind == "default-deny-egress":
            return _policy(ns, name, {}, types=["Egress"], egress=[_DNS_EGRESS])
        if kind == "allow-same-app":
            sel = {"matchLabels": {"app": app.app}}
            return _policy(ns, f"{name}-{app.app}", sel, ingress=[{"from": [{"podSelector": sel}]}])
        if kind == "allow-prometheus":
            return _policy(
                ns,
                name,
                {},
                ingress=[
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                                },
                                "podSelector": {"matchLabels": {"app": "prometheus"}},
                            }
                        ],
                        "ports": [{"port": "metrics"}],
                    }
                ],
            )
        if kind == "frontend-to-backend":
            return _policy(
                ns,
                name,
                {"matchLabels": {"tier": "backend"}},
                ingress=[
                    {
                        "from": [{"podSelector": {"matchLabels": {"tier": "frontend"}}}],
                        "ports": [{"port": "http"}, {"port": "grpc"}],
                    }
                ],
            )
        if kind == "allow-from-team":
            port = _first_port(app, "http") or 8080
            return _policy(
                ns,
                f"{name}-{app.app}",
                {"matchLabels": {"app": app.app}},
                ingress=[
                    {
                        "from": [{"namespaceSelector": {"matchLabels": {"team": team}}}],
                        "ports": [{"protocol": "TCP", "port": port}],
                    }
                ],
            )
        if kind == "allow-from-partner":
            partner_apps = sorted(rng.sample(APP_WORDS, 2))
            return _policy(
                ns,
                f"{name}-{app.app}",
                {"matchLabels": {"app": app.app, "tier": app.tier}},
                ingress=[
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"team": other_team},
                                    "matchExpressions": [_expr("env", "In", "prod", "staging")],
                                },
                                "podSelector": {
                                    "matchExpressions": [_expr("app", "In", *partner_apps)]
                                },
                            }
                        ]
                    }
                ],
            )
        if kind == "allow-lb":
            return _policy(
                ns,
                name,
                {"matchLabels": {"tier": "frontend"}},
                ingress=[
                    {
                        "from": [
                            {
                                "ipBlock": {
                                    "cidr": LB_RANGE,
                                    "except": ["172.20.0.0/16", "172.21.128.0/17"],
                                }
                            }
                        ],
                        "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8100}],
                    }
                ],
            )
        if kind == "allow-internet-egress":
            return _policy(
                ns,
                name,
                {"matchExpressions": [_expr("tier", "In", "backend", "worker")]},
                types=["Egress"],
                egress=[
                    {
                        "to": [
                            {
                                "ipBlock": {
                                    "cidr": "0.0.0.0/0",
                                    "except": ["10.0.0.0/8", "169.254.169.254/32", LB_RANGE],
                                }
                            },
                            {"ipBlock": {"cidr": "::/0", "except": ["fd00::/8"]}},
                        ],
                        "ports": [{"protocol": "TCP", "port": 443}],
                    }
                ],
            )
        if kind == "egress-to-db":
            return _policy(
                ns,
                name,
                {
                    "matchExpressions": [
                        _expr("tier", "In", "backend", "worker"),
                        _expr("version", "NotIn", "canary"),
                    ]
                },
                types=["Egress"],
                egress=[
                    {
                        "to": [
                            {
                                "podSelector": {
                                    "matchExpressions": [_expr("tier", "In", "cache", "db")]
                                }
                            }
                        ],
                        "ports": [
                            {"protocol": "TCP", "port": 5432, "endPort": 5439},
                            {"protocol": "TCP", "port": 6379},
                        ],
                    }
                ],
            )
        if kind == "egress-grpc":
            return _policy(
                ns,
                f"{name}-{app.app}-to-{other.app}",
                {"matchLabels": {"app": app.app}},
                types=["Egress"],
                egress=[
                    {
                        "to": [{"podSelector": {"matchLabels": {"app": other.app}}}],
                        "ports": [{"port": "grpc"}, {"port": "http"}],
                    }
                ],
            )
        if kind == "allow-internal-tls":
            return _policy(
                ns,
                name,
                {
                    "matchExpressions": [
                        _expr("app", "Exists"),
                        _expr("version", "NotIn", "canary"),
                    ]
                },
                ingress=[
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchExpressions": [_expr("env", "NotIn", "dev")]
                                },
                                "podSelector": {"matchExpressions": [_expr("tier", "Exists")]},
                            }
                        ],
                        "ports": [{"protocol": "TCP", "port": 8443}],
                    }
                ],
            )
        raise ValueError(f"unknown policy kind {kind!r}")

    # ---- events ----------------------------------------------------------------------------

    def new_pod(self) -> Pod:
        """A new replica of a random app Deployment on the next node, with fresh addresses."""
        rng = self.events_rng
        ns = rng.choice(self.namespaces[2:]).name
        d = rng.choice(self.deployments[ns])
        node = self._pod_counter % self.shape.nodes
        self._pod_counter += 1
        return self._pod(d, 0, node, "Running", suffix=f"new{self._pod_counter}")

    def relabel_pod(self, pod: Pod) -> Pod:
        """``pod`` carrying the labels of another Deployment of its namespace (if any)."""
        rng = self.events_rng
        current = pod.labels.get("app")
        others = [d for d in self.deployments[pod.namespace] if d.app != current]
        if not others:
            labels = {**pod.labels, "app": f"{current}-renamed"}
        else:
            labels = rng.choice(others).labels()
        return dataclasses.replace(pod, labels=labels)

    def relabel_namespace(self, ns: Namespace) -> Namespace:
        """``ns`` moved to another team (its ``team`` label changes)."""
        rng = self.events_rng
        team = rng.choice([t for t in self.teams if t != ns.labels.get("team")])
        return dataclasses.replace(ns, labels={**ns.labels, "team": team})

    def new_policy(self) -> NetworkPolicy:
        """A policy of a random kind for a random app namespace, under a fresh name."""
        rng = self.events_rng
        ns = rng.choice(self.namespaces[2:]).name
        kind = rng.choice(_KINDS)
        self._policy_counter += 1
        raw = self._make_policy(kind, ns, 100_000 + self._policy_counter)
        return _parse(raw, NetworkPolicy)


_KINDS = (
    "default-deny-ingress",
    "allow-same-app",
    "allow-prometheus",
    "default-deny-egress",
    "frontend-to-backend",
    "allow-from-team",
    "allow-from-partner",
    "egress-to-db",
    "allow-lb",
    "egress-grpc",
    "allow-internet-egress",
    "allow-internal-tls",
)

_BASELINE_KINDS = _KINDS[:3]
_PER_APP_KINDS = ("allow-same-app", "allow-from-team", "egress-grpc", "allow-from-partner")

_DNS_EGRESS: dict[str, Any] = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def _teams(count: int) -> list[str]:
    return [TEAM_WORDS[i] if i < len(TEAM_WORDS) else f"team{i}" for i in range(count)]


def _first_port(d: Deployment, name: str) -> int | None:
    for p in d.ports:
        if p.get("name") == name:
            return int(p["containerPort"])
    return None


def _expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    """One ``matchExpressions`` entry."""
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


def _namespace_dict(name: str, labels: dict[str, str], deny: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if deny is not None:
        meta["annotations"] = {"nftpolicy.io/default-deny": deny}
    return {"kind": "Namespace", "metadata": meta}


def _policy(
    ns: str,
    name: str,
    pod_selector: dict[str, Any],
    types: list[str] | None = None,
    ingress: list[dict[str, Any]] | None = None,
    egress: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": pod_selector}
    if types is not None:
        spec["policyTypes"] = types
    if ingress:
        spec["ingress"] = ingress
    if egress:
        spec["egress"] = egress
    return {
        "kind": "NetworkPolicy",
        "apiVersion": "networking.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def _parse(raw: dict[str, Any], kind: type[T]) -> T:
    obj = parse_object(raw)
    if not isinstance(obj, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(obj).__name__}")
    return obj
