"""Parse like kube-apiserver v1.34: what it accepts, with its meaning; what it refuses, refused.

The accepted/refused verdicts and the meanings in these tables are what the real API server
answered (tests/integration/test_apiserver_parity.py checks them live); its warnings name the
meaning ("use \\"10.0.0.0/8\\""). Named ports follow ``FindPort`` of k8s.io/endpointslice.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from controller.agent.verdict import cluster_allows
from controller.model import (
    IPBlock,
    Namespace,
    NetworkPolicy,
    Node,
    ParseError,
    Pod,
    Protocol,
    parse_object,
)
from controller.model.document import MAX_DEPTH
from controller.model.ipaddr import parse_cidr, parse_ip
from controller.semantics import evaluate
from tests.cluster_strategies import GeneratedCluster
from tests.unit.test_pipeline_property import build

Json = dict[str, Any]


def policy(name: str = "p", **spec: Any) -> Json:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {"podSelector": {}, **spec},
    }


def block_policy(cidr: str, excepts: list[str]) -> Json:
    block: Json = {"cidr": cidr, **({"except": excepts} if excepts else {})}
    return policy(ingress=[{"from": [{"ipBlock": block}]}])


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


# ---- legacy CIDRs in ipBlocks -----------------------------------------------------------------

# (cidr, except) -> (cidr, except) as the API server's warnings state their meaning
ACCEPTED_BLOCKS = [
    (("010.0.0.0/8", []), ("10.0.0.0/8", [])),
    (("10.0.0.0/8", ["010.001.0.0/16"]), ("10.0.0.0/8", ["10.1.0.0/16"])),
    (("10.0.0.0/8", ["::ffff:10.1.0.0/112"]), ("10.0.0.0/8", ["10.1.0.0/16"])),
    (("::ffff:10.0.0.0/104", ["::ffff:10.1.0.0/112"]), ("10.0.0.0/8", ["10.1.0.0/16"])),
    (("10.0.0.0/8", ["::ffff:10.0.0.0/104"]), ("10.0.0.0/8", ["10.0.0.0/8"])),
    (("10.1.2.3/008", []), ("10.0.0.0/8", [])),
    (("10.0.0.0/8", ["10.1.2.3/16"]), ("10.0.0.0/8", ["10.1.0.0/16"])),
    (("0000010.0.0.0/8", []), ("10.0.0.0/8", [])),
    (("00000fd00::/8", []), ("fd00::/8", [])),
    (("::ffff:10.0.0.0/95", []), ("::fffe:0:0/95", [])),
    (("1:2::3.4.5.6/64", []), ("1:2::/64", [])),
]

REFUSED_BLOCKS = [
    ("::ffff:10.0.0.0/104", ["10.1.0.0/16"], "except[0]"),  # written length 104 >= 16
    ("::ffff:0.0.0.0/96", ["010.0.0.0/8"], "except[0]"),
    ("::/0", ["::ffff:10.1.0.0/112"], "except[0]"),
    ("10.0.0.0/8", ["fd00::/16"], "except[0]"),
    ("fe80::1%eth0/64", [], "cidr"),
    ("10.0.0.0/255.0.0.0", [], "cidr"),  # Python's ipaddress takes netmasks; Go does not
    ("10.0.0.0/0.255.255.255", [], "cidr"),
    (" 10.0.0.0/8", [], "cidr"),
    ("0x0a.0.0.0/8", [], "cidr"),
    ("10.0.0.0/\u0668", [], "cidr"),
    ("1:2:3:4:5:6:7::8/64", [], "cidr"),
    ("", [], "cidr"),
]


@pytest.mark.parametrize(("written", "meant"), ACCEPTED_BLOCKS)
def test_legacy_cidrs_mean_what_the_api_server_says(
    written: tuple[str, list[str]], meant: tuple[str, list[str]]
) -> None:
    got = parse_object(block_policy(*written), strict=True)
    assert isinstance(got, NetworkPolicy)
    want = IPBlock(net(meant[0]), tuple(net(e) for e in meant[1]))
    assert got.ingress[0].peers[0].ip_block == want


@pytest.mark.parametrize(("cidr", "excepts", "field"), REFUSED_BLOCKS)
def test_cidrs_the_api_server_refuses(cidr: str, excepts: list[str], field: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_object(block_policy(cidr, excepts))
    assert err.value.obj == "NetworkPolicy x/p"
    assert err.value.field == f"spec.ingress[0].from[0].ipBlock.{field}"


def test_leading_zeros_are_decimal_not_octal() -> None:
    assert parse_cidr("010.0.0.0/8") == (net("10.0.0.0/8"), 8)  # octal would be 8.0.0.0/8
    assert parse_ip("010.000.000.010") == ipaddress.ip_address("10.0.0.10")


def test_except_meaning_the_whole_cidr_allows_nothing_in_it() -> None:
    raw = block_policy("10.0.0.0/8", ["::ffff:10.0.0.0/104"])
    got = parse_object(raw)
    assert isinstance(got, NetworkPolicy)
    block = got.ingress[0].peers[0].ip_block
    assert block is not None and not block.contains(ipaddress.ip_address("10.1.2.3"))
    cluster = GeneratedCluster(
        [raw, _pod("db", "x", "10.244.1.10"), _pod("client", "x", "10.244.1.11")], "none"
    )
    assert not allowed(cluster, "10.244.1.11", "10.244.1.10", 80)


# ---- pod IPs and node CIDRs ---------------------------------------------------------------------


def pod_with_ips(*ips: str, pod_ip: str | None = None) -> Json:
    status: Json = {"phase": "Running", "podIPs": [{"ip": ip} for ip in ips]}
    if pod_ip is not None:
        status["podIP"] = pod_ip
    return {
        "kind": "Pod",
        "metadata": {"name": "a", "namespace": "x"},
        "spec": {"nodeName": "n1"},
        "status": status,
    }


@pytest.mark.parametrize(
    ("ips", "pod_ip", "want"),
    [
        (["010.000.000.001"], None, ["10.0.0.1"]),
        (["::ffff:10.0.0.1"], None, ["10.0.0.1"]),  # IPv4, as Go's IPFamilyOf says
        (["::ffff:10.0.0.1", "fd00::1"], None, ["10.0.0.1", "fd00::1"]),
        (["10.0.0.2", "fd00::1"], "10.0.0.1", ["10.0.0.1"]),  # podIP differs: it alone counts
    ],
)
def test_pod_ips_like_the_api_server(ips: list[str], pod_ip: str | None, want: list[str]) -> None:
    got = parse_object(pod_with_ips(*ips, pod_ip=pod_ip), strict=True)
    assert isinstance(got, Pod)
    assert list(got.ips) == [ipaddress.ip_address(a) for a in want]


@pytest.mark.parametrize(
    "ips", [["10.0.0.1", "::ffff:10.0.0.2"], ["10.0.0.1/32"], ["fe80::1%eth0"], ["10.0.0.1 "]]
)
def test_pod_ips_the_api_server_refuses(ips: list[str]) -> None:
    with pytest.raises(ParseError, match=r"^Pod x/a: status\.podIPs\[\d\]\.ip: "):
        parse_object(pod_with_ips(*ips))


def test_node_legacy_cidrs_and_unreadable_addresses() -> None:
    raw = {
        "kind": "Node",
        "metadata": {"name": "n1"},
        "spec": {"podCIDRs": ["::ffff:10.244.0.0/112", "fd00::/64"]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "not-an-ip"},
                {"type": "InternalIP", "address": "010.0.0.1"},
            ]
        },
    }
    got = parse_object(raw, strict=True)
    assert isinstance(got, Node)
    assert got.pod_cidrs == (net("10.244.0.0/16"), net("fd00::/64"))
    assert got.internal_ips == (ipaddress.ip_address("10.0.0.1"),)
    assert got.warnings == (
        "status.addresses[0].address: 'not-an-ip' is not an IP address; skipped",
    )
    assert got == Node("n1", got.internal_ips, got.pod_cidrs)  # warnings are not compared
    raw["spec"]["podCIDRs"] = ["10.244.0.0/16", "::ffff:10.245.0.0/112"]
    with pytest.raises(ParseError, match=r"spec\.podCIDRs\[1\]: second IPv4 CIDR"):
        parse_object(raw)


# ---- a bad annotation never drops a Namespace --------------------------------------------------

RED_NS = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {
        "name": "red",
        "labels": {"team": "red"},
        "annotations": {"nftpolicy.io/default-deny": "sometimes"},
    },
}


def test_bad_default_deny_annotation_is_a_warning() -> None:
    got = parse_object(RED_NS)
    assert isinstance(got, Namespace)
    assert got.labels["team"] == "red" and got.default_deny == frozenset()
    assert got.warnings == (
        "metadata.annotations[nftpolicy.io/default-deny]: unknown value 'sometimes' "
        "(want ingress, egress or all); ignored (no default deny)",
    )
    assert got == Namespace("red", got.labels)  # no recompile for a warning


def _pod(name: str, ns: str, ip: str, labels: Json | None = None, **spec: Any) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"nodeName": "n1", **spec},
        "status": {"phase": "Running", "podIPs": [{"ip": ip}]},
    }


def parsed_like_the_operator(raws: list[Json]) -> GeneratedCluster:
    """The objects the operator keeps: it drops any that fail to parse."""
    kept = []
    for raw in raws:
        try:
            parse_object(raw)
        except ParseError:
            continue
        kept.append(raw)
    return GeneratedCluster(kept, "none")


def allowed(cluster: GeneratedCluster, src: str, dst: str, port: int) -> bool:
    """The rendered rules' verdict, asserted equal to the reference evaluator's."""
    snap, rulesets, node_of_ip = build(cluster)
    packet = (ipaddress.ip_address(src), ipaddress.ip_address(dst), Protocol.TCP.number, port)
    rendered = cluster_allows(rulesets, node_of_ip, packet)  # type: ignore[arg-type]
    assert rendered == evaluate(snap, src, dst, Protocol.TCP, port).allowed
    return rendered


def test_bad_annotation_does_not_widen_a_notin_namespace_selector() -> None:
    """Were the ``red`` Namespace dropped, its pods' namespace would have no ``team`` label and
    ``team NotIn (red)`` would admit them."""
    not_red = {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["red"]}]}
    cluster = parsed_like_the_operator(
        [
            RED_NS,
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}},
            _pod("db", "x", "10.244.1.10"),
            _pod("intruder", "red", "10.244.1.11"),
            policy(ingress=[{"from": [{"namespaceSelector": not_red}]}]),
        ]
    )
    assert len(cluster.objects) == 5
    assert not allowed(cluster, "10.244.1.11", "10.244.1.10", 80)


# ---- named ports as Kubernetes resolves them ----------------------------------------------------


def test_named_ports_resolve_like_find_port() -> None:
    raw = _pod(
        "a",
        "x",
        "10.244.1.10",
        initContainers=[
            {"name": "init", "ports": [{"name": "http", "containerPort": 1}]},
            {
                "name": "sidecar",
                "restartPolicy": "Always",
                "ports": [
                    {"name": "http", "containerPort": 2},
                    {"name": "admin", "containerPort": 9000},
                ],
            },
        ],
        containers=[
            {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]},
            {"name": "proxy", "ports": [{"name": "http", "containerPort": 80}]},
            {"name": "dns", "ports": [{"name": "http", "containerPort": 53, "protocol": "UDP"}]},
        ],
    )
    got = parse_object(raw, strict=True)
    assert isinstance(got, Pod)
    assert got.named_port("http", Protocol.TCP) == 8080  # first declared, not smallest
    assert got.named_port("http", Protocol.UDP) == 53
    assert got.named_port("admin", Protocol.TCP) == 9000  # sidecar ports count
    assert got.named_ports == (
        ("http", Protocol.TCP, 8080),
        ("http", Protocol.UDP, 53),
        ("admin", Protocol.TCP, 9000),
    )
    assert 1 not in {p.port for p in got.ports}  # an ordinary init container's do not


def test_same_port_name_twice_in_one_container_is_refused() -> None:
    ports = [{"name": "http", "containerPort": 80}, {"name": "http", "containerPort": 81}]
    with pytest.raises(ParseError, match=r"spec\.containers\[0\]\.ports\[1\]\.name: duplicate"):
        parse_object(_pod("a", "x", "10.244.1.10", containers=[{"name": "c", "ports": ports}]))


def _named_port_cluster(**spec: Any) -> GeneratedCluster:
    return GeneratedCluster(
        [
            _pod("server", "x", "10.244.1.10", {"app": "server"}, **spec),
            _pod("client", "x", "10.244.1.11", {"app": "client"}),
            policy(
                podSelector={"matchLabels": {"app": "server"}},
                ingress=[{"ports": [{"port": "http"}]}],
            ),
            policy(
                "q",
                podSelector={"matchLabels": {"app": "client"}},
                egress=[{"ports": [{"port": "http"}]}],
            ),
        ],
        "none",
    )


@pytest.mark.parametrize(
    "spec",
    [
        # two containers declare "http": the first wins (ingress used to take the smallest)
        {
            "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "proxy", "ports": [{"name": "http", "containerPort": 80}]},
            ]
        },
        # an ordinary init container's "http" does not shadow the app container's
        {
            "initContainers": [{"name": "init", "ports": [{"name": "http", "containerPort": 80}]}],
            "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}],
        },
    ],
    ids=["first-container-wins", "init-container-ignored"],
)
def test_named_ports_agree_in_ingress_egress_and_semantics(spec: Json) -> None:
    cluster = _named_port_cluster(**spec)
    assert allowed(cluster, "10.244.1.11", "10.244.1.10", 8080)
    assert not allowed(cluster, "10.244.1.11", "10.244.1.10", 80)


# ---- strict (files) and lenient (API server) reading --------------------------------------------


def test_unknown_fields_refused_in_files_ignored_from_the_api_server() -> None:
    misspelt = policy(ingress=[{"form": [{"podSelector": {"matchLabels": {"a": "b"}}}]}])
    with pytest.raises(ParseError) as err:
        parse_object(misspelt, strict=True)
    assert str(err.value) == (
        "NetworkPolicy x/p: spec.ingress[0].form: unknown field (did you mean 'from'?)"
    )
    with pytest.raises(ParseError, match=r"spec\.egress\[0\]\.Ports: unknown field .*'ports'"):
        parse_object(policy(egress=[{"Ports": [{"port": 80}]}]), strict=True)
    future = _pod("a", "x", "10.244.1.10", someFutureField={"enabled": True})
    future["status"]["someFutureStatus"] = "x"
    future["metadata"]["someFutureMeta"] = 1
    assert isinstance(parse_object(future), Pod)
    with pytest.raises(ParseError, match=r"metadata\.someFutureMeta: unknown field"):
        parse_object(future, strict=True)


@pytest.mark.parametrize("strict", [True, False])
def test_types_are_checked_in_both_modes(strict: bool) -> None:
    raw = _pod("a", "x", "10.244.1.10", hostNetwork="false")
    with pytest.raises(ParseError, match=r"spec\.hostNetwork: must be a boolean, got 'false'"):
        parse_object(raw, strict=strict)
    raw = _pod("a", "x", "10.244.1.10", containers=[{"ports": [{"containerPort": 2**31}]}])
    with pytest.raises(ParseError, match=r"containerPort: must be a 32-bit integer"):
        parse_object(raw, strict=strict)


LABEL_CASES = [
    ({"app": "web\n"}, False),  # Python's $ matches before a final newline; Go's does not
    ({"app\n": "web"}, False),
    ({"app": "a" * 63}, True),
    ({"app": "a" * 64}, False),
    ({"app": ""}, True),
    ({"app": "-a"}, False),
    ({"app": "a_b.c-D"}, True),
    ({"example.com/app": "x"}, True),
    ({"/app": "x"}, False),
    ({"a/b/c": "x"}, False),
    ({"Example.com/app": "x"}, False),
    ({"a..b/app": "x"}, False),  # the old key pattern took dots anywhere in the prefix
    ({".".join(["a" * 63] * 3 + ["a" * 61]) + "/a": "x"}, True),
    ({"b" + ".".join(["a" * 63] * 3 + ["a" * 61]) + "/a": "x"}, False),
    ({"K" * 63: "x"}, True),
    ({"K" * 64: "x"}, False),
]


@pytest.mark.parametrize(("labels", "ok"), LABEL_CASES)
def test_labels_like_the_api_server(labels: Json, ok: bool) -> None:
    raw = policy()
    raw["metadata"]["labels"] = labels
    if ok:
        parse_object(raw, strict=True)
    else:
        with pytest.raises(ParseError, match=r"^NetworkPolicy x/p: metadata\.labels"):
            parse_object(raw, strict=True)


@pytest.mark.parametrize(
    ("kind", "name", "ok"),
    [
        ("Namespace", "a" * 63, True),
        ("Namespace", "a" * 64, False),
        ("Namespace", "a.b", False),
        ("NetworkPolicy", "a.b.c", True),
        ("NetworkPolicy", "a_b", False),
        ("NetworkPolicy", "UPPER", False),
        ("Pod", "a\ud800", False),
    ],
)
def test_names_are_dns_1123(kind: str, name: str, ok: bool) -> None:
    raw: Json = {"kind": kind, "metadata": {"name": name}}
    if kind == "NetworkPolicy":
        raw = policy()
        raw["metadata"]["name"] = name
    if ok:
        parse_object(raw, strict=True)
    else:
        with pytest.raises(ParseError, match=r"metadata\.name: "):
            parse_object(raw)


@pytest.mark.parametrize("name", ["a--b", "http\n", "8080", "a" * 16, "-a", "HTTP"])
def test_port_names_like_the_api_server(name: str) -> None:
    with pytest.raises(ParseError, match="invalid port name"):
        parse_object(policy(ingress=[{"ports": [{"port": name}]}]))


# ---- documents kubectl could not send ------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda r: r["metadata"].update(name="a\ud800"), "metadata.name", "lone surrogate"),
        (lambda r: r.update(kind=["NetworkPolicy"]), "kind", "unsupported kind a list"),
        (lambda r: r.update(kind={"a": 1}), "kind", "unsupported kind an object"),
        (lambda r: r["spec"].update(x=nested(MAX_DEPTH + 5)), "spec.x", "nested more than"),
        (lambda r: r["spec"].update(x=10**5000), "spec.x", "a 16610-bit integer is out of range"),
        (lambda r: r["spec"].update(x=float("nan")), "spec.x", "nan is not a JSON number"),
        (lambda r: r["spec"].update(x=b"bytes"), "spec.x", "has no JSON form"),
        (lambda r: r["spec"].update({1: "x"}), "spec", "field name 1 is not a string"),
        (
            lambda r: r["spec"].update(ingress=[{"ports": [{"port": 10**30}]}]),
            "spec.ingress[0].ports[0].port",
            "out of range",
        ),
    ],
)
def test_documents_kubectl_could_not_send(change: Any, field: str, message: str) -> None:
    raw = policy()
    change(raw)
    with pytest.raises(ParseError) as err:
        parse_object(raw, strict=True)
    assert err.value.field.startswith(field) and message in err.value.message, str(err.value)
    assert "\n" not in str(err.value)


def test_alias_bomb_stops_at_the_size_limit() -> None:
    layer: Any = ["x" * 100] * 100
    for _ in range(4):  # 10^10 strings once expanded; shared references in memory
        layer = [layer] * 100
    raw = policy()
    raw["spec"]["x"] = layer
    with pytest.raises(ParseError, match="larger than 3 MiB as JSON"):
        parse_object(raw, strict=True)


def test_lenient_reading_survives_hostile_values_too() -> None:
    raw = policy()
    raw["metadata"]["name"] = "a\ud800"
    raw["spec"]["ingress"] = [{"ports": [{"port": 10**5000}]}]
    raw["spec"]["deep"] = nested(10_000)
    with pytest.raises(ParseError) as err:
        parse_object(raw)
    assert err.value.field == "metadata.name"
    raw["metadata"]["name"] = "p"
    with pytest.raises(ParseError, match=r"port: must be an integer or a string, got a 16610-bit"):
        parse_object(raw)
