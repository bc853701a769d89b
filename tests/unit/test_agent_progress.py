"""What holds an agent back: missing groups enforced as empty after a grace, and the lag
between the NodeRules generation that arrived and the one in force (controller/agent/progress.py,
and the agent's apply step driven without threads, a kernel or an API server)."""

from __future__ import annotations

import ipaddress
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client

from controller.agent import agent as agent_module
from controller.agent.agent import Agent, AgentConfig
from controller.agent.progress import GenerationLag, MissingGroups, stand_ins
from controller.agent.render import MissingGroupError, RenderOptions, render
from controller.agent.verdict import Ruleset
from controller.compiler.ir import (
    AddressGroup,
    CompiledPolicy,
    LocalPod,
    NodeRules,
    PortGroup,
    PortRange,
    Rule,
)
from controller.model import Direction, Protocol
from controller.resources import group_body, node_rules_body

A, FROM_G1, FROM_G2, OTHER, DEST = "10.0.0.10", "10.0.1.1", "10.0.2.2", "10.0.3.3", "10.0.4.4"
TCP = Protocol.TCP.number


def rules() -> NodeRules:
    """Pod a accepts port 80 from g1 and from g2, and may only reach the named port pg."""
    return NodeRules(
        node="n1",
        pods=(LocalPod("ns/a", (ipaddress.ip_address(A),)),),
        policies=(
            CompiledPolicy(
                "ns/p",
                ("ns/a",),
                frozenset({Direction.INGRESS, Direction.EGRESS}),
                ingress=(Rule(peers=("g1", "g2"), ports=(PortRange(Protocol.TCP, 80, 80),)),),
                egress=(Rule(peers=(), ports=(), port_groups=("pg",)),),
            ),
        ),
    )


G1 = AddressGroup("g1", "peer 1", frozenset({ipaddress.ip_address(FROM_G1)}))
G2 = AddressGroup("g2", "peer 2", frozenset({ipaddress.ip_address(FROM_G2)}))
PG = PortGroup("pg", "dest", Protocol.TCP, "http", frozenset({(ipaddress.ip_address(DEST), 80)}))


def allows(ruleset: dict[str, Any], src: str, dst: str, port: int = 80) -> bool:
    return Ruleset(ruleset).forward(
        (ipaddress.ip_address(src), ipaddress.ip_address(dst), TCP, port)
    )


# ---- the pure decision -------------------------------------------------------------------------


def test_missing_groups_wait_the_grace_then_apply() -> None:
    m = MissingGroups(grace=5.0)
    assert m.update(frozenset(), now=0.0) and m.deadline() is None
    assert not m.update(frozenset({"g2"}), now=10.0)
    assert m.deadline() == 15.0
    assert not m.update(frozenset({"g2"}), now=14.9)
    assert m.update(frozenset({"g2"}), now=15.0)
    assert m.deadline() is None  # applied: nothing to wake up for
    assert m.update(frozenset({"g2"}), now=40.0)  # still missing: later changes go through


def test_each_missing_group_gets_its_own_grace() -> None:
    m = MissingGroups(grace=5.0)
    assert not m.update(frozenset({"g1"}), now=0.0)
    assert m.update(frozenset({"g1"}), now=6.0)
    # g1 is lost for good; g2 is merely late: wait for g2, not beyond its grace
    assert not m.update(frozenset({"g1", "g2"}), now=7.0)
    assert m.deadline() == 12.0
    assert m.update(frozenset({"g1"}), now=7.5)  # g2 arrived
    # a group that arrives and goes again starts over
    assert m.update(frozenset(), now=8.0)
    assert not m.update(frozenset({"g1"}), now=9.0)


def test_stand_ins_fail_closed() -> None:
    """Every rule that needs a missing group allows nothing from it; everything else holds."""
    r = rules()
    with pytest.raises(MissingGroupError):
        render(r, {"g1": G1})  # what the old agent did: nothing applied, the old table stays
    groups = {"g1": G1, **stand_ins(r, r.groups() - {"g1"})}
    assert isinstance(groups["pg"], PortGroup) and not groups["pg"].members
    assert isinstance(groups["g2"], AddressGroup) and not groups["g2"].addresses
    ruleset = render(r, groups)
    assert allows(ruleset, FROM_G1, A)  # the group that is there still works
    assert not allows(ruleset, FROM_G2, A)  # the missing one allows nothing ...
    assert not allows(ruleset, OTHER, A)  # ... and nothing else opens
    assert not allows(ruleset, A, DEST)  # the missing port group allows nothing either
    full = render(r, {"g1": G1, "g2": G2, "pg": PG})
    assert allows(full, FROM_G2, A) and allows(full, A, DEST)


