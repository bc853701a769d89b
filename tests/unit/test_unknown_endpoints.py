"""Unknown endpoints: NodeRules list every local pod and the node's pod ranges; the rendered
table drops new connections of any other address in those ranges (issue 9, "fail closed")."""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from kubernetes import client

from controller.agent.agent import Agent, AgentConfig
from controller.agent.nft_text import to_text
from controller.agent.render import (
    UNKNOWN_CHAIN,
    UNKNOWN_COUNTER,
    RenderOptions,
    render,
    unknown_endpoints_in_force,
)
from controller.agent.verdict import Ruleset, cluster_allows
from controller.cli import main
from controller.compiler import Compiler, compile_objects, groups_for
from controller.compiler.ir import LocalPod, NodeRules
from controller.model import ApiObject, Node, Pod, Protocol, parse_object
from controller.model.config import DefaultDeny
from controller.model.direction import parse_direction_set
from controller.resources import node_rules_body, node_rules_from_body
from tests.cluster_strategies import NODES, GeneratedCluster, clusters

TCP = Protocol.TCP.number


def pod(name: str, ip: str, node: str = "n1", **labels: str) -> ApiObject:
    return parse_object(
        {
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "x", "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}],
            },
            "status": {"phase": "Running", "podIP": ip},
        }
    )


def node(name: str, *cidrs: str) -> ApiObject:
    return parse_object(
        {"kind": "Node", "metadata": {"name": name}, "spec": {"podCIDRs": list(cidrs)}}
    )


ISOLATE_A = parse_object(
    {
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}],
        },
    }
)


def compiled(*objects: ApiObject) -> tuple[Compiler, NodeRules]:
    compiler = compile_objects(objects)
    return compiler, compiler.node_rules("n1")


def forward(rules: NodeRules, compiler: Compiler, options: RenderOptions | None = None) -> Ruleset:
    return Ruleset(render(rules, groups_for(compiler, rules), options))


def new(src: str, dst: str, port: int = 80) -> tuple[Any, Any, int, int]:
    return (ipaddress.ip_address(src), ipaddress.ip_address(dst), TCP, port)


# ---- compiler: every local pod, and the node's ranges ----------------------------------------


def test_node_rules_list_every_local_pod_and_the_pod_ranges() -> None:
    compiler, rules = compiled(
        node("n1", "10.244.1.0/24", "fd00:244:1::/64"),
        pod("a", "10.244.1.10", app="a"),
        pod("open", "10.244.1.11", app="c"),
        pod("elsewhere", "10.244.2.10", node="n2", app="c"),
        ISOLATE_A,
    )
    assert [str(c) for c in rules.pod_cidrs] == ["10.244.1.0/24", "fd00:244:1::/64"]
    by_key = {p.key: p for p in rules.pods}
    assert set(by_key) == {"x/a", "x/open"}
    # the open pod: known by its address only (no named ports, no default deny, no policy)
    assert by_key["x/open"] == LocalPod("x/open", (ipaddress.ip_address("10.244.1.11"),))
    assert by_key["x/a"].named_ports  # the isolated one is listed as before
    assert [p.applied_to for p in rules.policies] == [("x/a",)]


def test_a_new_open_pod_and_a_pod_range_change_rewrite_the_nodes_rules() -> None:
    compiler = compile_objects([node("n1", "10.244.1.0/24")])
    compiler.take_changes()
    compiler.upsert(pod("open", "10.244.1.11"))
    assert compiler.take_changes().nodes == {"n1"}
    compiler.upsert(node("n1", "10.244.9.0/24"))
    assert compiler.take_changes().nodes == {"n1"}
    assert [str(c) for c in compiler.node_rules("n1").pod_cidrs] == ["10.244.9.0/24"]


def test_pods_without_addresses_are_not_listed() -> None:
    pending = parse_object(
        {
            "kind": "Pod",
            "metadata": {"name": "pending", "namespace": "x"},
            "spec": {"nodeName": "n1", "containers": [{}]},
            "status": {"phase": "Pending"},
        }
    )
    _, rules = compiled(node("n1", "10.244.1.0/24"), pending)
    assert rules.pods == ()


