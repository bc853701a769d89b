"""Sanity tests of the ported upstream NetworkPolicy e2e data (tests/netpol_upstream).

Besides structural checks and spot checks against upstream's own tables, every case is
replayed through the product's reference evaluator (``controller.semantics``): upstream's
truth tables are the oracle for the evaluator, and a transcription slip in a policy or a table
shows up as a disagreement. Like upstream, src == dst cells are not compared.
"""

from __future__ import annotations

import ipaddress

import pytest

from controller.model import Protocol
from controller.semantics import Snapshot, evaluate
from tests.netpol_upstream import model
from tests.netpol_upstream.cases import (
    CASES,
    MAIN_CONTEXT,
    SCTP_CONTEXT,
    SKIPPED,
    SKIPPED_SCTP,
    UDP_CONTEXT,
    ApplyPolicy,
    Case,
    SetNamespaceLabels,
    case_by_name,
)
from tests.netpol_upstream.model import (
    ALL_PODS,
    NAMESPACE_LABEL_KEY,
    Addresses,
    Peer,
    Reachability,
)
from tests.netpol_upstream.replay import Replay

# ---------------------------------------------------------------------------------------------
# Synthetic cluster addresses (all in one /4 per family, as upstream's except cases assume)
# ---------------------------------------------------------------------------------------------


def _node_of(ns: str, pod: str) -> str:
    return f"node-{model.POD_NAMES.index(pod) % 2 + 1}"


def _ip_of(ns: str, pod: str) -> tuple[str, str | None]:
    i, j = model.NAMESPACES.index(ns), model.POD_NAMES.index(pod)
    return f"10.244.{i + 1}.{j + 10}", f"fd00:10:244:{i + 1}::{j + 10:x}"


POD_DICTS = model.pods(_node_of, _ip_of)
ADDRESSES = {family: Addresses.from_pods(POD_DICTS, family) for family in (4, 6)}


# ---------------------------------------------------------------------------------------------
# The product's reference evaluator (controller.semantics), replayed through each case
# ---------------------------------------------------------------------------------------------


def _table(replay: Replay, port: int, proto: str) -> dict[tuple[str, str], bool]:
    snap = Snapshot.of(replay.objects())
    ips = replay.addresses
    return {
        (s, d): evaluate(snap, ips.ip(s), ips.ip(d), Protocol(proto), port).allowed
        for s in ALL_PODS
        for d in ALL_PODS
    }


# ---------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------


def _all_apply_actions() -> list[tuple[Case, ApplyPolicy]]:
    return [
        (case, action)
        for case in CASES
        for step in case.steps
        for action in step.actions
        if isinstance(action, ApplyPolicy)
    ]


def test_at_least_40_cases() -> None:
    assert len(CASES) >= 40
    assert len(CASES) == 45


def test_case_names_unique_and_contexts_known() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert not set(names) & set(SKIPPED_SCTP)
    assert not set(names) & set(SKIPPED)
    for case in CASES:
        assert case.context in (MAIN_CONTEXT, UDP_CONTEXT)
        assert case.name.strip() == case.name and case.it
        if case.context == MAIN_CONTEXT:
            assert case.it == case.name
        else:
            assert case.name == f"{case.context} {case.it}"
        assert case.steps and all(step.probes for step in case.steps)


def test_context_sizes() -> None:
    assert sum(c.context == MAIN_CONTEXT for c in CASES) == 42
    assert [c.it for c in CASES if c.context == UDP_CONTEXT] == [
        "should support a 'default-deny-ingress' policy",
        "should enforce policy based on Ports",
        "should enforce policy to allow traffic only from a pod in a different namespace based "
        "on PodSelector and NamespaceSelector",
    ]
    assert len(SKIPPED_SCTP) == 3
    assert all(name.startswith(f"{SCTP_CONTEXT} should ") for name in SKIPPED_SCTP)
    for name, reason in SKIPPED.items():
        assert name and reason


