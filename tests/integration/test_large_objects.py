"""Large policies on real nftables: a rule whose peers x ports are rendered as a separate
lookup pair, and a policy over a limit enforced fail-closed, both checked with real packets
against ``semantics.py`` (issue 7, items 5 and "bounded cost per object").

The rulesets are loaded with ``nft -j -f`` into the node namespaces of a throwaway cluster.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import pytest

from controller.agent.nft_text import to_text
from controller.agent.render import RenderOptions, render
from controller.compiler import compile_objects, groups_for
from controller.model import ApiObject, Protocol, limits, parse_object
from controller.semantics import Snapshot, evaluate
from controller.testing.netns import NetnsCluster, Probe, cleanup_dead_runs, unavailable_reason

pytestmark = pytest.mark.integration

NODES = {"n1": ("10.244.1.0/24", "fd00:244:1::/64"), "n2": ("10.244.2.0/24", "fd00:244:2::/64")}
SERVER = ("n1", "10.244.1.10", "fd00:244:1::a")
CLIENTS = {
    "ok": ("n2", "10.244.2.10", "fd00:244:2::a"),
    "excepted": ("n2", "10.244.2.11", "fd00:244:2::b"),
}
SERVED = (80, 1000, 1001, 1998)
TIMEOUT = 1.0
RETRY_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[NetnsCluster]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"netns cluster unavailable: {reason}")
    cleanup_dead_runs()
    with NetnsCluster() as c:
        for node, (v4, v6) in NODES.items():
            c.add_node(node, v4, v6)
        node, v4, v6 = SERVER
        c.add_pod("x", "server", node, v4, v6, tcp_ports=SERVED, udp_ports=())
        for name, (node, v4, v6) in CLIENTS.items():
            c.add_pod("x", name, node, v4, v6, tcp_ports=(), udp_ports=())
        c.wait_ready()
        yield c


def pods() -> list[ApiObject]:
    out = []
    for name, (node, v4, v6) in {"server": SERVER, **CLIENTS}.items():
        out.append(
            parse_object(
                {
                    "kind": "Pod",
                    "metadata": {"name": name, "namespace": "x", "labels": {"app": name}},
                    "spec": {"nodeName": node, "containers": [{"name": "c"}]},
                    "status": {"phase": "Running", "podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}]},
                }
            )
        )
    return out


def policy(ingress: list[dict[str, Any]]) -> ApiObject:
    return parse_object(
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": "large", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "ingress": ingress},
        }
    )


def apply_and_probe(
    cluster: NetnsCluster, objects: list[ApiObject]
) -> tuple[dict[str, Any], list[bool]]:
    """Load every node's ruleset with nft, probe each client x server address x served port,
    and check that the kernel's verdicts equal the semantics. Returns n1's ruleset and the
    verdicts."""
    compiler = compile_objects(objects)
    rulesets = {}
    for node in NODES:
        rules = compiler.node_rules(node)
        rulesets[node] = render(rules, groups_for(compiler, rules), RenderOptions(log_group=None))
        cluster.run_in(
            cluster.node_netns(node), ["nft", "-j", "-f", "-"], json.dumps(rulesets[node])
        )
    try:
        snap = Snapshot.of(objects)
        cases = [
            (name, src, dst, port)
            for name, (_, *sources) in CLIENTS.items()
            for src, dst in zip(sources, SERVER[1:], strict=True)
            for port in SERVED
        ]
        probes = [Probe(f"x/{name}", dst, port, "tcp") for name, _, dst, port in cases]
        want = [evaluate(snap, src, dst, Protocol.TCP, port).allowed for _, src, dst, port in cases]
        got = cluster.probe_many(probes, TIMEOUT)
        retry = [i for i, (w, g) in enumerate(zip(want, got, strict=True)) if w and not g]
        for i, ok in zip(
            retry, cluster.probe_many([probes[i] for i in retry], RETRY_TIMEOUT), strict=True
        ):
            got[i] = ok
        wrong = [
            f"{p.src} -> {p.dst_ip}:{p.port}: kernel {g}, semantics {w}"
            for p, w, g in zip(probes, want, got, strict=True)
            if w != g
        ]
        assert not wrong, "\n".join(wrong)
    finally:
        for node in NODES:
            cluster.run_in(
                cluster.node_netns(node), ["nft", "delete", "table", "inet", "nftpolicy"]
            )
    return rulesets["n1"], want


def hosts(network: str, count: int, *extra: str) -> list[str]:
    net = ipaddress.ip_network(network)
    bits = net.max_prefixlen
    start = int(net.network_address) + (1 << (bits - net.prefixlen - 1))  # the upper half
    made = [f"{ipaddress.ip_address(start + 2 * i)}/{bits}" for i in range(count - len(extra))]
    return [*made, *(f"{ip}/{bits}" for ip in extra)]


def test_a_thousand_excepts_times_a_thousand_ports_on_real_packets(cluster: NetnsCluster) -> None:
    """Old code: 10^6 set elements per family, one per address interval and port (for IPv4
    alone: 19 s to render, 37 MB of JSON, 651 MiB). Now one lookup pair per family."""
    excepted = CLIENTS["excepted"]
    rule = {
        "from": [
            {
                "ipBlock": {
                    "cidr": "10.244.0.0/16",
                    "except": hosts("10.244.0.0/16", 1000, excepted[1]),
                }
            },
            {
                "ipBlock": {
                    "cidr": "fd00:244::/32",
                    "except": hosts("fd00:244::/32", 1000, excepted[2]),
                }
            },
        ],
        "ports": [{"port": 1000 + 2 * i} for i in range(1000)],  # 1000 and 1998, not 1001
    }
    ruleset, verdicts = apply_and_probe(cluster, [*pods(), policy([rule])])
    assert any(verdicts) and not all(verdicts)
    elements = sum(
        len(c["add"]["set"].get("elem", ()))
        for c in ruleset["nftables"]
        if "set" in c.get("add", {})
    )
    assert elements <= 2 * (2 * 1001) + 1000  # address intervals of both families + ports
    pair_rules = [
        c
        for c in ruleset["nftables"]
        if "rule" in c.get("add", {})
        and c["add"]["rule"]["chain"] != "forward"
        and len(c["add"]["rule"]["expr"]) == 3
    ]
    assert len(pair_rules) == 2  # one per family, both looking up the same port set


def test_a_policy_over_a_limit_is_enforced_fail_closed_on_real_packets(
    cluster: NetnsCluster,
) -> None:
    """Old code: no limit, the policy allowed every listed port. Over the port limit it now
    isolates the server and allows nothing; at the limit it is enforced as written."""
    client = {"from": [{"podSelector": {"matchLabels": {"app": "ok"}}}]}
    at_limit = [{**client, "ports": [{"port": p} for p in range(1, limits.PORTS_MAX + 1)]}]
    _, verdicts = apply_and_probe(cluster, [*pods(), policy(at_limit)])
    assert sum(verdicts) == 2 * len(SERVED)  # the "ok" client, both families, every port
    over = [{**client, "ports": [{"port": p} for p in range(1, limits.PORTS_MAX + 2)]}]
    objects = [*pods(), policy(over)]
    assert "5,001 port entries" in compile_objects(objects).policy_problems()["x/large"]
    _, verdicts = apply_and_probe(cluster, objects)
    assert not any(verdicts)  # kernel and semantics: the server is isolated, nothing allowed


def test_the_readable_form_of_a_lookup_pair_loads_as_the_same_table(cluster: NetnsCluster) -> None:
    """``compile --format nft`` prints the pair's port set (``inet_proto . inet_service``)
    as ``nft list`` does, protocol names in the protocol field, and it loads as the same
    table as the JSON. Old printer: ``6 . udp`` for TCP port 17 (nft happens to read that
    back as port 17, but nobody else does)."""
    rule = {
        "from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": hosts("10.244.0.0/16", 100)}}],
        "ports": [{"port": p, "protocol": proto} for p in (6, 17, 80) for proto in ("TCP", "UDP")]
        + [{"port": 1000 + 2 * i} for i in range(100)],
    }
    compiler = compile_objects([*pods(), policy([rule])])
    rules = compiler.node_rules("n1")
    ruleset = render(rules, groups_for(compiler, rules), RenderOptions(log_group=None))
    netns = cluster.node_netns("n2")
    text = to_text(ruleset)
    assert "tcp . 17" in text and "udp . 6" in text and "6 . udp" not in text
    listings = []
    for args, source in ((["-j", "-f", "-"], json.dumps(ruleset)), (["-f", "-"], text)):
        cluster.run_in(netns, ["nft", *args], source)
        listing = json.loads(
            cluster.run_in(netns, ["nft", "-j", "list", "table", "inet", "nftpolicy"])
        )
        cluster.run_in(netns, ["nft", "delete", "table", "inet", "nftpolicy"])
        sets = [o["set"] for o in listing["nftables"] if "set" in o]
        listings.append([{k: v for k, v in s.items() if k != "handle"} for s in sets])
    assert listings[0] == listings[1]
    ports = [s for s in listings[0] if s["type"] == ["inet_proto", "inet_service"]]
    assert len(ports) == 1 and len(ports[0]["elem"]) >= 6