def test_node_rules_json_round_trip_and_old_json_parses() -> None:
    compiler, rules = compiled(
        node("n1", "10.244.1.0/24", "fd00:244:1::/64"),
        pod("a", "10.244.1.10", app="a"),
        pod("open", "10.244.1.11"),
        ISOLATE_A,
    )
    raw = rules.to_json()
    assert raw["podCIDRs"] == ["10.244.1.0/24", "fd00:244:1::/64"]
    assert NodeRules.from_json(raw) == rules
    assert node_rules_from_body(node_rules_body(rules)) == rules
    old = {k: v for k, v in raw.items() if k != "podCIDRs"}  # an older operator's rules
    parsed = NodeRules.from_json(old)
    assert parsed.pod_cidrs == () and parsed.pods == rules.pods
    assert unknown_endpoints_in_force(parsed, RenderOptions()) == "inactive"


# ---- render: the unknown-endpoint rules -----------------------------------------------------


def test_unknown_addresses_in_the_pod_ranges_get_no_new_connection() -> None:
    compiler, rules = compiled(
        node("n1", "10.244.1.0/24", "fd00:244:1::/64"),
        node("n2", "10.244.2.0/24"),
        pod("a", "10.244.1.10", app="a"),
        pod("open", "10.244.1.11"),
        pod("b", "10.244.2.10", node="n2", app="b"),
        ISOLATE_A,
    )
    kernel = forward(rules, compiler)
    unknown, unknown6 = "10.244.1.99", "fd00:244:1::99"
    for src, dst in [
        (unknown, "10.244.2.10"),  # out of an unknown pod
        ("10.244.2.10", unknown),  # into it
        ("10.244.1.11", unknown),  # from a known open pod on the same node
        (unknown, "10.244.1.10"),  # to an isolated pod that would allow nothing from it anyway
        ("fd00:244:2::10", unknown6),
        (unknown6, "2001:db8::1"),
    ]:
        assert not kernel.forward(new(src, dst)), (src, dst)
    for src, dst in [
        ("10.244.2.10", "10.244.1.11"),  # known, open
        ("10.244.1.11", "10.244.2.10"),
        ("10.244.1.11", "192.0.2.1"),  # to the world
        ("10.244.2.10", "10.244.1.10"),  # allowed by the policy
        ("10.244.3.7", "10.244.2.10"),  # not this node's range: not this node's business
    ]:
        assert kernel.forward(new(src, dst)), (src, dst)
    assert not kernel.forward(new("10.244.1.11", "10.244.1.10"))  # the policy still decides


def test_allow_mode_and_unknown_ranges_render_no_unknown_endpoint_rules() -> None:
    compiler, rules = compiled(node("n1", "10.244.1.0/24"), pod("open", "10.244.1.11"))
    assert unknown_endpoints_in_force(rules, RenderOptions()) == "drop"
    allow = RenderOptions(unknown_endpoints="allow")
    assert unknown_endpoints_in_force(rules, allow) == "allow"
    _, bare = compiled(pod("open", "10.244.1.11"))
    assert unknown_endpoints_in_force(bare, RenderOptions()) == "inactive"
    for r, options in ((rules, allow), (bare, RenderOptions())):
        text = to_text(render(r, groups_for(compiler, r), options))
        assert UNKNOWN_CHAIN not in text and "pod-ranges" not in text
        assert forward(r, compiler, options).forward(new("10.244.1.99", "10.244.2.10"))