@pytest.mark.parametrize("family", [4, 6])
def test_every_policy_is_a_complete_networkpolicy(family: int) -> None:
    actions = _all_apply_actions()
    assert actions
    for case, action in actions:
        policy = action.render(ADDRESSES[family])
        assert policy["apiVersion"] == "networking.k8s.io/v1", case.name
        assert policy["kind"] == "NetworkPolicy", case.name
        meta = policy["metadata"]
        assert meta["name"] and meta["namespace"] in model.NAMESPACES, case.name
        spec = policy["spec"]
        assert isinstance(spec["podSelector"], dict), case.name
        assert spec["policyTypes"] and set(spec["policyTypes"]) <= {"Ingress", "Egress"}
        assert set(spec) <= {"podSelector", "policyTypes", "ingress", "egress"}
        for rule in spec.get("ingress", []) + spec.get("egress", []):
            for port in rule.get("ports", []):
                assert port.get("protocol", "TCP") in ("TCP", "UDP", "SCTP"), case.name
            for peer in rule.get("from", []) + rule.get("to", []):
                assert set(peer) <= {"podSelector", "namespaceSelector", "ipBlock"}
                assert peer, case.name
                if "ipBlock" in peer:
                    net = ipaddress.ip_network(peer["ipBlock"]["cidr"])  # canonical: strict
                    assert net.version == family


def test_ip_dependent_cases_need_addresses() -> None:
    ip_cases = {c.name for c in CASES if c.needs_addresses}
    assert ip_cases == {
        "should allow egress access to server in CIDR block",
        "should enforce except clause while egress access to server in CIDR block",
        "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
    }
    action = next(a for c, a in _all_apply_actions() if a.needs_addresses)
    with pytest.raises(ValueError):
        action.render()
    assert all(c.ipv6_ok for c in CASES)


def test_every_table_covers_all_81_pairs_and_is_frozen() -> None:
    for case in CASES:
        for probe in case.probes:
            table = probe.expected
            assert probe.port in model.PORTS, case.name
            assert probe.protocol in model.PROTOCOLS, case.name
            assert table.pods == ALL_PODS
            cells = list(table.cells())
            assert len(cells) == 81 and len({(s, d) for s, d, _ in cells}) == 81
            assert table.frozen
            with pytest.raises(TypeError):
                table.expect("x/a", "x/b", True)


def test_protocols_probed() -> None:
    assert {p for c in CASES for p in c.protocols} == {"TCP", "UDP"}
    assert all(c.protocols == {"UDP"} for c in CASES if c.context == UDP_CONTEXT)


def test_apply_policy_render_returns_independent_copies() -> None:
    case = case_by_name("should support a 'default-deny-ingress' policy")
    action = case.steps[0].actions[0]
    assert isinstance(action, ApplyPolicy)
    first = action.render()
    first["spec"]["podSelector"]["matchLabels"] = {"hacked": "yes"}
    assert action.render()["spec"]["podSelector"] == {}
    with pytest.raises(ValueError):
        ApplyPolicy()
    with pytest.raises(ValueError):
        ApplyPolicy(policy={}, policy_factory=lambda a: {})


# ---------------------------------------------------------------------------------------------
# Semantics: every table agrees with the evaluator (loopback ignored, as upstream)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_tables_match_networkpolicy_semantics(case: Case, family: int) -> None:
    replay = Replay(POD_DICTS, ADDRESSES[family])
    for n, step in enumerate(case.steps):
        for action in step.actions:
            replay.apply(action)
        for probe in step.probes:
            observed = _table(replay, probe.port, probe.protocol)
            mismatches = probe.expected.compare(observed)
            assert not mismatches, probe.expected.format_comparison(
                observed, title=f"step {n} {probe.protocol}/{probe.port}"
            )


# ---------------------------------------------------------------------------------------------
# Spot checks against upstream's tables
# ---------------------------------------------------------------------------------------------


