"""Default deny's DNS allowance, with real packets: the cluster's DNS pods on their DNS port,
UDP and TCP, and nothing else on port 53 (issue 9, "narrow holes")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.model import Direction, parse_object
from controller.model.config import DefaultDeny
from controller.model.dns import parse_dns_service
from controller.resources import ADDRESS_GROUPS, GROUP, VERSION
from controller.testing.apiserver import TestControlPlane
from controller.testing.netns import NetnsCluster, Probe
from tests.integration.enforcer import Enforcer
from tests.integration.live import Live, eventually, install_crds, start_operator_with

pytestmark = pytest.mark.integration

CLIENT, DNS, OTHER = "10.244.1.10", "10.244.2.53", "10.244.2.11"
SERVED = (53, 80, 5353)


def pod(namespace: str, name: str, node: str, ip: str, **labels: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
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
        "status": {"phase": "Running", "podIP": ip},
    }


def build(cluster: NetnsCluster) -> Enforcer:
    """A client isolated for egress by the cluster-wide default deny, a kube-dns pod and
    another pod serving port 53 too; the client's node enforces."""
    cluster.add_node("n1", "10.244.1.0/24")
    cluster.add_node("n2", "10.244.2.0/24")
    pods = [
        pod("x", "client", "n1", CLIENT, app="client"),
        pod("kube-system", "coredns", "n2", DNS, **{"k8s-app": "kube-dns"}),
        pod("x", "other", "n2", OTHER, app="other"),
    ]
    for p in pods:
        meta = p["metadata"]
        cluster.add_pod(
            meta["namespace"],
            meta["name"],
            p["spec"]["nodeName"],
            p["status"]["podIP"],
            tcp_ports=SERVED,
            udp_ports=SERVED,
        )
    cluster.wait_ready()
    enforcer = Enforcer(cluster, ["n1", "n2"], DefaultDeny(frozenset({Direction.EGRESS})))
    for p in pods:
        enforcer.feed(parse_object(p))
    enforcer.sync()
    return enforcer


def probes(port: int) -> list[Probe]:
    return [
        Probe("x/client", DNS, port, "udp"),
        Probe("x/client", DNS, port, "tcp"),
        Probe("x/client", OTHER, 53, "udp"),
        Probe("x/client", OTHER, 53, "tcp"),
        Probe("x/client", DNS, 80, "tcp"),
        Probe("x/client", OTHER, 80, "tcp"),
    ]


def test_default_deny_reaches_the_dns_pods_on_53_and_nothing_else(
    netns_cluster: NetnsCluster,
) -> None:
    build(netns_cluster)
    # The DNS pod on 53 (UDP and TCP); port 53 of another pod, and the DNS pod on another
    # port, are as closed as everything else a default-deny pod did not ask for.
    assert netns_cluster.probe_many(probes(53), 0.5) == [True, True, False, False, False, False]


def test_the_dns_service_decides_the_pods_port_and_dns_pods_are_followed(
    netns_cluster: NetnsCluster,
) -> None:
    enforcer = build(netns_cluster)
    # The Service targets the pods' named port "dns"/"dns-tcp" (5353): kube-proxy DNATs
    # 10.96.0.10:53 to the pod on 5353 before the forward hook, so 5353 is what must be open.
    service = {
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "spec": {
            "clusterIP": "10.96.0.10",
            "ports": [
                {"port": 53, "protocol": "UDP", "targetPort": "dns"},
                {"port": 53, "protocol": "TCP", "targetPort": "dns-tcp"},
            ],
        },
    }
    enforcer.compiler.set_dns_service("kube-system/kube-dns", parse_dns_service(service))
    enforcer.sync()
    assert netns_cluster.probe_many(probes(5353), 0.5) == [True, True, False, False, False, False]
    assert netns_cluster.probe_many(probes(53)[:2], 0.5) == [False, False]
    # The DNS pod goes away: nothing is allowed (fail closed), until it is back.
    enforcer.compiler.delete_pod("kube-system/coredns")
    enforcer.sync()
    assert netns_cluster.probe_many(probes(5353)[:2], 0.5) == [False, False]
    enforcer.feed(parse_object(pod("kube-system", "coredns", "n2", DNS, **{"k8s-app": "kube-dns"})))
    enforcer.sync()
    assert netns_cluster.probe_many(probes(5353)[:2], 0.5) == [True, True]


# ---- through the real API server, operator and agents ----------------------------------------


def test_operator_finds_dns_by_label_warns_when_absent_and_follows_it(
    control_plane: TestControlPlane, netns_cluster: NetnsCluster, tmp_path: Path
) -> None:
    install_crds(control_plane)
    live = Live(control_plane, netns_cluster, tmp_path)
    ns, label = live.ns, f"dns-{live.ns}"
    n1, n2 = f"{ns}-n1", f"{ns}-n2"
    client_ip, dns_ip, other_ip = "10.101.0.10", "10.102.0.53", "10.102.0.11"
    try:
        for i, node in enumerate(("n1", "n2")):
            live.add_node(f"{ns}-{node}", i + 1)
        live.add_namespace(ns)
        live.add_pod(ns, "client", n1, client_ip, {"app": "client"})
        live.add_pod(ns, "other", n2, other_ip, {"app": "other"}, ports=(53, 80))
        netns_cluster.wait_ready()
        selector = f"app={label}"
        start_operator_with(
            live,
            "operator",
            "--default-deny=egress",
            f"--dns-namespace={ns}",
            f"--dns-pod-selector={selector}",
            f"--dns-service-selector={selector}",
        )
        live.start_agent(n1)
        live.start_agent(n2)
        dns_probes = [
            Probe(f"{ns}/client", dns_ip, 53, "udp"),
            Probe(f"{ns}/client", dns_ip, 53, "tcp"),
            Probe(f"{ns}/client", other_ip, 53, "udp"),
            Probe(f"{ns}/client", other_ip, 53, "tcp"),
            Probe(f"{ns}/client", dns_ip, 80, "tcp"),
        ]
        # No DNS pod matches: default deny blocks DNS, and says so on the DNS namespace.
        eventually(
            lambda: any("DNSNotFound" in e for e in live.events("default", ns)),
            timeout=30,
            what="a DNSNotFound Event",
        )
        live.wait_for(dns_probes[2:4], [False, False], timeout=30)
        # A DNS pod appears: reachable on 53 (UDP and TCP), and port 53 elsewhere stays closed.
        live.add_pod(ns, "coredns", n2, dns_ip, {"app": label}, ports=(53, 80))
        netns_cluster.wait_ready()
        live.wait_for(dns_probes, [True, True, False, False, False], timeout=15)
        # A DNS Service, seen through the narrow watch: its ClusterIP joins the groups.
        created = live.core.create_namespaced_service(
            ns,
            {
                "metadata": {"name": "kube-dns", "labels": {"app": label}},
                "spec": {
                    "selector": {"app": label},
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP"},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                    ],
                },
            },
        )
        cluster_ip = created.spec.cluster_ip

        def udp_members() -> list[list[Any]]:
            group = live.custom.get_cluster_custom_object(GROUP, VERSION, ADDRESS_GROUPS, "dns-udp")
            return list(group["spec"].get("members", []))

        eventually(
            lambda: [cluster_ip, 53] in udp_members() and [dns_ip, 53] in udp_members(),
            timeout=15,
            what="the Service's ClusterIP in the dns-udp group",
        )
    finally:
        live.close()