def test_the_pod_cidrs_option_replaces_the_nodes_ranges_and_may_overlap() -> None:
    compiler, rules = compiled(node("n1", "10.244.1.0/24"), pod("open", "10.244.1.11"))
    options = RenderOptions(
        pod_cidrs=(ipaddress.ip_network("10.9.0.0/16"), ipaddress.ip_network("10.9.1.0/24"))
    )
    kernel = forward(rules, compiler, options)
    assert kernel.sets["pod-ranges4"] == [{"range": ["10.9.0.0", "10.9.255.255"]}]
    assert "pod-ranges6" not in kernel.sets
    assert not kernel.forward(new("10.9.1.5", "10.244.2.10"))
    assert kernel.forward(new("10.244.1.99", "10.244.2.10"))  # the Node's range is replaced


def test_the_forward_chain_checks_unknown_endpoints_before_the_verdict_maps() -> None:
    compiler, rules = compiled(
        node("n1", "10.244.1.0/24"), pod("a", "10.244.1.10", app="a"), ISOLATE_A
    )
    ruleset = render(rules, groups_for(compiler, rules))
    commands = ruleset["nftables"]
    forward_rules = [
        c["add"]["rule"]["expr"]
        for c in commands
        if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == "forward"
    ]
    kinds = [next(iter(expr[-1])) for expr in forward_rules]
    established = ["accept"] * 3  # current epoch; related; reply direction (render doc)
    assert kinds == [*established, "jump", "jump", "vmap", "vmap", "vmap", "vmap", "mangle"]
    assert {
        "add": {"counter": {"family": "inet", "table": "nftpolicy", "name": UNKNOWN_COUNTER}}
    } in (commands)
    text = to_text(ruleset)
    assert 'log prefix "nftpolicy unknown-endpoint drop " group 100' in text
    assert f'counter name "{UNKNOWN_COUNTER}" drop' in text
    assert "ip saddr @pod-ranges4 ip saddr != @pods4 jump unknown-endpoint" in text
    quiet = to_text(render(rules, groups_for(compiler, rules), RenderOptions(log_group=None)))
    assert "unknown-endpoint drop" not in quiet and f'counter name "{UNKNOWN_COUNTER}"' in quiet


def test_open_pods_cost_no_chain_and_no_verdict_map_entry() -> None:
    objects = [node("n1", "10.244.1.0/24"), pod("a", "10.244.1.10", app="a"), ISOLATE_A]
    opens = [pod(f"open{i}", f"10.244.1.{100 + i}") for i in range(50)]
    compiler, rules = compiled(*objects, *opens)
    ruleset = render(rules, groups_for(compiler, rules))
    chains = [c for c in ruleset["nftables"] if "chain" in c.get("add", {})]
    maps = [c["add"]["map"] for c in ruleset["nftables"] if "map" in c.get("add", {})]
    assert len(chains) == 3  # forward, unknown-endpoint, and a's ingress chain
    assert sum(len(m.get("elem", ())) for m in maps) == 1
    kernel = Ruleset(ruleset)
    assert len(kernel.sets["pods4"]) == 51


# ---- with every pod listed, the verdicts of known pods are those of the semantics ------------


def _with_nodes(cluster: GeneratedCluster) -> list[ApiObject]:
    """The generated cluster plus Node objects whose ranges hold their pods' addresses."""
    nodes = [node(n, f"10.244.{i + 1}.0/24", f"fd00:244:{i + 1}::/64") for i, n in enumerate(NODES)]
    return [*nodes, *(parse_object(o) for o in cluster.objects)]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_known_pods_keep_their_verdicts_and_unknown_ones_get_none(
    cluster: GeneratedCluster,
) -> None:
    config = DefaultDeny(directions=parse_direction_set(cluster.default_deny, "", ""))
    objects = _with_nodes(cluster)
    with_ranges = _rulesets(objects, config)
    without = _rulesets([o for o in objects if not isinstance(o, Node)], config)
    node_of_ip = {
        ip: o.node for o in objects if isinstance(o, Pod) and o.node for ip in o.addresses
    }
    known = list(node_of_ip)
    strangers = {
        ipaddress.ip_address(a): n for a, n in (("10.244.1.250", "n1"), ("fd00:244:2::fa", "n2"))
    }
    for src, dst in itertools.product(known, known):
        if src == dst or src.version != dst.version:
            continue
        packet = (src, dst, TCP, 80)
        assert cluster_allows(with_ranges, node_of_ip, packet) == cluster_allows(
            without, node_of_ip, packet
        )
    placed = {**node_of_ip, **strangers}
    for stranger in strangers:
        for peer in known:
            if peer.version == stranger.version:
                assert not cluster_allows(with_ranges, placed, (stranger, peer, TCP, 80))
                assert not cluster_allows(with_ranges, placed, (peer, stranger, TCP, 80))


