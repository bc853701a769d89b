"""The two synthetic clusters of the datapath benchmark (``bench/datapath.py``).

Both clusters have the same namespaces and pods; they differ in their policies.

Pods: ``n_policies - 3`` synthetic pods exist only as API objects (labels, node, IP, named
container ports ``http``=8080 and ``metrics``=9090); they belong to ``n_policies // 5`` apps of
five replicas, spread over namespaces ``ns0..`` and round-robin (in blocks of ten) over ten
nodes, one of which is the real node ``n1``.  Three pods are real (network namespaces on
``n1``, namespace ``bench``): ``client`` (``app=bench-client``), ``denied``
(``app=bench-denied``) and ``server`` (``app=bench-server``, listening on TCP 80).

* **typical**: ``n_policies - 1`` policies, each selecting the five replicas of one app and
  admitting one kind of peer (same-namespace app on port 80, a whole team of namespaces on the
  named port ``http``, an ``ipBlock`` with ``except`` on the port range 8000-8100, a tier on
  ports 80 and 443); plus one policy, in the middle of the list, that selects the server and
  admits the client on TCP 80.  The denied pod is admitted by nothing.
* **worst**: all ``n_policies`` policies select the server.  Policy ``k`` admits a different
  random set of 10-50 synthetic pods (``idx In [...]`` in any namespace) on port 80, on a port
  range, or on the named port ``http``; only the last policy admits the client (TCP 80).
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Any

from controller.model import ApiObject, NetworkPolicy, Pod, parse_object

NODE = "n1"
NODE_CIDR = "10.1.0.0/16"
VIRTUAL_NODES = 10  # n1 plus v2..v10, which exist only as nodeName of API pods
BENCH_NS = "bench"
CLIENT_IP = "10.1.255.1"
DENIED_IP = "10.1.255.2"
SERVER_IP = "10.1.255.3"
SERVER_PORT = 80
HTTP_PORT = 8080  # number behind the named port "http" on every pod
REAL_PODS = (("client", CLIENT_IP), ("denied", DENIED_IP), ("server", SERVER_IP))


@dataclass(frozen=True)
class ClusterModel:
    """One benchmark cluster: parsed API objects plus the facts the bench reports."""

    name: str
    objects: list[ApiObject]
    description: str

    @property
    def pods(self) -> list[Pod]:
        """The pods of the cluster."""
        return [o for o in self.objects if isinstance(o, Pod)]

    @property
    def policies(self) -> list[NetworkPolicy]:
        """The policies, in creation order (which fixes the weave-npc rule order)."""
        return [o for o in self.objects if isinstance(o, NetworkPolicy)]


def _node_name(index: int) -> str:
    return NODE if index == 1 else f"v{index}"


def _pod(namespace: str, name: str, labels: dict[str, str], node: str, ip: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "main",
                    "ports": [
                        {"name": "http", "containerPort": HTTP_PORT},
                        {"name": "metrics", "containerPort": 9090},
                    ],
                }
            ],
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def _policy(
    namespace: str,
    name: str,
    selector: dict[str, Any],
    peers: list[dict[str, Any]],
    ports: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {
            "podSelector": selector,
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": ports}],
        },
    }


def _base(n_policies: int) -> tuple[list[dict[str, Any]], int, int, int]:
    """Namespaces and pods shared by both clusters; returns (objects, namespaces, apps, pods)."""
    n_ns = max(2, n_policies // 100)
    n_apps = n_ns * max(1, n_policies // (5 * n_ns))
    n_synthetic = max(10, n_policies - len(REAL_PODS))
    raw: list[dict[str, Any]] = [
        {"kind": "Namespace", "metadata": {"name": f"ns{k}", "labels": {"team": f"t{k % 3}"}}}
        for k in range(n_ns)
    ]
    raw.append({"kind": "Namespace", "metadata": {"name": BENCH_NS, "labels": {"team": "bench"}}})
    next_host = dict.fromkeys(range(1, VIRTUAL_NODES + 1), 0)
    for i in range(n_synthetic):
        app = i % n_apps
        node = (i // 10) % VIRTUAL_NODES + 1
        seq = next_host[node]
        next_host[node] += 1
        ip = str(ipaddress.IPv4Address(f"10.{node}.0.0") + 256 * (seq // 250) + seq % 250 + 1)
        labels = {"app": f"a{app}", "tier": f"tier{app % 4}", "idx": str(i)}
        raw.append(_pod(f"ns{app % n_ns}", f"p{i}", labels, _node_name(node), ip))
    for name, ip in REAL_PODS:
        raw.append(_pod(BENCH_NS, name, {"app": f"bench-{name}"}, NODE, ip))
    return raw, n_ns, n_apps, n_synthetic


def _client_policy(name: str) -> dict[str, Any]:
    return _policy(
        BENCH_NS,
        name,
        {"matchLabels": {"app": "bench-server"}},
        [{"podSelector": {"matchLabels": {"app": "bench-client"}}}],
        [{"protocol": "TCP", "port": SERVER_PORT}],
    )


def typical(n_policies: int) -> ClusterModel:
    """The typical cluster: the server is selected by exactly one policy (see module doc)."""
    raw, n_ns, n_apps, _ = _base(n_policies)
    policies: list[dict[str, Any]] = []
    for k in range(n_policies - 1):
        app = k % n_apps
        ns = f"ns{app % n_ns}"
        selector = {"matchLabels": {"app": f"a{app}"}}
        variant = k % 4
        if variant == 0:
            peers: list[dict[str, Any]] = [
                {"podSelector": {"matchLabels": {"app": f"a{(app + n_ns) % n_apps}"}}}
            ]
            ports: list[dict[str, Any]] = [{"protocol": "TCP", "port": 80}]
        elif variant == 1:
            peers = [{"namespaceSelector": {"matchLabels": {"team": f"t{k % 3}"}}}]
            ports = [{"protocol": "TCP", "port": "http"}]
        elif variant == 2:
            net = k % VIRTUAL_NODES + 1
            peers = [{"ipBlock": {"cidr": f"10.{net}.0.0/16", "except": [f"10.{net}.0.0/24"]}}]
            ports = [{"protocol": "TCP", "port": 8000, "endPort": 8100}]
        else:
            peers = [{"podSelector": {"matchLabels": {"tier": f"tier{k % 4}"}}}]
            ports = [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443}]
        policies.append(_policy(ns, f"p{k}", selector, peers, ports))
    policies.insert(len(policies) // 2, _client_policy("allow-bench-client"))
    return ClusterModel(
        "typical",
        [parse_object(o) for o in raw + policies],
        f"{n_policies} policies over {n_policies} pods; the server is selected by one policy "
        f"(#{len(policies) // 2 + 1} of {len(policies)}) that admits the client",
    )


def worst(n_policies: int) -> ClusterModel:
    """The worst cluster: every policy selects the server (see module doc)."""
    raw, _, _, n_synthetic = _base(n_policies)
    policies: list[dict[str, Any]] = []
    for k in range(n_policies - 1):
        rng = random.Random(k)
        members = sorted(rng.sample(range(n_synthetic), min(n_synthetic, 10 + k % 41)))
        peers = [
            {
                "namespaceSelector": {},
                "podSelector": {
                    "matchExpressions": [
                        {"key": "idx", "operator": "In", "values": [str(m) for m in members]}
                    ]
                },
            }
        ]
        variant = k % 3
        if variant == 0:
            ports: list[dict[str, Any]] = [{"protocol": "TCP", "port": 80}]
        elif variant == 1:
            first = 8000 + (k * 7) % 1000
            ports = [{"protocol": "TCP", "port": first, "endPort": first + 20}]
        else:
            ports = [{"protocol": "TCP", "port": "http"}]
        policies.append(
            _policy(BENCH_NS, f"w{k}", {"matchLabels": {"app": "bench-server"}}, peers, ports)
        )
    policies.append(_client_policy("w-last-allow-bench-client"))
    return ClusterModel(
        "worst",
        [parse_object(o) for o in raw + policies],
        f"{n_policies} policies all selecting the server, each admitting a different set of "
        "10-50 pods; only the last admits the client",
    )