def test_generation_lag() -> None:
    lag = GenerationLag()
    assert lag.behind(0.0) is None
    lag.seen(3, now=0.0)
    lag.seen(4, now=1.0)
    assert lag.behind(10.0) == (3, 10.0, None)
    lag.applied(3)
    assert lag.behind(10.0) == (4, 9.0, 3)  # the next one waits since it arrived, not since 0
    lag.seen(4, now=5.0)  # seen again (a re-list): still waiting since 1.0
    assert lag.behind(10.0) == (4, 9.0, 3)
    lag.applied(4)
    lag.seen(4, now=11.0)
    assert lag.behind(12.0) is None
    lag.seen(1, now=20.0)  # deleted and re-created: generations start over
    assert lag.behind(21.0) == (1, 1.0, None)
    lag.seen(None, now=22.0)
    assert lag.behind(30.0) is None


# ---- the agent's apply step ----------------------------------------------------------------------


class FakeKernel:
    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []

    def apply(self, ruleset: dict[str, Any]) -> None:
        self.applied.append(ruleset)

    def counter_packets(self, name: str) -> int | None:
        return None

    def read(self) -> dict[str, Any] | None:
        """The listing the drift check digests: never changes here, so no drift."""
        return {"nftables": []}


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The agent's clock, set by the test (``now[0] += seconds``)."""
    clock = [100.0]
    monkeypatch.setattr(
        agent_module, "time", SimpleNamespace(monotonic=lambda: clock[0], thread_time=lambda: 0.0)
    )
    return clock


@pytest.fixture
def agent() -> Agent:
    a = Agent(
        client.ApiClient(),
        AgentConfig(node="n1", conntrack_cleanup=False, missing_group_grace=5.0),
    )
    a.kernel = FakeKernel()  # type: ignore[assignment]
    a._flows.submit = a._clean_flows  # type: ignore[method-assign,assignment]  # no thread here
    for informer in a.informers:
        informer.synced.set()
    return a


