"""The upstream NetworkPolicy model on a real cluster: manifests, probes, expectations (pure).

Everything here builds data from ``tests.netpol_upstream`` (the 3 namespaces x 3 pods model and
the 45 TCP/UDP cases of upstream ``test/e2e/network/netpol``); ``e2e/cluster.py`` runs it.

Probes are upstream's: ``kubectl exec`` into the source pod and run
``/agnhost connect <ip>:<port> --timeout=<n>s --protocol=tcp|udp`` (exit status 0 = connected;
the agnhost ``serve-hostname`` servers answer UDP too). Pod IPs are probed directly, as in
``tests/integration/test_netpol_upstream.py``; upstream goes through each pod's Service, which
NetworkPolicy sees as the same post-DNAT pod IP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from tests.netpol_upstream import model
from tests.netpol_upstream.cases import (
    CASES,
    Action,
    ApplyPolicy,
    Case,
    DeletePolicy,
    SetNamespaceLabels,
    SetPodLabels,
)
from tests.netpol_upstream.model import ALL_PODS, Addresses, Reachability

PROBE_TIMEOUT = 1  # seconds, upstream's --timeout for one connection attempt
PROBE_CONTAINER = model.container_name(80, "TCP")  # any container of the source pod will do


# ---- the cluster -----------------------------------------------------------------------------


def node_of(pod: str, nodes: Sequence[str]) -> str:
    """Where a model pod runs: a and c share the first node, b the second (as in the netns
    integration suite), so every matrix has same-node and cross-node pairs."""
    if not nodes:
        raise ValueError("no nodes")
    _, name = model.split_pod_string(pod)
    return nodes[model.POD_NAMES.index(name) % 2 % len(nodes)]


def namespace_manifests() -> list[dict[str, Any]]:
    """Namespaces x, y, z with the model's labels (the API server adds the name label too)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": model.namespace_labels(ns)},
        }
        for ns in model.NAMESPACES
    ]


def pod_manifests(nodes: Sequence[str]) -> list[dict[str, Any]]:
    """The nine model pods as creatable Pod manifests, pinned to ``nodes`` by hostname label.

    Same containers as upstream (one agnhost ``serve-hostname`` per port and protocol, named
    ports ``serve-<port>-<proto>``); no status, uid or nodeName (the scheduler places them).
    """
    placeholder = dict.fromkeys(ALL_PODS, ("10.0.0.1", None))
    raw = model.pods(lambda ns, pod: "unused", lambda ns, pod: placeholder[f"{ns}/{pod}"])
    out = []
    for pod in raw:
        meta, spec = pod["metadata"], dict(pod["spec"])
        spec.pop("nodeName")
        spec["nodeSelector"] = {
            "kubernetes.io/hostname": node_of(
                model.pod_string(meta["namespace"], meta["name"]), nodes
            )
        }
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "labels": dict(meta["labels"]),
                },
                "spec": spec,
            }
        )
    return out


def pristine_labels() -> dict[tuple[str, str], dict[str, str]]:
    """Labels every case starts from: ``("Namespace", "x")`` / ``("Pod", "x/a")`` -> labels."""
    labels: dict[tuple[str, str], dict[str, str]] = {}
    for ns in model.NAMESPACES:
        labels[("Namespace", ns)] = model.namespace_labels(ns)
    for pod in ALL_PODS:
        labels[("Pod", pod)] = model.pod_labels(model.split_pod_string(pod)[1])
    return labels


def label_patch(current: Mapping[str, str], desired: Mapping[str, str]) -> dict[str, Any]:
    """A JSON merge patch making ``metadata.labels`` exactly ``desired`` (None removes).

    ``kubernetes.io/metadata.name`` is the API server's own namespace label: never removed.
    """
    labels: dict[str, Any] = {k: None for k in current if k not in desired}
    labels.pop(model.NAMESPACE_LABEL_KEY, None)
    labels.update(desired)
    return {"metadata": {"labels": labels}}


# ---- actions ---------------------------------------------------------------------------------


def policy_manifest(action: ApplyPolicy, addresses: Addresses) -> dict[str, Any]:
    """The NetworkPolicy an ``ApplyPolicy`` creates or replaces, ready for ``kubectl apply``."""
    policy = action.render(addresses)
    policy.setdefault("apiVersion", "networking.k8s.io/v1")
    policy.setdefault("kind", "NetworkPolicy")
    return policy


Labels = dict[tuple[str, str], dict[str, str]]
"""Current labels of the model objects, keyed like :func:`pristine_labels`."""


def label_target(action: SetNamespaceLabels | SetPodLabels) -> tuple[str, str]:
    """The key :func:`pristine_labels` uses for the object a label action changes."""
    if isinstance(action, SetNamespaceLabels):
        return ("Namespace", action.namespace)
    return ("Pod", model.pod_string(action.namespace, action.pod))