def _only_probe(name: str, step: int = 0, index: int = 0) -> Reachability:
    return case_by_name(name).steps[step].probes[index].expected


def test_default_deny_ingress_blocks_exactly_the_x_column() -> None:
    table = _only_probe("should support a 'default-deny-ingress' policy")
    # upstream: ExpectPeer(&Peer{}, &Peer{Namespace: nsX}, false) -- every pod, x's own
    # pods and the pods themselves (loopback) included, into any x pod.
    for src, dst, value in table.cells():
        assert value == (not dst.startswith("x/")), (src, dst)
    assert table.count(False) == 27
    udp = _only_probe(f"{UDP_CONTEXT} should support a 'default-deny-ingress' policy")
    assert udp == table


def test_default_deny_all_blocks_rows_and_columns_of_x() -> None:
    table = _only_probe("should support a 'default-deny-all' policy")
    for src, dst, value in table.cells():
        assert value == (not src.startswith("x/") and not dst.startswith("x/"))
    assert table.count(True) == 36


def test_ingress_for_a_target_uses_the_9x9_expectations() -> None:
    table = _only_probe("should enforce policy to allow ingress traffic for a target")
    for src in ALL_PODS:
        assert table[src, "x/a"] is True
        assert table[src, "x/b"] is False
        assert table[src, "x/c"] is False  # 9x9 revision only; newest upstream has no x/c


def test_client_side_egress_denial_table() -> None:
    table = _only_probe(
        "should support denying of egress traffic on the client side (even if the server "
        "explicitly allows this traffic)"
    )
    assert table["x/a", "y/a"] is True
    assert table["x/a", "y/b"] is False
    assert table["x/a", "y/c"] is False
    assert table["x/b", "y/a"] is False
    assert table["z/c", "y/b"] is False
    assert table["z/c", "y/c"] is True
    assert table.count(False) == 9 + 8 + 8 - 1  # row x/a, columns y/a and y/b, minus x/a->y/a


def test_stacked_policies_steps() -> None:
    case = case_by_name("should enforce multiple, stacked policies with overlapping podSelectors")
    first, second = case.steps
    assert [(p.port, p.protocol) for p in first.probes] == [(81, "TCP"), (80, "TCP")]
    assert [(p.port, p.protocol) for p in second.probes] == [(80, "TCP")]
    assert second.probes[0].expected == first.probes[0].expected
    assert first.probes[1].expected.get("y/a", "x/a") is False
    assert first.probes[0].expected.get("y/a", "x/a") is True


def test_self_traffic_keeps_upstream_values_but_is_ignored() -> None:
    table = _only_probe(
        "should enforce policy to allow traffic from pods within server namespace based on "
        "PodSelector"
    )
    # ExpectAllIngress(x/a, false) sets the x/a -> x/a cell too ...
    assert table["x/a", "x/a"] is False
    observed = table.as_dict()
    observed["x/a", "x/a"] = True  # ... which a real pod nevertheless reaches
    assert table.compare(observed) == []
    [mismatch] = table.compare(observed, ignore_loopback=False)
    assert mismatch.loopback


def test_updated_namespace_keeps_the_metadata_name_label() -> None:
    case = case_by_name("should allow ingress access from updated namespace")
    [action] = case.steps[1].actions
    assert isinstance(action, SetNamespaceLabels)
    assert dict(action.labels) == {NAMESPACE_LABEL_KEY: "y", "ns2": "updated"}


def test_named_port_cases_use_upstream_port_names() -> None:
    names = {
        port["port"]
        for _, action in _all_apply_actions()
        if not action.needs_addresses
        for rule in action.render()["spec"].get("ingress", [])
        + action.render()["spec"].get("egress", [])
        for port in rule.get("ports", [])
        if isinstance(port.get("port"), str)
    }
    assert names == {"serve-80-tcp", "serve-81-tcp"}


