"""We accept exactly what kube-apiserver v1.34 accepts, with the meaning it gives.

Each borderline object is created in the real API server (``control_plane`` fixture) with
strict field validation, as ``kubectl apply`` sends it. The test asserts that our strict parser
(the CLI's) accepts it exactly when the API server does, and for accepted objects that the
stored object, read back, parses strictly and leniently to the same model as the original;
for addresses also that this is the meaning the API server states in its warnings ("use
\\"10.0.0.0/8\\"").

Requests go through the client's raw call: its typed methods validate bodies client-side and
would refuse the very inputs under test.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from controller.model import (
    ApiObject,
    IPBlock,
    NetworkPolicy,
    Node,
    ParseError,
    Pod,
    meta,
    namespace,
    node,
    parse_object,
    pod,
    policy,
    selector,
)
from controller.testing.apiserver import TestControlPlane

pytestmark = pytest.mark.integration

Json = dict[str, Any]
NETPOL_API = "/apis/networking.k8s.io/v1"


@pytest.fixture(scope="module")
def api(control_plane: TestControlPlane) -> Iterator[k8s.ApiClient]:
    with control_plane.api_client() as client:
        yield client


@pytest.fixture(scope="module")
def ns(api: k8s.ApiClient) -> str:
    name = f"parity-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    status, _, body = request(api, "POST", "/api/v1/namespaces", body)
    assert status == 201, body
    return name


def request(
    api: k8s.ApiClient,
    method: str,
    path: str,
    body: Json | None = None,
    content_type: str = "application/json",
) -> tuple[int, list[str], Json]:
    """(HTTP status, warnings, response body) of one request with strict field validation."""
    method, url, headers, data, _ = api.param_serialize(
        method,
        path,
        query_params=[("fieldValidation", "Strict")] if method != "GET" else [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, body=data)
    response.read()
    warnings = [_unquote(w) for w in response.getheaders().getlist("Warning")]
    return response.status, warnings, json.loads(response.data)


def _unquote(header: str) -> str:
    """The text of a ``299 - "text"`` Warning header."""
    text = header.split(" ", 2)[2]
    return text[1:-1].replace('\\"', '"')


def ours(raw: Json) -> ApiObject | ParseError:
    try:
        return parse_object(raw, strict=True)
    except ParseError as e:
        return e


def create(api: k8s.ApiClient, path: str, raw: Json) -> tuple[bool, list[str], Json]:
    """Create ``raw`` at ``path``; (accepted, warnings, the stored object or the error)."""
    status, warnings, body = request(api, "POST", path, raw)
    if status >= 400:
        return False, warnings, body
    assert status == 201, body
    name = body["metadata"]["name"]
    status, _, stored = request(api, "GET", f"{path}/{name}")
    assert status == 200, stored
    return True, warnings, stored


def assert_parity(accepted: bool, mine: ApiObject | ParseError, server_said: Json) -> None:
    if accepted:
        assert not isinstance(mine, ParseError), f"API server accepted, we refused: {mine}"
    else:
        assert isinstance(mine, ParseError), (
            f"API server refused ({server_said.get('message')}), we accepted: {mine}"
        )


def assert_stored_means_the_same(stored: Json, kind: str, mine: ApiObject) -> ApiObject:
    raw = {"kind": kind, **stored}
    strict, lenient = parse_object(raw, strict=True), parse_object(raw)
    if isinstance(mine, Pod):  # the one field the API server sets
        mine = dataclasses.replace(mine, created=stored["metadata"]["creationTimestamp"])
    assert strict == lenient == mine
    return strict


_MEANING = re.compile(r'^(\S+): .*?(?:use|should be) "([^"]+)"')


def stated_meanings(warnings: list[str]) -> dict[str, str]:
    """Field path -> the value the API server says a legacy spelling stands for."""
    out: dict[str, str] = {}
    for warning in warnings:
        m = _MEANING.match(warning)
        if m is not None:
            out.setdefault(m.group(1), m.group(2))
    return out


# ---- NetworkPolicy ipBlock: legacy CIDRs -------------------------------------------------------

CIDR_CASES: list[tuple[str, list[str]]] = [
    # accepted by v1.34, most with a warning
    ("010.0.0.0/8", []),
    ("10.0.0.0/8", ["010.001.0.0/16"]),
    ("10.0.0.0/8", ["::ffff:10.1.0.0/112"]),
    ("::ffff:10.0.0.0/104", ["::ffff:10.1.0.0/112"]),
    ("10.0.0.0/8", ["::ffff:10.0.0.0/104"]),  # written longer, means the whole cidr
    ("0.0.0.0/0", ["::ffff:10.0.0.0/104"]),
    ("10.1.2.3/008", []),
    ("10.0.0.0/8", ["10.1.2.3/16"]),
    ("0000010.0.0.0/8", []),
    ("00000fd00::/8", []),
    ("FD00:0:0:0:0:0:0:0/8", ["fd00:0::1/128"]),
    ("::ffff:10.0.0.0/95", []),  # not mapped once masked: an IPv6 network
    ("1:2::3.4.5.6/64", []),
    ("192.168.1.1/32", []),
    # refused
    ("::ffff:10.0.0.0/104", ["10.1.0.0/16"]),  # written length 104 >= 16
    ("::ffff:0.0.0.0/96", ["010.0.0.0/8"]),
    ("::/0", ["::ffff:10.1.0.0/112"]),
    ("10.0.0.0/8", ["fd00::/16"]),
    ("10.0.0.0/8", ["11.0.0.0/16"]),
    ("10.0.0.0/8", ["10.0.0.0/8"]),
    ("fe80::1%eth0/64", []),
    ("10.0.0.0/255.0.0.0", []),
    ("1.2.3.4/33", []),
    (" 10.0.0.0/8", []),
    ("10.0.0.0/8 ", []),
    ("10.0.0.0", []),
    ("10.0.0.256/8", []),
    ("0x0a.0.0.0/8", []),
    ("10.0.0.0/\u0668", []),  # ARABIC-INDIC DIGIT EIGHT
    ("1:2:3:4:5:6:7::8/64", []),
    ("", []),
]


def netpol(ns: str, **spec: Any) -> Json:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"p-{uuid.uuid4().hex[:8]}", "namespace": ns},
        "spec": {"podSelector": {}, **spec},
    }


@pytest.mark.parametrize(("cidr", "excepts"), CIDR_CASES)
def test_ip_block_cidrs(api: k8s.ApiClient, ns: str, cidr: str, excepts: list[str]) -> None:
    block: Json = {"cidr": cidr, **({"except": excepts} if excepts else {})}
    raw = netpol(ns, ingress=[{"from": [{"ipBlock": block}]}])
    accepted, warnings, stored = create(api, f"{NETPOL_API}/namespaces/{ns}/networkpolicies", raw)
    mine = ours(raw)
    assert_parity(accepted, mine, stored)
    if not accepted:
        return
    assert isinstance(mine, NetworkPolicy)
    got = assert_stored_means_the_same(stored, "NetworkPolicy", mine)
    assert isinstance(got, NetworkPolicy)
    stated = stated_meanings(warnings)
    path = "spec.ingress[0].from[0].ipBlock"
    want = IPBlock(
        cidr=ipaddress.ip_network(stated.get(f"{path}.cidr", cidr)),
        excepts=tuple(
            sorted(
                {
                    ipaddress.ip_network(stated.get(f"{path}.except[{i}]", e))
                    for i, e in enumerate(excepts)
                },
                key=lambda n: (n.network_address, n.prefixlen),
            )
        ),
    )
    assert got.ingress[0].peers[0].ip_block == want, warnings


# ---- Pod IPs and Node pod CIDRs ---------------------------------------------------------------

POD_IP_CASES: list[tuple[list[str], str | None]] = [
    (["010.000.000.001"], None),
    (["::ffff:10.0.0.1"], None),  # IPv4, as Go's IPFamilyOf says
    (["::ffff:10.0.0.1", "fd00::1"], None),
    (["FD00:0:0:0:0:0:0:1"], None),
    (["10.0.0.2"], "10.0.0.1"),  # podIP differs from podIPs[0]: podIP alone counts
    (["10.0.0.1", "::ffff:10.0.0.2"], None),  # two IPv4 addresses: refused
    (["10.0.0.1", "fd00::1", "10.0.0.2"], None),
    (["10.0.0.1/32"], None),
    (["fe80::1%eth0"], None),
    (["10.0.0.1 "], None),
]


@pytest.mark.parametrize(("pod_ips", "pod_ip"), POD_IP_CASES)
def test_pod_ips(api: k8s.ApiClient, ns: str, pod_ips: list[str], pod_ip: str | None) -> None:
    name = f"pod-{uuid.uuid4().hex[:8]}"
    base = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }
    status, _, created = request(api, "POST", f"/api/v1/namespaces/{ns}/pods", base)
    assert status == 201, created
    patch: Json = {"status": {"phase": "Running", "podIPs": [{"ip": ip} for ip in pod_ips]}}
    if pod_ip is not None:
        patch["status"]["podIP"] = pod_ip
    path = f"/api/v1/namespaces/{ns}/pods/{name}"
    status, warnings, answer = request(
        api, "PATCH", f"{path}/status", patch, "application/merge-patch+json"
    )
    accepted = status < 400
    mine = ours({**copy.deepcopy(base), **patch})
    assert_parity(accepted, mine, answer)
    if not accepted:
        return
    assert isinstance(mine, Pod)
    _, _, stored = request(api, "GET", path)
    got = assert_stored_means_the_same(stored, "Pod", mine)
    assert isinstance(got, Pod)
    if pod_ip is None:
        stated = stated_meanings(warnings)
        want = [
            ipaddress.ip_address(stated.get(f"status.podIPs[{i}].ip", ip))
            for i, ip in enumerate(pod_ips)
        ]
        assert list(got.ips) == want, warnings


NODE_CIDR_CASES: list[list[str]] = [
    ["010.244.0.0/16"],
    ["::ffff:10.244.0.0/112", "fd00::/64"],
    ["10.244.1.2/24"],
    ["10.244.0.0/16", "::ffff:10.245.0.0/112"],  # two IPv4 CIDRs: refused
    ["10.244.0.0/255.255.0.0"],
]


@pytest.mark.parametrize("pod_cidrs", NODE_CIDR_CASES)
def test_node_pod_cidrs_and_addresses(api: k8s.ApiClient, pod_cidrs: list[str]) -> None:
    raw = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": f"node-{uuid.uuid4().hex[:8]}"},
        "spec": {"podCIDRs": pod_cidrs},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "not-an-ip"},  # never validated there
                {"type": "InternalIP", "address": "010.0.0.1"},
            ]
        },
    }
    accepted, warnings, stored = create(api, "/api/v1/nodes", raw)
    mine = ours(raw)
    assert_parity(accepted, mine, stored)
    if not accepted:
        return
    assert isinstance(mine, Node)
    got = assert_stored_means_the_same(stored, "Node", mine)
    assert isinstance(got, Node)
    stated = stated_meanings(warnings)
    assert list(got.pod_cidrs) == [
        ipaddress.ip_network(stated.get(f"spec.podCIDRs[{i}]", c), strict=False)
        for i, c in enumerate(pod_cidrs)
    ]
    assert got.internal_ips == (ipaddress.ip_address("10.0.0.1"),)
    assert got.warnings and "not-an-ip" in got.warnings[0]


# ---- labels, names, port names, field names and types ------------------------------------------

SUBDOMAIN_253 = ".".join(["a" * 63] * 3 + ["a" * 61])


def _netpol_with(ns: str, change: Any) -> Json:
    raw = netpol(ns)
    change(raw)
    return raw


OBJECT_CASES: list[tuple[str, Any]] = [
    (
        "label value with a trailing newline",
        lambda r: r["metadata"].update(labels={"app": "web\n"}),
    ),
    ("label value of 63", lambda r: r["metadata"].update(labels={"app": "a" * 63})),
    ("label value of 64", lambda r: r["metadata"].update(labels={"app": "a" * 64})),
    ("empty label value", lambda r: r["metadata"].update(labels={"app": ""})),
    ("label value -a", lambda r: r["metadata"].update(labels={"app": "-a"})),
    ("label value a_b.c-D", lambda r: r["metadata"].update(labels={"app": "a_b.c-D"})),
    ("prefixed key", lambda r: r["metadata"].update(labels={"example.com/app": "x"})),
    ("empty prefix", lambda r: r["metadata"].update(labels={"/app": "x"})),
    ("two slashes", lambda r: r["metadata"].update(labels={"a/b/c": "x"})),
    ("upper-case prefix", lambda r: r["metadata"].update(labels={"Example.com/app": "x"})),
    ("empty prefix label", lambda r: r["metadata"].update(labels={"a..b/app": "x"})),
    ("prefix of 253", lambda r: r["metadata"].update(labels={f"{SUBDOMAIN_253}/a": "x"})),
    ("prefix of 254", lambda r: r["metadata"].update(labels={f"b{SUBDOMAIN_253}/a": "x"})),
    ("key of 63", lambda r: r["metadata"].update(labels={"K" * 63: "x"})),
    ("key of 64", lambda r: r["metadata"].update(labels={"K" * 64: "x"})),
    ("key with newline", lambda r: r["metadata"].update(labels={"app\n": "x"})),
    (
        "selector value with newline",
        lambda r: r["spec"].update(
            podSelector={"matchExpressions": [{"key": "a", "operator": "In", "values": ["x\n"]}]}
        ),
    ),
    ("name a_b", lambda r: r["metadata"].update(name="a_b")),
    ("name of 253", lambda r: r["metadata"].update(name=SUBDOMAIN_253)),
    ("name of 254", lambda r: r["metadata"].update(name="b" + SUBDOMAIN_253)),
    ("name with dots", lambda r: r["metadata"].update(name="a.b.c")),
    ("annotation key with space", lambda r: r["metadata"].update(annotations={"a b": "x"})),
    ("annotation upper case", lambda r: r["metadata"].update(annotations={"Example.COM/X": "x"})),
    ("port name http", lambda r: r["spec"].update(ingress=[{"ports": [{"port": "http"}]}])),
    ("port name a--b", lambda r: r["spec"].update(ingress=[{"ports": [{"port": "a--b"}]}])),
    ("port name newline", lambda r: r["spec"].update(ingress=[{"ports": [{"port": "http\n"}]}])),
    ("port name 16", lambda r: r["spec"].update(ingress=[{"ports": [{"port": "a" * 16}]}])),
    ("port name digits", lambda r: r["spec"].update(ingress=[{"ports": [{"port": "8080"}]}])),
    ("port 2**31", lambda r: r["spec"].update(ingress=[{"ports": [{"port": 2**31}]}])),
    (
        "endPort as string",
        lambda r: r["spec"].update(ingress=[{"ports": [{"port": 80, "endPort": "90"}]}]),
    ),
    (
        "endPort equal",
        lambda r: r["spec"].update(ingress=[{"ports": [{"port": 80, "endPort": 80}]}]),
    ),
    ("endPort without port", lambda r: r["spec"].update(ingress=[{"ports": [{"endPort": 80}]}])),
    ("protocol tcp", lambda r: r["spec"].update(ingress=[{"ports": [{"protocol": "tcp"}]}])),
    ("misspelt from", lambda r: r["spec"].update(ingress=[{"form": [{"podSelector": {}}]}])),
    ("misspelt ports", lambda r: r["spec"].update(ingress=[{"Ports": [{"port": 80}]}])),
    ("misspelt podSelector", lambda r: r["spec"].update(podselector={})),
    ("misspelt labels", lambda r: r["metadata"].update(lables={"a": "b"})),
    (
        "misspelt except",
        lambda r: r["spec"].update(
            ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "excepts": []}}]}]
        ),
    ),
    ("status field", lambda r: r.update(status={})),
    ("three policyTypes", lambda r: r["spec"].update(policyTypes=["Ingress", "Egress", "Ingress"])),
    ("no podSelector", lambda r: r["spec"].pop("podSelector")),
    (
        "ipBlock and podSelector null",
        lambda r: r["spec"].update(
            ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": None}]}]
        ),
    ),
    ("empty peer", lambda r: r["spec"].update(ingress=[{"from": [{}]}])),
    (
        "Exists with values",
        lambda r: r["spec"].update(
            podSelector={"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}
        ),
    ),
    ("labels as a number", lambda r: r["metadata"].update(labels={"a": 5})),
]


@pytest.mark.parametrize("change", [c for _, c in OBJECT_CASES], ids=[i for i, _ in OBJECT_CASES])
def test_network_policy_fields(api: k8s.ApiClient, ns: str, change: Any) -> None:
    raw = _netpol_with(ns, change)
    accepted, _, stored = create(api, f"{NETPOL_API}/namespaces/{ns}/networkpolicies", raw)
    mine = ours(raw)
    assert_parity(accepted, mine, stored)
    if accepted:
        assert isinstance(mine, NetworkPolicy)
        assert_stored_means_the_same(stored, "NetworkPolicy", mine)


def _pod(ns: str, **spec: Any) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"pod-{uuid.uuid4().hex[:8]}", "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "x"}], **spec},
    }


POD_CASES: list[tuple[str, dict[str, Any]]] = [
    ("hostNetwork as a string", {"hostNetwork": "false"}),
    ("hostNetwork misspelt", {"hostnetwork": True}),
    (
        "containerPort as a string",
        {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": "80"}]}]},
    ),
    (
        "containerPort misspelt",
        {"containers": [{"name": "c", "image": "x", "port": [{"containerPort": 80}]}]},
    ),
    (
        "same port name twice in one container",
        {
            "containers": [
                {
                    "name": "c",
                    "image": "x",
                    "ports": [
                        {"name": "http", "containerPort": 80},
                        {"name": "http", "containerPort": 81, "protocol": "UDP"},
                    ],
                }
            ]
        },
    ),
    (
        "same port name in two containers",
        {
            "containers": [
                {"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 80}]},
                {"name": "d", "image": "x", "ports": [{"name": "http", "containerPort": 81}]},
            ]
        },
    ),
    (
        "sidecar and init container ports",
        {
            "initContainers": [
                {"name": "i", "image": "x", "ports": [{"name": "http", "containerPort": 1}]},
                {
                    "name": "s",
                    "image": "x",
                    "restartPolicy": "Always",
                    "ports": [{"name": "side", "containerPort": 2}],
                },
            ]
        },
    ),
    (
        "port name a--b",
        {
            "containers": [
                {"name": "c", "image": "x", "ports": [{"name": "a--b", "containerPort": 80}]}
            ]
        },
    ),
    ("unknown nested field below what we read", {"securityContext": {"runAsUser": 1}}),
]


@pytest.mark.parametrize("spec", [s for _, s in POD_CASES], ids=[i for i, _ in POD_CASES])
def test_pod_fields(api: k8s.ApiClient, ns: str, spec: dict[str, Any]) -> None:
    raw = _pod(ns, **spec)
    accepted, _, stored = create(api, f"/api/v1/namespaces/{ns}/pods", raw)
    mine = ours(raw)
    assert_parity(accepted, mine, stored)
    if accepted:
        assert isinstance(mine, Pod)
        assert_stored_means_the_same(stored, "Pod", mine)


def test_namespace_with_a_bad_default_deny_annotation_is_kept(api: k8s.ApiClient) -> None:
    raw = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": f"ns-{uuid.uuid4().hex[:8]}",
            "labels": {"team": "a"},
            "annotations": {"nftpolicy.io/default-deny": "sometimes"},
        },
    }
    accepted, _, stored = create(api, "/api/v1/namespaces", raw)
    assert accepted, stored
    got = parse_object({"kind": "Namespace", **stored})
    assert got == ours(raw)
    assert not got.default_deny and got.labels["team"] == "a"  # type: ignore[union-attr]
    assert got.warnings and "sometimes" in got.warnings[0]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("template", "ok"),
    [("UPPER", False), ("{u}" + "a" * 55, True), ("{u}" + "a" * 56, False), ("{u}.b", False)],
)
def test_namespace_names(api: k8s.ApiClient, template: str, ok: bool) -> None:
    """A Namespace name is a DNS-1123 label: at most 63, no dots, no upper case."""
    raw = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": template.format(u=uuid.uuid4().hex[:8])},
    }
    accepted, _, stored = create(api, "/api/v1/namespaces", raw)
    assert accepted is ok, stored
    assert_parity(accepted, ours(raw), stored)


# ---- the field tables agree with the API server's own schema -----------------------------------

_TABLES: dict[str, meta.Schema] = {
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": meta.OBJECT_META,
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector": selector.LABEL_SELECTOR,
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelectorRequirement": selector.REQUIREMENT,
    "io.k8s.api.networking.v1.NetworkPolicy": policy.NETWORK_POLICY,
    "io.k8s.api.networking.v1.NetworkPolicySpec": policy.NETWORK_POLICY_SPEC,
    "io.k8s.api.networking.v1.NetworkPolicyIngressRule": policy.INGRESS_RULE,
    "io.k8s.api.networking.v1.NetworkPolicyEgressRule": policy.EGRESS_RULE,
    "io.k8s.api.networking.v1.NetworkPolicyPeer": policy.PEER,
    "io.k8s.api.networking.v1.NetworkPolicyPort": policy.PORT,
    "io.k8s.api.networking.v1.IPBlock": policy.IP_BLOCK,
    "io.k8s.api.core.v1.Pod": pod.POD,
    "io.k8s.api.core.v1.PodSpec": pod.POD_SPEC,
    "io.k8s.api.core.v1.Container": pod.CONTAINER,
    "io.k8s.api.core.v1.ContainerPort": pod.CONTAINER_PORT,
    "io.k8s.api.core.v1.PodStatus": pod.POD_STATUS,
    "io.k8s.api.core.v1.PodIP": pod.POD_IP,
    "io.k8s.api.core.v1.Namespace": namespace.NAMESPACE,
    "io.k8s.api.core.v1.NamespaceSpec": namespace.NAMESPACE_SPEC,
    "io.k8s.api.core.v1.NamespaceStatus": namespace.NAMESPACE_STATUS,
    "io.k8s.api.core.v1.Node": node.NODE,
    "io.k8s.api.core.v1.NodeSpec": node.NODE_SPEC,
    "io.k8s.api.core.v1.NodeStatus": node.NODE_STATUS,
    "io.k8s.api.core.v1.NodeAddress": node.NODE_ADDRESS,
}
_SCALAR_REFS = {
    "io.k8s.apimachinery.pkg.apis.meta.v1.Time": meta.STRING,
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": meta.INT_OR_STRING,
}


def _json_type(prop: Json) -> str:
    """The type code of ``meta`` that an OpenAPI v3 property corresponds to."""
    ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("allOf", ()) if "$ref" in a), None)
    if ref is not None:
        return _SCALAR_REFS.get(ref.rsplit("/", 1)[-1], meta.OBJECT)
    kind = prop["type"]
    if kind == "integer":
        return meta.INT32 if prop.get("format") == "int32" else meta.INT64
    if kind == "array":
        return meta.STRINGS if prop["items"].get("type") == "string" else meta.LIST
    if kind == "object":
        values = prop.get("additionalProperties", {})
        return meta.STRING_MAP if values.get("type") == "string" else meta.OBJECT
    return {"string": meta.STRING, "boolean": meta.BOOLEAN}[kind]


def test_field_tables_match_the_api_servers_openapi(api: k8s.ApiClient) -> None:
    schemas: Json = {}
    for path in ("/openapi/v3/api/v1", f"/openapi/v3{NETPOL_API}"):
        status, _, doc = request(api, "GET", path)
        assert status == 200
        schemas.update(doc["components"]["schemas"])
    for name, table in _TABLES.items():
        properties = schemas[name]["properties"]
        want = {field: _json_type(prop) for field, prop in properties.items()}
        assert dict(table) == want, name
