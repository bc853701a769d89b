"""Surviving the node (issue 9): the saved ruleset, node reboots with the API server away,
agents killed before or during an apply, and changes to the table behind the agent's back.

A node "reboot" here: forwarding in the node's namespace is switched off (the node is down:
nothing passes), the agent is killed -9, the table and conntrack are cleared (a fresh kernel),
the agent is started with its API connection frozen (``Proxy``), and forwarding comes back
once the agent process runs and the table is there. The ``Monitor`` of ``test_failures``
probes throughout: a probe the policies deny must fail in every round, down or up.

What this does not cover: a node whose agent never applied anything (no saved file). Its pods
are unprotected until the first apply unless the unknown-endpoint drop (issue 9, part
"unknown local endpoints") is in force, and even then only once a table exists.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from controller.agent import saved_ruleset
from controller.agent.kernel import Kernel
from controller.testing.apiserver import TestControlPlane
from controller.testing.netns import Probe
from tests.integration import test_failures
from tests.integration.live import Live, eventually
from tests.integration.proxy import Proxy, proxied_kubeconfig
from tests.integration.test_failures import (
    API_RESUME_BOUND,
    CONVERGENCE,
    A,
    B,
    C,
    Monitor,
    enforce_a_from_b,
    ingress_only_from,
    node_names,
    noderules_generation,
    table_state,
    wait_log,
)

pytestmark = pytest.mark.integration
# The same cluster as test_failures (importing the fixture would shadow every `live` argument).
live = pytest.fixture(test_failures.live.__wrapped__)  # type: ignore[attr-defined]

REPAIR_BOUND = 2.0  # a change to the table behind the agent's back -> restored
DOWN = frozenset([False])
EITHER = frozenset([True, False])
# While a node is down or coming up, allowed probes may fail; the denied one may never pass.
ONLY_C_TO_A_DENIED = [EITHER, DOWN, EITHER, EITHER]


def state_dir(live: Live, node: str) -> Path:
    return live.logs / f"state-{node}"  # what Live.start_agent passes as --state-dir


def probes_of(live: Live) -> list[Probe]:
    ns = live.ns
    return [
        Probe(f"{ns}/b", A, 80),  # allowed by a-from-b
        Probe(f"{ns}/c", A, 80),  # denied by a-from-b: must fail in every round
        Probe(f"{ns}/a", B, 80),  # b is not isolated
        Probe(f"{ns}/a", C, 80),  # c is not isolated (until c-from-b)
    ]


def start(live: Live, kubeconfig: Path) -> tuple[str, str]:
    """The operator, n2's agent, and n1's agent through ``proxy``; a-from-b enforced."""
    n1, n2 = node_names(live)
    live.start_operator(log_level="info")
    live.start_agent(n2, log_level="info")
    live.start_agent(n1, log_level="info", kubeconfig=kubeconfig)
    enforce_a_from_b(live, probes_of(live), [True, False, True, True])
    return n1, n2


def forwarding(live: Live, node: str, on: bool) -> None:
    live.net.run_in(live.net.node_netns(node), ["sysctl", "-qw", f"net.ipv4.ip_forward={int(on)}"])


def reboot(live: Live, node: str, proxy: Proxy, kubeconfig: Path) -> float:
    """Reboot ``node`` with the API server unreachable (module doc); returns when the node's
    forwarding came back."""
    netns = live.net.node_netns(node)
    forwarding(live, node, False)
    if f"agent-{node}" in live.processes:  # the test may have killed it already
        live.kill(f"agent-{node}", signal.SIGKILL)
    Kernel(netns).remove()
    live.net.run_in(netns, ["conntrack", "-F"])
    proxy.freeze()
    live.start_agent(node, log_level="info", kubeconfig=kubeconfig)
    deadline = time.monotonic() + 30
    while table_state(netns) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    forwarding(live, node, True)  # whether or not the agent restored anything
    return time.monotonic()


def test_reboot_with_the_api_away_enforces_the_saved_ruleset(
    live: Live, control_plane: TestControlPlane, tmp_path: Path
) -> None:
    """Catches: an agent that keeps nothing on the node, or loads it only after reaching the
    API server (after the reboot c->a would pass), that loads it into a merge instead of a
    replace, or that an agent killed -9 before its first apply undoes."""
    proxy = Proxy(("127.0.0.1", int(control_plane.url.rsplit(":", 1)[1])))
    kubeconfig = proxied_kubeconfig(control_plane, proxy, tmp_path / "proxied")
    try:
        n1, _ = start(live, kubeconfig)
        agent = f"agent-{n1}"
        generation = noderules_generation(live, n1)
        before = table_state(live.net.node_netns(n1))
        with Monitor(live, probes_of(live), [True, False, True, True]) as mon:
            mon.hold(1.0)
            down = mon.expect(
                [True, False, True, True], math.inf, "reboot", transient=ONLY_C_TO_A_DENIED
            )
            offset = len(live.log(agent))
            up = reboot(live, n1, proxy, kubeconfig)
            down.bound = up - down.since + 2.0  # then exactly the old matrix, API still away
            mon.hold(3.0)
            wait_log(live, agent, "loading the saved ruleset of generation", offset, timeout=1)
            assert f"generation {generation} from" in live.log(agent)[offset:]
            assert table_state(live.net.node_netns(n1)) == before
            # (a) killed -9 before its first apply (it cannot reach the API server): the
            # restarted agent finds the restored table and keeps it.
            live.kill(agent, signal.SIGKILL)
            offset = len(live.log(agent))
            live.start_agent(n1, log_level="info", kubeconfig=kubeconfig)
            wait_log(live, agent, "cannot reach the API server", offset, timeout=60)
            mon.hold(2.0)
            assert "applied generation" not in live.log(agent)[offset:]
            assert table_state(live.net.node_netns(n1)) == before
            # API back: the agent syncs and swaps; a change is enforced within the bound.
            proxy.release()
            wait_log(live, agent, "applied generation", offset, API_RESUME_BOUND)
            phase = mon.expect([True, False, True, False], CONVERGENCE, "c-from-b")
            live.apply_policy(live.ns, ingress_only_from("c-from-b", "c", "b", live.ns))
            print(
                f"reboot with the API away: change after the API came back in {mon.wait(phase):.2f} s"
            )
            mon.assert_ok()
    finally:
        proxy.close()


def large_a_from_b(ns: str, excepts: int = 20_000) -> dict[str, Any]:
    """a-from-b plus a large ipBlock rule (slow to render, apply and save)."""
    holes = [f"172.16.{i // 250}.{i % 250 + 1}/32" for i in range(excepts)]
    return {
        "metadata": {"name": "a-from-b", "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]},
                {
                    "from": [{"ipBlock": {"cidr": "172.16.0.0/12", "except": holes}}],
                    "ports": [{"protocol": "TCP", "port": 1000, "endPort": 2999}],
                },
            ],
        },
    }


def test_agent_killed_during_a_large_apply_then_rebooted(
    live: Live, control_plane: TestControlPlane, tmp_path: Path
) -> None:
    """Catches: a saved file that a kill during the write leaves truncated (the restart after
    the reboot would then load nothing), and an agent that loads a partial ruleset."""
    proxy = Proxy(("127.0.0.1", int(control_plane.url.rsplit(":", 1)[1])))
    kubeconfig = proxied_kubeconfig(control_plane, proxy, tmp_path / "proxied")
    try:
        n1, _ = start(live, kubeconfig)
        agent = f"agent-{n1}"
        with Monitor(live, probes_of(live), [True, False, True, True]) as mon:
            # (b) OOM: killed -9 while it receives, renders, applies or saves a large policy.
            generation = noderules_generation(live, n1)
            live.apply_policy(live.ns, large_a_from_b(live.ns))
            deadline = time.monotonic() + CONVERGENCE * 6
            while noderules_generation(live, n1) == generation:
                assert time.monotonic() < deadline, "the operator did not publish the change"
                time.sleep(0.01)
            time.sleep(0.3)  # into the render / apply / save of ~20,000 intervals
            live.kill(agent, signal.SIGKILL)
            saved = saved_ruleset.load(state_dir(live, n1), n1)  # intact: old or new
            assert saved is not None and saved.generation in (generation, generation + 1)
            mon.hold(2.0)
            down = mon.expect(
                [True, False, True, True], math.inf, "reboot", transient=ONLY_C_TO_A_DENIED
            )
            offset = len(live.log(agent))
            up = reboot(live, n1, proxy, kubeconfig)
            wait_log(live, agent, "loading the saved ruleset", offset, timeout=1)
            down.bound = up - down.since + 2.0
            mon.hold(3.0)
            proxy.release()
            wait_log(live, agent, "applied generation", offset, API_RESUME_BOUND * 3)
            mon.settle()
            saved = saved_ruleset.load(state_dir(live, n1), n1)
            assert saved is not None and saved.generation == noderules_generation(live, n1)
            mon.assert_ok()
    finally:
        proxy.close()


def test_an_unusable_saved_file_drops_until_the_first_sync(
    live: Live, control_plane: TestControlPlane, tmp_path: Path
) -> None:
    """Catches: an agent that treats a corrupt file like no file (nothing enforced after the
    reboot: c->a would pass) or crashes on it."""
    proxy = Proxy(("127.0.0.1", int(control_plane.url.rsplit(":", 1)[1])))
    kubeconfig = proxied_kubeconfig(control_plane, proxy, tmp_path / "proxied")
    try:
        n1, _ = start(live, kubeconfig)
        agent = f"agent-{n1}"
        file = saved_ruleset.path(state_dir(live, n1), n1)
        with Monitor(live, probes_of(live), [True, False, True, True]) as mon:
            mon.hold(1.0)
            phase = mon.expect(
                [False, False, False, False], math.inf, "reboot", transient=ONLY_C_TO_A_DENIED
            )
            live.kill(agent, signal.SIGKILL)
            file.write_bytes(file.read_bytes()[:-10])  # a damaged disk
            offset = len(live.log(agent))
            up = reboot(live, n1, proxy, kubeconfig)
            wait_log(live, agent, "saved ruleset is unusable", offset, timeout=1)
            phase.bound = up - phase.since + 2.0  # everything through n1 dropped, not allowed
            mon.hold(4.0)
            back = mon.expect([True, False, True, True], API_RESUME_BOUND, "API back")
            proxy.release()
            print(f"unusable file: enforced {mon.wait(back):.2f} s after the API came back")
            mon.assert_ok()
    finally:
        proxy.close()


def test_changes_behind_the_agents_back_are_repaired_within_2s(live: Live) -> None:
    """Catches: a drift check that only notices missing chains (an inserted accept rule or a
    flushed verdict map opened c->a until the next full resync)."""
    n1, _ = node_names(live)
    netns = live.net.node_netns(n1)
    live.start_operator(log_level="info")
    for node in node_names(live):
        live.start_agent(node, log_level="info")
    enforce_a_from_b(live, probes_of(live), [True, False, True, True])
    before = table_state(netns)
    with Monitor(live, probes_of(live), [True, False, True, True]) as mon:
        mon.hold(1.0)
        for what, command in (
            (
                "an accept rule inserted",
                ["nft", "insert", "rule", "inet", "nftpolicy", "forward", "accept"],
            ),
            (
                "the ingress verdict map flushed",
                ["nft", "flush", "map", "inet", "nftpolicy", "in4"],
            ),
        ):
            mon.expect([True, False, True, True], REPAIR_BOUND + 0.5, what, transient=[EITHER] * 4)
            seen = live.log(f"agent-{n1}").count("behind our back")
            changed = time.monotonic()
            live.net.run_in(netns, command)
            # (The agent may repair it before a listing here could show the change: the
            # repair count below proves that the change happened and was seen.)
            while table_state(netns) != before and time.monotonic() - changed < 10:
                time.sleep(0.01)
            took = time.monotonic() - changed
            assert table_state(netns) == before, f"{what}: not restored"
            assert took <= REPAIR_BOUND, f"{what}: restored only after {took:.2f} s"
            eventually(
                lambda seen=seen: live.log(f"agent-{n1}").count("behind our back") == seen + 1,
                5,
                f"{what}: one repair logged",
            )
            print(f"{what}: restored after {took:.2f} s")
            mon.settle(2)
        # Packets counted by the rules are no change: no repair while probing.
        repairs = live.log(f"agent-{n1}").count("behind our back")
        mon.hold(3.0)
        assert live.log(f"agent-{n1}").count("behind our back") == repairs
        mon.assert_ok()
