"""Hypothesis strategies for small random clusters, as Kubernetes API dicts.

The vocabularies are tiny on purpose: with few label keys/values, namespaces and ports,
random selectors actually match random pods, rules overlap, named ports collide with numeric
ones, and ipBlocks cover some pod IPs but not others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

NAMESPACES = ("x", "y", "z")
NODES = ("n1", "n2")
POD_LABELS = {"app": ("a", "b", "c"), "tier": ("web", "db")}
NS_LABELS = {"team": ("red", "blue"), "env": ("prod", "dev")}
PORTS = (80, 81, 8080)
PORT_NAMES = ("http", "alt")
CIDRS_V4 = ("10.244.0.0/16", "10.244.1.0/24", "10.244.2.0/24", "0.0.0.0/0")
CIDRS_V6 = ("fd00:244::/32", "fd00:244:1::/48", "::/0")


@dataclass(frozen=True)
class GeneratedCluster:
    objects: list[dict[str, Any]]
    default_deny: str  # "none", "ingress", "egress" or "all"

    def pods(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == "Pod"]


def pod_ipv4(node_index: int, i: int) -> str:
    return f"10.244.{node_index + 1}.{i + 10}"


def pod_ipv6(node_index: int, i: int) -> str:
    return f"fd00:244:{node_index + 1}::{i + 10:x}"


def labels(vocab: dict[str, tuple[str, ...]]) -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in vocab.items()})


def selector(vocab: dict[str, tuple[str, ...]]) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from(sorted(vocab))

    @st.composite
    def expression(draw: st.DrawFn) -> dict[str, Any]:
        key = draw(keys)
        op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
        expr: dict[str, Any] = {"key": key, "operator": op}
        if op in ("In", "NotIn"):
            expr["values"] = draw(st.lists(st.sampled_from(vocab[key]), min_size=1, max_size=2))
        return expr

    return st.fixed_dictionaries(
        {},
        optional={
            "matchLabels": labels(vocab),
            "matchExpressions": st.lists(expression(), max_size=2),
        },
    )


@st.composite
def peer(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["pod", "ns", "both", "ipv4", "ipv6"]))
    if kind == "pod":
        return {"podSelector": draw(selector(POD_LABELS))}
    if kind == "ns":
        return {"namespaceSelector": draw(selector(NS_LABELS))}
    if kind == "both":
        return {
            "podSelector": draw(selector(POD_LABELS)),
            "namespaceSelector": draw(selector(NS_LABELS)),
        }
    cidrs = CIDRS_V4 if kind == "ipv4" else CIDRS_V6
    cidr = draw(st.sampled_from(cidrs))
    block: dict[str, Any] = {"cidr": cidr}
    inner = [c for c in cidrs if c != cidr and _strict_subnet(c, cidr)]
    if inner and draw(st.booleans()):
        block["except"] = [draw(st.sampled_from(inner))]
    elif draw(st.booleans()):
        # A single pod IP carved out or selected: /32 or /128 around a likely pod address.
        host = pod_ipv4(draw(st.integers(0, 1)), draw(st.integers(0, 3)))
        if kind == "ipv6":
            host = pod_ipv6(draw(st.integers(0, 1)), draw(st.integers(0, 3)))
        bits = 32 if kind == "ipv4" else 128
        if draw(st.booleans()) and _strict_subnet(f"{host}/{bits}", cidr):
            block["except"] = [f"{host}/{bits}"]
        else:
            block = {"cidr": f"{host}/{bits}"}
    return {"ipBlock": block}


def _strict_subnet(inner: str, outer: str) -> bool:
    import ipaddress

    a, b = ipaddress.ip_network(inner), ipaddress.ip_network(outer)
    return a.version == b.version and a.subnet_of(b) and a.prefixlen > b.prefixlen  # type: ignore[arg-type]


@st.composite
def port(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["protocol"] = draw(st.sampled_from(["TCP", "UDP"]))
    kind = draw(st.sampled_from(["number", "range", "name", "none"]))
    if kind == "number":
        out["port"] = draw(st.sampled_from(PORTS))
    elif kind == "range":
        out["port"] = 80
        out["endPort"] = draw(st.sampled_from([81, 8080]))
    elif kind == "name":
        out["port"] = draw(st.sampled_from(PORT_NAMES))
    return out


@st.composite
def rule(draw: st.DrawFn, peers_key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out[peers_key] = draw(st.lists(peer(), max_size=2))
    if draw(st.booleans()):
        out["ports"] = draw(st.lists(port(), max_size=2))
    return out


@st.composite
def policy(draw: st.DrawFn, index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": draw(selector(POD_LABELS))}
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(rule("from"), max_size=2))
    if draw(st.booleans()):
        spec["egress"] = draw(st.lists(rule("to"), max_size=2))
    types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    if types is not None:
        spec["policyTypes"] = types
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"p{index}", "namespace": draw(st.sampled_from(NAMESPACES))},
        "spec": spec,
    }


@st.composite
def pod(draw: st.DrawFn, index: int, dual_stack: bool) -> dict[str, Any]:
    node = draw(st.integers(0, len(NODES) - 1))
    ports = []
    for name in PORT_NAMES:
        if draw(st.booleans()):
            ports.append(
                {
                    "name": name,
                    "containerPort": draw(st.sampled_from(PORTS)),
                    "protocol": draw(st.sampled_from(["TCP", "UDP"])),
                }
            )
    ips = [{"ip": pod_ipv4(node, index)}]
    if dual_stack:
        ips.append({"ip": pod_ipv6(node, index)})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"pod{index}",
            "namespace": draw(st.sampled_from(NAMESPACES)),
            "labels": draw(labels(POD_LABELS)),
        },
        "spec": {"nodeName": NODES[node], "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ips[0]["ip"], "podIPs": ips},
    }


@st.composite
def clusters(
    draw: st.DrawFn, max_pods: int = 5, max_policies: int = 4, dual_stack: bool = True
) -> GeneratedCluster:
    objects: list[dict[str, Any]] = []
    for name in NAMESPACES:
        meta: dict[str, Any] = {"name": name, "labels": draw(labels(NS_LABELS))}
        if draw(st.integers(0, 5)) == 0:
            meta["annotations"] = {
                "nftpolicy.io/default-deny": draw(st.sampled_from(["ingress", "egress", "all"]))
            }
        objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    n_pods = draw(st.integers(1, max_pods))
    objects.extend(draw(pod(i, dual_stack)) for i in range(n_pods))
    n_policies = draw(st.integers(0, max_policies))
    objects.extend(draw(policy(i)) for i in range(n_policies))
    default_deny = draw(st.sampled_from(["none", "none", "ingress", "egress", "all"]))
    return GeneratedCluster(objects, default_deny)