def _rulesets(objects: list[ApiObject], config: DefaultDeny) -> dict[str, Ruleset]:
    compiler = compile_objects(objects, config)
    out = {}
    for name in NODES:
        rules = compiler.node_rules(name)
        out[name] = Ruleset(render(rules, groups_for(compiler, rules)))
    return out


# ---- the agent's options --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pod-cidrs", "10.244.1.0/33"], "is not a CIDR"),
        (["--pod-cidrs", "10.244.1.1/24"], "has host bits set"),
        (["--pod-cidrs", ","], "no CIDR given"),
        (["--unknown-endpoints", "maybe"], "invalid choice"),
    ],
)
def test_bad_agent_options_are_refused_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["agent", "--node", "n1", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# ---- the agent: what it reports -------------------------------------------------------------


class CountingKernel:
    """The kernel as the agent sees it: a swap restarts the named counter."""

    def __init__(self) -> None:
        self.packets: int | None = None
        self.applied = 0

    def apply(self, ruleset: dict[str, Any]) -> None:
        self.applied += 1
        self.packets = 0

    def counter_packets(self, name: str) -> int | None:
        assert name == UNKNOWN_COUNTER
        return self.packets

    def read(self) -> None:
        return None


def _metric(agent: Agent, name: str) -> float:
    prefix = f"nftpolicy_agent_{name} "
    (line,) = [x for x in agent.metrics.render().splitlines() if x.startswith(prefix)]
    return float(line.removeprefix(prefix))


def test_the_agent_reports_protection_and_counts_drops_across_swaps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = Agent(client.ApiClient(), AgentConfig(node="n1", conntrack_cleanup=False))
    kernel = agent.kernel = CountingKernel()  # type: ignore[assignment]
    for informer in agent.informers:
        informer.synced.set()
    bare = NodeRules("n1", pods=(LocalPod("x/a", (ipaddress.ip_address("10.244.1.10"),)),))

    def sync(rules: NodeRules, generation: int) -> None:
        agent.view.rules, agent.view.generation = rules, generation
        agent._sync(force=False)

    with caplog.at_level(logging.INFO):
        sync(bare, 1)
        sync(dataclasses.replace(bare, policies=()), 2)  # same state: not logged again
    warnings = [r for r in caplog.records if "protection inactive" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert _metric(agent, "unknown_endpoint_protection") == 0
    # The status goes to the ``_status`` thread (not started) at once: the kernel re-checks
    # established flows, nothing waits for a conntrack clean-up.
    assert agent._status._pending is not None
    assert agent._status._pending["unknownEndpoints"] == "inactive"

    ranged = dataclasses.replace(bare, pod_cidrs=(ipaddress.ip_network("10.244.1.0/24"),))
    sync(ranged, 3)
    assert _metric(agent, "unknown_endpoint_protection") == 1
    assert agent._status._pending is not None
    assert agent._status._pending["unknownEndpoints"] == "drop"
    kernel.packets = 5
    agent._count_unknown_drops()
    assert _metric(agent, "unknown_endpoint_drops_total") == 5
    more = dataclasses.replace(
        ranged, pods=(*ranged.pods, LocalPod("x/b", (ipaddress.ip_address("10.244.1.11"),)))
    )
    sync(more, 4)  # a swap: the kernel's counter starts again at 0
    assert kernel.applied == 3 and kernel.packets == 0
    kernel.packets = 2
    agent._count_unknown_drops()
    assert _metric(agent, "unknown_endpoint_drops_total") == 7