def label_command(target: tuple[str, str], patch: Mapping[str, Any]) -> list[str]:
    """kubectl arguments merge-patching the labels of a model namespace or pod."""
    kind, name = target
    if kind == "Namespace":
        where = ["patch", "namespace", name]
    else:
        ns, pod = model.split_pod_string(name)
        where = ["-n", ns, "patch", "pod", pod]
    return [*where, "--type", "merge", "-p", json.dumps(patch, sort_keys=True)]


def action_command(
    action: Action, addresses: Addresses, labels: Labels
) -> tuple[list[str], dict[str, Any] | None]:
    """``(kubectl arguments, manifest for stdin or None)`` for one case action.

    ApplyPolicy: ``apply -f -`` with the policy (create or replace); DeletePolicy: ``delete``;
    label actions: a merge patch to exactly the new label set, computed from ``labels``, which
    is updated to the new set.
    """
    if isinstance(action, ApplyPolicy):
        return ["apply", "-f", "-"], policy_manifest(action, addresses)
    if isinstance(action, DeletePolicy):
        return ["-n", action.namespace, "delete", "networkpolicy", action.name], None
    if isinstance(action, SetNamespaceLabels | SetPodLabels):
        target = label_target(action)
        patch = label_patch(labels[target], action.labels)
        labels[target] = dict(action.labels)
        return label_command(target, patch), None
    raise TypeError(f"unknown action {action!r}")


def reset_commands(labels: Labels) -> list[list[str]]:
    """kubectl arguments restoring the pristine model after a case: no NetworkPolicy in x, y,
    z and every changed label set back (``labels`` is updated)."""
    commands = [
        ["-n", ns, "delete", "networkpolicy", "--all", "--wait=true"] for ns in model.NAMESPACES
    ]
    for target, pristine in pristine_labels().items():
        if labels.get(target) != pristine:
            commands.append(label_command(target, label_patch(labels.get(target, {}), pristine)))
            labels[target] = dict(pristine)
    return commands


# ---- probes ------------------------------------------------------------------------------------


def host_port(ip: str, port: int) -> str:
    """``ip:port``, with brackets for IPv6 (Go's net.JoinHostPort, which agnhost parses)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def probe_command(
    src: str, dst_ip: str, port: int, protocol: str, timeout: int = PROBE_TIMEOUT
) -> list[str]:
    """kubectl arguments probing ``dst_ip:port`` from model pod ``src`` (``"ns/pod"``)."""
    proto = protocol.lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"unknown protocol {protocol!r}")
    ns, pod = model.split_pod_string(src)
    return [
        "exec",
        "-n",
        ns,
        pod,
        "-c",
        PROBE_CONTAINER,
        "--",
        "/agnhost",
        "connect",
        host_port(dst_ip, port),
        f"--timeout={timeout}s",
        f"--protocol={proto}",
    ]


def probe_pairs(pods: Sequence[str] = ALL_PODS) -> list[tuple[str, str]]:
    """Every ordered (src, dst) pair, src == dst included (upstream probes them and ignores
    the result)."""
    return [(s, d) for s in pods for d in pods]


def pairs_to_probe(expected: Reachability, *, skip_loopback: bool = True) -> list[tuple[str, str]]:
    """The pairs worth probing: upstream ignores src == dst, so by default they are skipped."""
    return [(s, d) for s, d in probe_pairs(expected.pods) if not (skip_loopback and s == d)]


def retry_pairs(
    expected: Reachability, observed: Mapping[tuple[str, str], bool]
) -> list[tuple[str, str]]:
    """Pairs that should connect but did not: worth one more, patient probe (a slow exec or
    a pod still settling must not fail a case; a wrong *allow* is never retried away)."""
    return [p for p, ok in observed.items() if expected[p] and not ok and p[0] != p[1]]


# ---- cases ---------------------------------------------------------------------------------------


def e2e_cases() -> list[Case]:
    """Every ported upstream case: all probe TCP or UDP (the SCTP ones are not ported)."""
    return [c for c in CASES if c.protocols <= {"TCP", "UDP"}]


def nothing_enforced_matrix() -> Reachability:
    """Every pod reaches every pod: what any policy amounts to while nothing enforces it."""
    return Reachability(ALL_PODS, True).freeze()


def baseline_policy() -> dict[str, Any]:
    """Deny all ingress to every pod of x: has no effect before nftpolicy is installed."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "e2e-baseline-deny-all", "namespace": "x"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }


def expected_with_baseline_enforced() -> Reachability:
    """What the baseline policy *would* give if something enforced it: x isolated both ways."""
    table = Reachability(ALL_PODS, True)
    for pod in ALL_PODS:
        if pod.startswith("x/"):
            table.expect_all_ingress(pod, False).expect_all_egress(pod, False)
    return table.freeze()
