"""Parsing API objects: defaulting like the API server, and errors that name object + field."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.model import (
    Direction,
    Namespace,
    NetworkPolicy,
    Node,
    ParseError,
    Pod,
    Protocol,
    parse_object,
)
from controller.model.meta import Reader
from controller.model.selector import parse_selector

POLICY: dict[str, Any] = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "p", "namespace": "x"},
    "spec": {"podSelector": {}},
}


def policy(**spec: Any) -> NetworkPolicy:
    raw = copy.deepcopy(POLICY)
    raw["spec"].update(spec)
    obj = parse_object(raw)
    assert isinstance(obj, NetworkPolicy)
    return obj


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ({}, {Direction.INGRESS}),
        ({"egress": []}, {Direction.INGRESS}),  # egress: [] alone does not isolate egress
        ({"egress": [{}]}, {Direction.INGRESS, Direction.EGRESS}),
        ({"policyTypes": ["Egress"]}, {Direction.EGRESS}),
        (
            {"policyTypes": ["Ingress", "Egress"], "egress": []},
            {Direction.INGRESS, Direction.EGRESS},
        ),
    ],
)
def test_policy_types_defaulting(spec: dict[str, Any], types: set[Direction]) -> None:
    assert policy(**spec).policy_types == types


def test_port_defaults_and_ranges() -> None:
    p = policy(
        ingress=[
            {
                "ports": [
                    {"port": 80},
                    {"protocol": "UDP", "port": 53, "endPort": 60},
                    {"port": "http"},
                ]
            }
        ]
    )
    ports = p.ingress[0].ports
    assert [(x.protocol, x.port, x.end_port) for x in ports] == [
        (Protocol.TCP, 80, None),
        (Protocol.UDP, 53, 60),
        (Protocol.TCP, "http", None),
    ]


def test_missing_pod_selector_selects_every_pod_like_the_api_server() -> None:
    raw = copy.deepcopy(POLICY)
    del raw["spec"]["podSelector"]
    obj = parse_object(raw, strict=True)
    assert isinstance(obj, NetworkPolicy) and obj.pod_selector.is_empty


BAD_POLICIES = [
    (
        {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
        "spec.ingress[0].from[0].ipBlock.cidr",
        "invalid CIDR",
    ),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1"}}]}]}, "ipBlock.cidr", "invalid CIDR"),
    (
        {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
        "except[0]",
        "strict subset",
    ),
    (
        {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]},
        "except[0]",
        "strict subset",
    ),
    (
        {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
        "from[0]",
        "cannot be combined",
    ),
    ({"ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]", "must set"),
    (
        {"egress": [{"ports": [{"protocol": "ICMP"}]}]},
        "spec.egress[0].ports[0].protocol",
        "unsupported protocol",
    ),
    ({"egress": [{"ports": [{"port": 0}]}]}, "ports[0].port", "1-65535"),
    ({"egress": [{"ports": [{"port": 70000}]}]}, "ports[0].port", "1-65535"),
    ({"egress": [{"ports": [{"port": "HTTP_UPPER"}]}]}, "ports[0].port", "invalid port name"),
    ({"egress": [{"ports": [{"port": "80"}]}]}, "ports[0].port", "invalid port name"),
    (
        {"egress": [{"ports": [{"port": "http", "endPort": 90}]}]},
        "ports[0].endPort",
        "numeric port",
    ),
    ({"egress": [{"ports": [{"port": 90, "endPort": 80}]}]}, "ports[0].endPort", "between port"),
    ({"policyTypes": ["Sideways"]}, "spec.policyTypes[0]", "unknown policy type"),
    (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}},
        "matchExpressions[0].operator",
        "unknown operator",
    ),
    (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
        "matchExpressions[0].values",
        "non-empty",
    ),
    (
        {
            "podSelector": {
                "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
            }
        },
        "values",
        "must be empty",
    ),
    (
        {"podSelector": {"matchLabels": {"bad key!": "v"}}},
        "spec.podSelector.matchLabels",
        "invalid label key",
    ),
    ({"podSelector": {"matchLabels": {"k": "bad value!"}}}, "matchLabels.k", "invalid label value"),
    ({"ingress": "everything"}, "spec.ingress", "must be a list"),
]


@pytest.mark.parametrize(("spec", "field", "message"), BAD_POLICIES)
def test_bad_policies_name_object_and_field(spec: dict[str, Any], field: str, message: str) -> None:
    raw = copy.deepcopy(POLICY)
    raw["spec"].update(spec)
    with pytest.raises(ParseError) as err:
        parse_object(raw)
    text = str(err.value)
    assert text.startswith("NetworkPolicy x/p: ")
    assert field in text and message in text, text


def test_unknown_kind_and_api_version() -> None:
    with pytest.raises(ParseError, match="unsupported kind 'Service'"):
        parse_object({"kind": "Service", "metadata": {"name": "s"}})
    with pytest.raises(ParseError, match="unsupported apiVersion"):
        parse_object({**POLICY, "apiVersion": "extensions/v1beta1"})


def _pod(**status: Any) -> Pod:
    raw = {
        "kind": "Pod",
        "metadata": {"name": "a", "namespace": "x"},
        "spec": {
            "nodeName": "n1",
            "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}],
        },
        "status": status,
    }
    pod = parse_object(raw)
    assert isinstance(pod, Pod)
    return pod


def test_pod_addresses() -> None:
    dual = _pod(phase="Running", podIPs=[{"ip": "10.0.0.1"}, {"ip": "fd00::1"}])
    assert dual.addresses == (ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd00::1"))
    assert _pod(phase="Running", podIP="10.0.0.1").addresses == (ipaddress.ip_address("10.0.0.1"),)
    assert _pod(phase="Pending").addresses == ()  # no IP yet
    assert _pod(phase="Succeeded", podIP="10.0.0.1").addresses == ()  # IP may be reused
    assert _pod(phase="Failed", podIP="10.0.0.1").addresses == ()
    assert dual.named_port("http", Protocol.TCP) == 8080
    assert dual.named_port("http", Protocol.UDP) is None
    with pytest.raises(ParseError, match=r"status.podIPs\[1\].ip: second IPv4"):
        _pod(podIPs=[{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}])
    with pytest.raises(ParseError, match=r"Pod x/a: status.podIP: invalid IP address"):
        _pod(podIP="10.0.0.300")


def test_host_network_pods_hold_no_address() -> None:
    raw = {
        "kind": "Pod",
        "metadata": {"name": "h", "namespace": "kube-system"},
        "spec": {"hostNetwork": True},
        "status": {"phase": "Running", "podIP": "172.30.0.1"},
    }
    pod = parse_object(raw)
    assert isinstance(pod, Pod) and pod.addresses == ()


def test_namespace_name_label_and_default_deny_annotation() -> None:
    ns = parse_object(
        {
            "kind": "Namespace",
            "metadata": {"name": "x", "annotations": {"nftpolicy.io/default-deny": "all"}},
        }
    )
    assert isinstance(ns, Namespace)
    assert ns.labels == {"kubernetes.io/metadata.name": "x"}
    assert ns.default_deny == {Direction.INGRESS, Direction.EGRESS}
    assert ns.warnings == ()


def test_node() -> None:
    node = parse_object(
        {
            "kind": "Node",
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {
                "addresses": [
                    {"type": "Hostname", "address": "n1"},
                    {"type": "InternalIP", "address": "172.30.0.1"},
                ]
            },
        }
    )
    assert isinstance(node, Node)
    assert node.internal_ips == (ipaddress.ip_address("172.30.0.1"),)
    assert [str(c) for c in node.pod_cidrs] == ["10.244.1.0/24"]


# ---- selectors: against the definition in the Kubernetes docs, written out independently ----

KEYS = ("a", "b")
VALUES = ("1", "2")
label_sets = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES))
expressions = st.lists(
    st.tuples(
        st.sampled_from(KEYS),
        st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
        st.lists(st.sampled_from(VALUES), min_size=1, max_size=2),
    ),
    max_size=3,
)


def spec_matches(
    match_labels: dict[str, str], exprs: list[tuple[str, str, list[str]]], labels: dict[str, str]
) -> bool:
    for k, v in match_labels.items():
        if labels.get(k) != v:
            return False
    for key, op, values in exprs:
        if op == "In" and not (key in labels and labels[key] in values):
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@given(label_sets, expressions, label_sets)
def test_selector_matches_like_the_docs(
    match_labels: dict[str, str], exprs: list[tuple[str, str, list[str]]], labels: dict[str, str]
) -> None:
    raw = {
        "matchLabels": match_labels,
        "matchExpressions": [
            {"key": k, "operator": op, **({"values": vs} if op in ("In", "NotIn") else {})}
            for k, op, vs in exprs
        ],
    }
    selector = parse_selector(raw, Reader("NetworkPolicy x/p"), "spec.podSelector")
    assert selector.matches(labels) == spec_matches(match_labels, exprs, labels)
