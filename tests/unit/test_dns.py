"""Default deny's DNS allowance (issue 9, "narrow holes"): the cluster's DNS found by label,
its endpoints, the two shared DNS groups, what the agent renders, and the operator's warning
when nothing is found."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from controller.agent.nft_text import to_text
from controller.agent.render import render
from controller.compiler import Compiler, groups_for
from controller.compiler.compiler import DNS_GROUPS
from controller.compiler.ir import NodeRules, PortGroup
from controller.model import Direction, ParseError, Pod, Protocol, parse_object
from controller.model.config import ClusterDNS, DefaultDeny
from controller.model.dns import (
    DnsService,
    cluster_dns,
    dns_endpoints,
    parse_dns_service,
    parse_equality_selector,
)
from controller.operator.engine import Engine, Notice, OperatorConfig
from controller.publish.plan import Write
from controller.resources import ADDRESS_GROUPS
from controller.semantics import Snapshot, evaluate
from tests.unit.test_engine import Server, synced

UDP, TCP = Protocol.UDP, Protocol.TCP
EGRESS_DENY = DefaultDeny(frozenset({Direction.EGRESS}))
ip = ipaddress.ip_address


def pod(ns: str, name: str, address: str, node: str = "n1", **labels: str) -> Pod:
    obj = parse_object(
        {
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [
                    {
                        "ports": [
                            {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": 5353, "protocol": "TCP"},
                        ]
                    }
                ],
            },
            "status": {"phase": "Running", "podIP": address},
        }
    )
    assert isinstance(obj, Pod)
    return obj


def coredns(address: str = "10.0.2.53", node: str = "n2", name: str = "coredns-1") -> Pod:
    return pod("kube-system", name, address, node, **{"k8s-app": "kube-dns"})


def service(targets: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "spec": {"clusterIP": "10.96.0.10", "ports": targets, **spec},
    }


# ---- model -------------------------------------------------------------------------------------


def test_service_keeps_its_cluster_ips_and_port_53_targets_only() -> None:
    got = parse_dns_service(
        service(
            [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},  # target defaults to 53
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
            ],
            clusterIPs=["10.96.0.10", "fd00:96::a"],
        )
    )
    assert got == DnsService(
        "kube-system/kube-dns", (ip("10.96.0.10"), ip("fd00:96::a")), ((UDP, "dns"), (TCP, 53))
    )
    headless = parse_dns_service(service([{"port": 53, "protocol": "UDP"}], clusterIP="None"))
    assert headless.cluster_ips == ()
    with pytest.raises(ParseError, match="targetPort"):
        parse_dns_service(service([{"port": 53, "protocol": "UDP", "targetPort": 70000}]))


def test_endpoints_are_pods_on_their_target_port_services_and_addresses() -> None:
    dns = ClusterDNS(addresses=frozenset({ip("169.254.20.10")}))
    svc = parse_dns_service(
        service(
            [
                {"port": 53, "protocol": "UDP", "targetPort": "dns"},
                {"port": 53, "protocol": "TCP", "targetPort": 53},
            ]
        )
    )
    got = dns_endpoints(dns, [coredns()], [svc])
    assert got == {
        (UDP, ip("10.0.2.53"), 5353),  # the named port, resolved on the pod
        (TCP, ip("10.0.2.53"), 53),
        (UDP, ip("10.96.0.10"), 53),
        (TCP, ip("10.96.0.10"), 53),
        (UDP, ip("169.254.20.10"), 53),
        (TCP, ip("169.254.20.10"), 53),
    }
    # No Service (yet): the pods on 53. A target name the pod lacks: that pod not at all.
    assert dns_endpoints(ClusterDNS(), [coredns()], []) == {
        (UDP, ip("10.0.2.53"), 53),
        (TCP, ip("10.0.2.53"), 53),
    }
    missing = parse_dns_service(service([{"port": 53, "protocol": "UDP", "targetPort": "nope"}]))
    assert dns_endpoints(ClusterDNS(), [coredns()], [missing]) == {(UDP, ip("10.96.0.10"), 53)}
    assert dns_endpoints(ClusterDNS(), [], []) == frozenset()


def test_command_line_settings_are_checked() -> None:
    got = cluster_dns("dns", "app=coredns,tier=dns", "app=coredns", ["169.254.20.10"])
    assert got.namespace == "dns" and str(got.pod_selector) == "app=coredns,tier=dns"
    assert got.addresses == {ip("169.254.20.10")}
    for bad in ("", "app", "app!=x", "app in (a,b)"):
        with pytest.raises(ParseError, match="--dns-pod-selector"):
            parse_equality_selector(bad, "--dns-pod-selector")
    with pytest.raises(ParseError, match="--dns-address"):
        cluster_dns("kube-system", "a=b", "a=b", ["dns.example"])


# ---- compiler ----------------------------------------------------------------------------------


def loaded(*extra: Pod, config: DefaultDeny = EGRESS_DENY) -> Compiler:
    compiler = Compiler(config)
    compiler.upsert(pod("x", "client", "10.0.1.10", "n1", app="client"))
    compiler.upsert(pod("x", "other", "10.0.2.11", "n2", app="other"))
    for p in extra:
        compiler.upsert(p)
    return compiler


def members(compiler: Compiler, protocol: Protocol) -> set[tuple[str, int]]:
    group = compiler.group(DNS_GROUPS[protocol])
    assert isinstance(group, PortGroup) and group.protocol is protocol
    return {(str(a), port) for a, port in group.members}


def test_nodes_refer_to_the_two_dns_groups_only_where_default_deny_isolates_egress() -> None:
    compiler = loaded(coredns())
    assert compiler.node_rules("n1").dns == ("dns-tcp", "dns-udp")
    assert {"dns-tcp", "dns-udp"} <= compiler.node_rules("n1").groups()
    assert members(compiler, UDP) == {("10.0.2.53", 53)}
    assert members(compiler, TCP) == {("10.0.2.53", 53)}
    # kube-system is exempt: n2 has the DNS pod but no pod isolated for egress... except x/other
    assert compiler.node_rules("n2").dns == ("dns-tcp", "dns-udp")
    off = loaded(coredns(), config=DefaultDeny())
    assert off.node_rules("n1").dns == () and off.node_rules("n2").dns == ()
    no_allowance = loaded(coredns(), config=DefaultDeny(EGRESS_DENY.directions, allow_dns=False))
    assert no_allowance.node_rules("n1").dns == ()
    assert no_allowance.group("dns-udp") is None


def test_dns_pods_coming_and_going_rewrite_the_two_groups_and_no_node() -> None:
    compiler = loaded()
    compiler.take_changes()
    assert members(compiler, UDP) == set()  # nothing found: nothing allowed
    compiler.upsert(coredns("10.0.3.53", node="n3"))
    changes = compiler.take_changes()
    # bounded: the DNS groups and the DNS pod's own node (it lists its pods), not n1 or n2
    assert changes.groups == {"dns-udp", "dns-tcp"} and changes.nodes == {"n3"}
    assert members(compiler, UDP) == {("10.0.3.53", 53)}
    compiler.upsert(pod("kube-system", "not-dns", "10.0.3.54", "n3", app="x"))
    assert compiler.take_changes().groups == frozenset()
    compiler.delete_pod("kube-system/coredns-1")
    assert compiler.take_changes().groups == {"dns-udp", "dns-tcp"}
    assert members(compiler, TCP) == set()


def test_services_and_settings_change_the_groups() -> None:
    compiler = loaded(coredns())
    compiler.take_changes()
    svc = parse_dns_service(service([{"port": 53, "protocol": "UDP", "targetPort": "dns"}]))
    compiler.set_dns_service(svc.key, svc)
    assert compiler.take_changes().groups == {"dns-udp", "dns-tcp"}
    assert members(compiler, UDP) == {("10.0.2.53", 5353), ("10.96.0.10", 53)}
    assert members(compiler, TCP) == set()  # the Service has no TCP entry
    compiler.set_dns_service(svc.key, svc)
    assert not compiler.take_changes()
    compiler.set_dns_service(svc.key, None)
    assert members(compiler, UDP) == {("10.0.2.53", 53)}
    moved = ClusterDNS("dns", parse_equality_selector("app=dns", "x"))
    compiler.upsert(pod("dns", "unbound", "10.0.1.53", "n1", app="dns"))
    compiler.set_default_deny(DefaultDeny(EGRESS_DENY.directions, dns=moved))
    assert members(compiler, UDP) == {("10.0.1.53", 53)}


# ---- agent -------------------------------------------------------------------------------------


def ruleset(compiler: Compiler, node: str = "n1") -> str:
    rules = compiler.node_rules(node)
    return to_text(render(rules, groups_for(compiler, rules)))


def test_agent_allows_the_dns_endpoints_and_not_port_53_of_any_address() -> None:
    text = ruleset(loaded(coredns()))
    assert "10.0.2.53 . udp . 53" in text and "10.0.2.53 . tcp . 53" in text
    assert "0.0.0.0-255.255.255.255 . udp . 53" not in text
    assert "::-ffff:" not in text  # no IPv6 DNS endpoint, so no IPv6 range either
    assert "default-deny DNS" in text
    # Nothing found: no DNS element at all (fail closed), and the chain says so.
    empty = ruleset(loaded())
    assert ". 53" not in empty and "default-deny DNS" not in empty


def test_agent_without_the_dns_groups_yet_allows_no_dns() -> None:
    """Rules from an older operator carry no DNS groups: no allowance, never 'port 53 open'."""
    compiler = loaded(coredns())
    rules = compiler.node_rules("n1")
    old = NodeRules.from_json({**rules.to_json(), "dnsGroups": [], "allowDNS": True})
    text = to_text(render(old, groups_for(compiler, old)))
    assert ". 53" not in text


# ---- the oracle agrees -------------------------------------------------------------------------


def test_semantics_allow_dns_to_the_dns_pods_only() -> None:
    objects = [
        pod("x", "client", "10.0.1.10", app="client"),
        pod("x", "other", "10.0.2.11", app="other"),
        coredns(),
    ]
    svc = parse_dns_service(service([{"port": 53, "protocol": "UDP", "targetPort": "dns"}]))
    snap = Snapshot.of(objects, EGRESS_DENY)
    assert evaluate(snap, "10.0.1.10", "10.0.2.53", UDP, 53).allowed
    assert not evaluate(snap, "10.0.1.10", "10.0.2.11", UDP, 53).allowed
    assert not evaluate(snap, "10.0.1.10", "10.0.2.53", TCP, 80).allowed
    with_service = Snapshot(
        snap.namespaces, snap.pods, default_deny=EGRESS_DENY, dns_services=(svc,)
    )
    assert evaluate(with_service, "10.0.1.10", "10.0.2.53", UDP, 5353).allowed
    assert not evaluate(with_service, "10.0.1.10", "10.0.2.53", UDP, 53).allowed
    assert evaluate(with_service, "10.0.1.10", "10.96.0.10", UDP, 53).allowed


# ---- operator warning --------------------------------------------------------------------------


def body(p: Pod, version: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "labels": dict(p.labels),
            "resourceVersion": str(version),
        },
        "spec": {"nodeName": p.node, "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": str(p.ips[0])},
    }


def test_operator_warns_once_when_default_deny_blocks_dns_and_clears_when_found() -> None:
    engine = Engine(OperatorConfig(default_deny=EGRESS_DENY))
    notices: list[Notice] = []
    cycle = engine.cycle

    def recording(now: float) -> tuple[list[Write], list[Notice]]:
        writes, posted = cycle(now)
        notices.extend(posted)
        return writes, posted

    engine.cycle = recording  # type: ignore[method-assign]
    synced(engine)
    engine.event("Node", None, {"metadata": {"name": "n1", "resourceVersion": "1"}})
    engine.event("Pod", None, body(pod("x", "client", "10.0.1.10", app="c"), 2))
    server = Server(engine)
    engine.start_leading({})
    server.converge()
    assert server.objects[(ADDRESS_GROUPS, "dns-udp")]["spec"]["members"] == []
    (warning,) = [n for n in notices if n.reason == "DNSNotFound"]
    assert warning.type == "Warning" and warning.ref["metadata"]["name"] == "kube-system"
    assert "no pod in namespace kube-system matches k8s-app=kube-dns" in warning.message
    assert "nftpolicy_operator_dns_blocked 1" in engine.metrics.render()
    engine.event("Pod", "ADDED", body(pod("x", "client2", "10.0.1.11", app="c"), 3))
    server.converge()
    assert len([n for n in notices if n.reason == "DNSNotFound"]) == 1  # once per change
    engine.event("Pod", "ADDED", body(coredns(node="n1"), 4))
    server.converge()
    assert "nftpolicy_operator_dns_blocked 0" in engine.metrics.render()
    udp = server.objects[(ADDRESS_GROUPS, "dns-udp")]["spec"]["members"]
    assert udp == [["10.0.2.53", 53]]
