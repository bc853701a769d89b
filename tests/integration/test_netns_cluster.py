"""Self-tests of the network-namespace cluster harness."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from controller.testing.netns import (
    NetnsCluster,
    PodHandle,
    Probe,
    ProbeResult,
    cleanup_stale,
    list_netns,
)

pytestmark = pytest.mark.integration

PORTS = (80, 81)
PROTOS = ("tcp", "udp")
CLOSED_PORT = 9


def _two_nodes(cluster: NetnsCluster) -> None:
    cluster.add_node("node1", "10.244.1.0/24", "fd00:244:1::/64")
    cluster.add_node("node2", "10.244.2.0/24", "fd00:244:2::/64")


def _three_pods(cluster: NetnsCluster) -> tuple[PodHandle, PodHandle, PodHandle]:
    """Two pods on node1, one on node2, all dual-stack."""
    _two_nodes(cluster)
    return (
        cluster.add_pod("default", "a", "node1", "10.244.1.2", "fd00:244:1::2"),
        cluster.add_pod("default", "b", "node1", "10.244.1.3", "fd00:244:1::3"),
        cluster.add_pod("other", "c", "node2", "10.244.2.2", "fd00:244:2::2"),
    )


def _probes_to(sources: list[str], pods: list[PodHandle], ports: tuple[int, ...]) -> list[Probe]:
    return [
        Probe(src, ip, port, proto)
        for src in sources
        for pod in pods
        for ip in pod.ips
        for port in ports
        for proto in PROTOS
    ]


def _describe(results: list[ProbeResult]) -> str:
    return "\n".join(
        f"{r.probe.src} -> {r.probe.dst_ip}:{r.probe.port}/{r.probe.proto}: "
        f"ok={r.ok} reply={r.reply} error={r.error}"
        for r in results
    )


def _nft(cluster: NetnsCluster, node: str, ruleset: str) -> None:
    cluster.run_in(cluster.node_netns(node), ["nft", "-f", "-"], input=ruleset)


def test_full_connectivity_dual_stack(netns_cluster: NetnsCluster) -> None:
    pods = list(_three_pods(netns_cluster))
    by_ip = {ip: pod.key for pod in pods for ip in pod.ips}

    probes = _probes_to([pod.key for pod in pods], pods, PORTS)
    probes += _probes_to(["node:node1"], pods[:2], PORTS)
    probes += _probes_to(["node:node2"], pods[2:], PORTS)
    results = netns_cluster.probe_results(probes)
    wrong = [r for r in results if not r.ok or r.reply != by_ip[r.probe.dst_ip]]
    assert not wrong, _describe(wrong)

    closed = _probes_to([pod.key for pod in pods] + ["node:node1"], pods, (CLOSED_PORT,))
    results = netns_cluster.probe_results(closed, timeout=0.5)
    assert not any(r.ok for r in results), _describe([r for r in results if r.ok])


def test_nft_drop_on_node_is_seen_by_probes(netns_cluster: NetnsCluster) -> None:
    a, b, c = _three_pods(netns_cluster)
    sources = [a.key, b.key, c.key, "node:node1", "node:node2"]
    probes = _probes_to(sources, [a, b, c], PORTS)
    assert all(netns_cluster.probe_many(probes, timeout=0.5))

    _nft(
        netns_cluster,
        "node1",
        f"""
        table inet deny_b {{
            chain forward {{
                type filter hook forward priority 0; policy accept;
                ct state established,related accept
                ip daddr {b.ipv4} drop
                ip6 daddr {b.ipv6} drop
            }}
        }}
    """,
    )
    results = netns_cluster.probe_results(probes, timeout=0.5)
    # Only new connections routed *through* node1 towards b are dropped: b's own
    # connections (replies are established) and node1's locally generated ones pass.
    expected = [
        r.probe.dst_ip in b.ips and r.probe.src not in (b.key, "node:node1") for r in results
    ]
    wrong = [r for r, denied in zip(results, expected, strict=True) if r.ok == denied]
    assert not wrong, _describe(wrong)
    assert sum(expected) == 3 * 2 * 2 * 2  # a, c, node2 x 2 IPs x 2 ports x 2 protos

    _nft(netns_cluster, "node1", "delete table inet deny_b")
    assert all(netns_cluster.probe_many(probes, timeout=0.5))


def test_ip_reuse_on_other_node_and_clean_close(netns_cluster: NetnsCluster) -> None:
    a, _b, c = _three_pods(netns_cluster)
    ipv4, ipv6 = "10.244.1.50", "fd00:244:1::50"
    old = netns_cluster.add_pod("default", "old", "node1", ipv4, ipv6)
    reuse_probes = _probes_to([a.key, c.key, "node:node1", "node:node2"], [old], PORTS)
    results = netns_cluster.probe_results(reuse_probes)
    assert all(r.ok and r.reply == old.key for r in results), _describe(results)

    netns_cluster.delete_pod("default", "old")
    assert old.netns not in list_netns()
    assert not any(netns_cluster.probe_many(reuse_probes, timeout=0.5))

    # The same IPs, now outside the new node's pod CIDR (like a borrowed Calico address).
    new = netns_cluster.add_pod("default", "new", "node2", ipv4, ipv6)
    results = netns_cluster.probe_results(reuse_probes)
    assert all(r.ok and r.reply == new.key for r in results), _describe(results)

    pids = netns_cluster.agent_pids()
    assert len(pids) == 2 + 4  # node agents + a, b, c, new
    netns_cluster.close()
    netns_cluster.close()  # idempotent
    assert not [name for name in list_netns() if name.startswith(netns_cluster.prefix)]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_host_network_pod(netns_cluster: NetnsCluster) -> None:
    a, _b, c = _three_pods(netns_cluster)
    node2 = netns_cluster.nodes[1]
    host = netns_cluster.add_pod(
        "kube-system",
        "hostnet",
        "node2",
        None,
        tcp_ports=(8080,),
        udp_ports=(8080,),
        host_network=True,
    )
    assert (host.netns, host.ipv4, host.ipv6) == (node2.netns, node2.ipv4, node2.ipv6)

    probes = _probes_to([a.key, c.key, "node:node1"], [host], (8080,))
    results = netns_cluster.probe_results(probes)
    assert all(r.ok and r.reply == host.key for r in results), _describe(results)
    # A host-network pod probes from the node's namespace.
    assert netns_cluster.probe(host.key, a.ipv4 or "", 80)

    netns_cluster.delete_pod("kube-system", "hostnet")
    assert not any(netns_cluster.probe_many(probes, timeout=0.5))


def test_cleanup_stale_removes_leftovers(netns_cluster: NetnsCluster) -> None:
    netns_cluster.add_node("node1", "10.244.1.0/24")
    netns_cluster.add_pod("default", "a", "node1", "10.244.1.2")
    netns_cluster.wait_ready()
    # A stray process inside a namespace, as a crashed run could leave behind. It says when it
    # is in there: on a busy machine `ip netns exec` may not have entered the namespace yet
    # when the clean-up looks for processes, and then it would not be found.
    sleeper = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns_cluster.node_netns("node1"),
            "sh",
            "-c",
            "echo inside; exec sleep 3600",
        ],
        stdout=subprocess.PIPE,
    )
    assert sleeper.stdout is not None and sleeper.stdout.readline() == b"inside\n"
    removed = cleanup_stale(netns_cluster.prefix + "-")
    assert len(removed) == 3  # fabric, node, pod
    assert sleeper.wait(60) != 0  # killed (it would sleep for an hour)
    assert not [name for name in list_netns() if name.startswith(netns_cluster.prefix)]
    netns_cluster.close()  # tolerates namespaces that are already gone


def test_probe_many_is_parallel(netns_cluster: NetnsCluster) -> None:
    start = time.monotonic()
    pods: list[PodHandle] = []
    for n in range(1, 4):
        netns_cluster.add_node(f"node{n}", f"10.244.{n}.0/24", f"fd00:244:{n}::/64")
        for p in range(2, 5):
            pods.append(
                netns_cluster.add_pod(
                    "default", f"p{n}-{p}", f"node{n}", f"10.244.{n}.{p}", f"fd00:244:{n}::{p}"
                )
            )
    netns_cluster.wait_ready()
    setup = time.monotonic() - start
    # Make every probe towards one pod hit the full timeout.
    _nft(
        netns_cluster,
        "node1",
        f"""
        table ip deny {{
            chain forward {{
                type filter hook forward priority 0; policy accept;
                ct state established,related accept
                ip daddr {pods[0].ipv4} drop
            }}
        }}
    """,
    )
    probes = [
        Probe(src.key, dst.ipv4 or "", port, proto)
        for src in pods
        for dst in pods
        for port in PORTS
        for proto in PROTOS
    ]
    assert len(probes) == 9 * 9 * 2 * 2

    start = time.monotonic()
    results = netns_cluster.probe_many(probes, timeout=1.0)
    elapsed = time.monotonic() - start
    print(f"setup of 3 nodes + 9 pods: {setup:.2f}s; {len(probes)} probes: {elapsed:.2f}s")
    expected = [p.dst_ip != pods[0].ipv4 or p.src == pods[0].key for p in probes]
    assert results == expected
    assert elapsed < 5.0


def test_a_late_reply_still_counts_as_passed_but_a_drop_does_not(
    netns_cluster: NetnsCluster,
) -> None:
    """Catches: a busy machine read as a policy drop. A TCP probe whose handshake completed
    passed the firewall even when the (stopped) server's reply comes too late; a dropped SYN
    did not; UDP has no handshake, so only an answer counts."""
    a, b, _c = _three_pods(netns_cluster)
    tcp, udp = Probe(a.key, b.ipv4, 80, "tcp"), Probe(a.key, b.ipv4, 80, "udp")
    netns_cluster.wait_ready()
    pid = netns_cluster.agent_pid(b.key)
    os.kill(pid, signal.SIGSTOP)  # the kernel still completes handshakes (listen backlog)
    try:
        late_tcp, late_udp = netns_cluster.probe_results([tcp, udp], timeout=0.5)
        _nft(
            netns_cluster,
            "node1",
            f"""
            table inet deny_b {{
                chain forward {{
                    type filter hook forward priority 0; policy accept;
                    ip daddr {b.ipv4} drop
                }}
            }}""",
        )
        dropped_tcp, _ = netns_cluster.probe_results([tcp, udp], timeout=0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (late_tcp.ok, late_tcp.connected, late_tcp.passed) == (False, True, True), late_tcp
    assert not late_udp.passed, late_udp
    assert (dropped_tcp.connected, dropped_tcp.passed) == (False, False), dropped_tcp