def test_agent_enforces_a_missing_group_as_empty_after_the_grace(
    agent: Agent,
    now: list[float],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    statuses: list[dict[str, Any]] = []
    monkeypatch.setattr(agent._status, "submit", statuses.append)
    kernel = agent.kernel
    assert isinstance(kernel, FakeKernel)
    body = node_rules_body(rules())
    body["metadata"]["generation"] = 7
    agent._rules_synced({"n1": body})
    agent._groups_synced({"g1": group_body(G1, ["n1"]), "pg": group_body(PG, ["n1"])})

    agent._sync(force=False)
    assert kernel.applied == [] and agent._sync_problem() is not None  # within the grace
    now[0] += 5.0
    with caplog.at_level(logging.ERROR):
        agent._sync(force=False)
    (ruleset,) = kernel.applied
    assert allows(ruleset, FROM_G1, A) and not allows(ruleset, FROM_G2, A)
    assert statuses[-1]["appliedGeneration"] == 7
    assert "g2" in statuses[-1]["error"] and "fail closed" in statuses[-1]["error"]
    assert "nftpolicy_agent_fail_closed_applies_total 1" in agent.metrics.render()
    assert "nftpolicy_agent_missing_groups 1" in agent.metrics.render()
    assert "enforcing them as empty" in caplog.text
    assert agent._sync_problem() is None and agent._lag_problem() is None

    # a later change on the node is not held up by the group that stays missing
    changed = node_rules_body(rules())
    changed["metadata"]["generation"] = 8
    changed["spec"]["pods"][0]["ips"].append("10.0.0.11")
    agent._rules_event("MODIFIED", changed)
    agent._sync(force=False)
    assert len(kernel.applied) == 2 and statuses[-1]["appliedGeneration"] == 8

    # the group arrives: applied at once, and the status error clears
    agent._group_event("ADDED", group_body(G2, ["n1"]))
    agent._sync(force=False)
    assert allows(kernel.applied[-1], FROM_G2, A)
    assert statuses[-1]["error"] == ""
    assert "nftpolicy_agent_missing_groups 0" in agent.metrics.render()


def test_agent_health_checks(
    agent: Agent, now: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent._status, "submit", lambda status: None)
    body = node_rules_body(rules())
    body["metadata"]["generation"] = 2
    agent._rules_synced({"n1": body})
    assert agent._sync_problem() == "initial sync: applying"
    now[0] += 31.0
    assert agent._lag_problem() == (
        "NodeRules generation 2 arrived 31 s ago and is not applied (in force: none)"
    )
    agent._groups_synced(
        {n: group_body(g, ["n1"]) for n, g in (("g1", G1), ("g2", G2), ("pg", PG))}
    )

    kernel = agent.kernel
    assert isinstance(kernel, FakeKernel)

    def refuse(ruleset: dict[str, Any]) -> None:
        raise OSError("Could not process rule: File exists")

    monkeypatch.setattr(kernel, "apply", refuse)
    agent._sync(force=False)
    assert agent._apply_problem() is None  # failing, but not for long yet
    assert (
        agent._sync_problem()
        == "initial sync: the apply failed: Could not process rule: File exists"
    )
    now[0] += 61.0
    agent._sync(force=True)
    assert agent._apply_problem() == (
        "applies have failed for 61 s: Could not process rule: File exists"
    )
    monkeypatch.setattr(kernel, "apply", kernel.applied.append)  # a working kernel again
    agent._sync(force=True)
    assert agent._apply_problem() is None and agent._lag_problem() is None
    assert agent._sync_problem() is None
    # a new generation that renders the same table is in force without a transaction
    body["metadata"]["generation"] = 3
    agent._rules_event("MODIFIED", body)
    agent._sync(force=False)
    now[0] += 31.0
    assert len(kernel.applied) == 1 and agent._lag_problem() is None


# ---- established flows: the kernel re-check, and when the status goes out -----------------------


def _forward(ruleset: dict[str, Any]) -> list[list[dict[str, Any]]]:
    return [
        c["add"]["rule"]["expr"]
        for c in ruleset["nftables"]
        if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == "forward"
    ]


def _epoch(ruleset: dict[str, Any]) -> int:
    fast = _forward(ruleset)[0][1]["match"]
    assert fast["left"] == {"&": [{"ct": {"key": "mark"}}, 0xFFFF0000]}
    return int(fast["right"])


def test_the_epoch_follows_the_rules_and_stays_under_the_mask() -> None:
    """Catches: an epoch that changes on a mere re-apply (every flow re-checked at each
    resync), one that stays the same when the rules change (denied flows keep the fast path),
    or bits outside the mask (other users' conntrack mark bits overwritten)."""
    groups = {"g1": G1, "g2": G2, "pg": PG}
    first, again = render(rules(), groups), render(rules(), dict(groups))
    narrower = render(rules(), {**groups, "g1": AddressGroup("g1", "peer 1")})
    assert _epoch(first) == _epoch(again)
    assert _epoch(first) != _epoch(narrower)
    for ruleset in (first, narrower):
        epoch = _epoch(ruleset)
        assert epoch and epoch & ~0xFFFF0000 == 0
        stamp = _forward(ruleset)[-1]
        assert stamp == [
            {
                "mangle": {
                    "key": {"ct": {"key": "mark"}},
                    "value": {"|": [{"&": [{"ct": {"key": "mark"}}, 0x0000FFFF]}, epoch]},
                }
            }
        ]
    without = render(rules(), groups, RenderOptions(ct_mark_mask=0))
    assert [next(iter(r[-1])) for r in _forward(without)][:2] == ["accept", "vmap"]
    assert "mangle" not in str(without)


@pytest.mark.parametrize(
    ("mask", "expected"), [(0xFFFF0000, ["status", "clean-up"]), (0, ["clean-up", "status"])]
)
def test_the_status_waits_for_the_clean_up_only_without_the_kernel_re_check(
    mask: int, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: "applied" reported while a denied flow can still pass (no re-check, clean-up
    not done yet), or held back behind a slow conntrack walk when the kernel already cuts it."""
    a = Agent(client.ApiClient(), AgentConfig(node="n1", render=RenderOptions(ct_mark_mask=mask)))
    a.kernel = FakeKernel()  # type: ignore[assignment]
    for informer in a.informers:
        informer.synced.set()
    order: list[str] = []
    monkeypatch.setattr(a._status, "submit", lambda _s: order.append("status"))
    monkeypatch.setattr(a, "_remove_disallowed", lambda *_: order.append("clean-up"))
    monkeypatch.setattr(a._flows, "submit", a._clean_flows)  # no thread here
    body = node_rules_body(rules())
    body["metadata"]["generation"] = 1
    a._rules_synced({"n1": body})
    a._groups_synced({n: group_body(g, ["n1"]) for n, g in (("g1", G1), ("g2", G2), ("pg", PG))})
    a._sync(force=False)
    assert order == expected
    assert "nftpolicy_agent_conntrack_cleanup_lag_seconds" in a.metrics.render()