# ---------------------------------------------------------------------------------------------
# Model and Reachability helpers
# ---------------------------------------------------------------------------------------------


def test_model_objects() -> None:
    nss = model.namespaces()
    assert [n["metadata"]["name"] for n in nss] == ["x", "y", "z"]
    assert all(n["metadata"]["labels"] == {NAMESPACE_LABEL_KEY: n["metadata"]["name"]} for n in nss)
    assert len(POD_DICTS) == 9
    pod = POD_DICTS[0]
    assert (pod["metadata"]["namespace"], pod["metadata"]["name"]) == ("x", "a")
    assert pod["metadata"]["labels"] == {"pod": "a"}
    assert pod["spec"]["nodeName"] == "node-1"
    ports = [p for c in pod["spec"]["containers"] for p in c["ports"]]
    assert {(p["name"], p["containerPort"], p["protocol"]) for p in ports} == {
        ("serve-80-tcp", 80, "TCP"),
        ("serve-80-udp", 80, "UDP"),
        ("serve-81-tcp", 81, "TCP"),
        ("serve-81-udp", 81, "UDP"),
    }
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"] == "10.244.1.10"
    assert [e["ip"] for e in pod["status"]["podIPs"]] == ["10.244.1.10", "fd00:10:244:1::a"]
    single = model.pods(_node_of, lambda ns, p: ("10.0.0.1", None))
    assert single[0]["status"]["podIPs"] == [{"ip": "10.0.0.1"}]


def test_addresses() -> None:
    v4, v6 = ADDRESSES[4], ADDRESSES[6]
    assert v4.ip("y/b") == "10.244.2.11" and v4.host_cidr("y/b") == "10.244.2.11/32"
    assert v6.host_cidr("x/b") == "fd00:10:244:1::b/128"
    assert v4.large_cidr("x/b") == "0.0.0.0/4"
    assert v6.large_cidr("x/b") == "f000::/4"
    assert set(v4.ips) == set(v6.ips) == set(ALL_PODS)
    with pytest.raises(ValueError):
        Addresses(4, {"x/a": "fd00::1"})
    with pytest.raises(KeyError):
        Addresses(4, {}).ip("x/a")


def test_reachability_helpers() -> None:
    r = Reachability()
    assert r.count(True) == 81
    r.expect_peer(Peer("y"), Peer("z", "c"), False)
    assert {(s, d) for s, d, v in r.cells() if not v} == {
        ("y/a", "z/c"),
        ("y/b", "z/c"),
        ("y/c", "z/c"),
    }
    r.expect_all_egress("x/b", False).expect_all_ingress("x/b", True)
    assert r["x/b", "x/b"] is True and r["x/b", "x/a"] is False
    r.allow_loopback()
    assert all(r[p, p] for p in ALL_PODS)
    with pytest.raises(KeyError):
        r.expect("x/a", "q/a", True)
    with pytest.raises(ValueError):
        Peer("x").matches("x-a")
    copy = r.copy()
    assert copy == r and not copy.frozen
    assert Reachability.from_observations(r.as_dict()) == r
    with pytest.raises(ValueError):
        Reachability.from_observations({})


def test_format_comparison_marks_mismatches() -> None:
    table = Reachability().expect_all_ingress("x/a", False).freeze()
    observed = table.as_dict()
    observed["y/c", "x/a"] = True
    observed["x/a", "x/a"] = True
    del observed["z/a", "z/b"]
    text = table.format_comparison(observed, title="TCP/80")
    assert text.startswith("TCP/80: reachability: correct:70, incorrect:2")
    assert "*.*" in text and "(.)" in text and "?" in text
    assert "y/c -> x/a: expected blocked, observed ALLOWED" in text
    assert "z/a -> z/b: expected allowed, observed MISSING" in text
    assert "x/a -> x/a" not in text
    assert table.pretty().splitlines()[0].split() == ["-", *ALL_PODS]
