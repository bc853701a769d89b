"""Uninstall versus restart (issue 9): SIGTERM removes the node's table and saved ruleset only
when the agent's own DaemonSet was deleted (``controller/agent/uninstall.py``).

A DaemonSet object stands in for the chart's (no kubelet or controller runs it: the agents are
started by the test with ``--daemonset``). Real agents, real nftables, real packets: c -> a is
denied by a-from-b while the table is in force, and passes once uninstall removed it.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import pytest
from kubernetes import client

from controller.agent import saved_ruleset
from tests.integration import test_failures
from tests.integration.live import Live
from tests.integration.test_failures import (
    enforce_a_from_b,
    node_names,
    table_state,
    wait_log,
)
from tests.integration.test_survive_node import probes_of

pytestmark = pytest.mark.integration
live = pytest.fixture(test_failures.live.__wrapped__)  # type: ignore[attr-defined]

DAEMONSET = "nftpolicy-agent"
STOP_BOUND = 10.0  # SIGTERM -> exited (the chart's grace period is longer)


def create_daemonset(live: Live) -> None:
    labels = {"app": DAEMONSET}
    body: dict[str, Any] = {
        "metadata": {"name": DAEMONSET},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "agent", "image": "nftpolicy"}]},
            },
        },
    }
    client.AppsV1Api(live.api).create_namespaced_daemon_set(live.ns, body)


def start_agent(live: Live, node: str) -> int:
    """``node``'s agent with ``--daemonset``; returns its log offset."""
    name = f"agent-{node}"
    offset = len(live.log(name)) if (live.logs / f"{name}.log").exists() else 0
    live.start_agent(node, log_level="info", extra_args=["--daemonset", f"{live.ns}/{DAEMONSET}"])
    return offset


def terminate(live: Live, node: str) -> int:
    """SIGTERM ``node``'s agent as the kubelet does; its exit code."""
    proc = live.processes.pop(f"agent-{node}")
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(STOP_BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the agent did not exit within {STOP_BOUND} s of SIGTERM") from None


def test_sigterm_keeps_the_table_unless_the_daemonset_was_deleted(live: Live) -> None:
    """Catches: an agent that removes its table on every stop (a rolling update would leave
    the node open), and one that never does (helm uninstall leaves every node enforcing a
    frozen ruleset, reloaded at each reboot)."""
    n1, n2 = node_names(live)
    netns = live.net.node_netns(n1)
    saved = saved_ruleset.path(live.state_dir(n1), n1)
    probes = probes_of(live)  # b -> a allowed, c -> a denied (n1), a -> b, a -> c
    create_daemonset(live)
    live.start_operator(log_level="info")
    live.start_agent(n2, log_level="info")
    offset = start_agent(live, n1)
    enforce_a_from_b(live, probes, [True, False, True, True])
    name = f"agent-{n1}"
    wait_log(live, name, "a stop keeps the table unless it is deleted", offset)
    assert saved.exists()

    # (1) a restart (rolling update, pod deletion, drain): the DaemonSet is there
    assert terminate(live, n1) == 0
    log = live.log(name)[offset:]
    assert "keeping the table and saved ruleset" in log and "is there" in log, log
    assert "uninstalled" not in log, log
    assert table_state(netns) is not None, "a restart removed the table"
    assert saved.exists(), "a restart removed the saved ruleset"
    live.wait_for(probes, [True, False, True, True], timeout=2)  # enforced with no agent

    # (2) an uninstall: the DaemonSet is deleted, then its pods get SIGTERM
    offset = start_agent(live, n1)
    wait_log(live, name, "a stop keeps the table unless it is deleted", offset, timeout=30)
    client.AppsV1Api(live.api).delete_namespaced_daemon_set(DAEMONSET, live.ns)
    wait_log(live, name, "stopping this agent will remove the table", offset)
    assert table_state(netns) is not None  # nothing happens before the stop
    assert terminate(live, n1) == 0
    log = live.log(name)[offset:]
    assert "uninstalled: table inet nftpolicy removed, saved ruleset removed" in log, log
    assert table_state(netns) is None, f"the table survived the uninstall\n{log[-3000:]}"
    assert not saved.exists(), "the saved ruleset survived the uninstall"
    live.wait_for(probes, [True, True, True, True], timeout=2)  # nothing enforces on n1


def test_a_daemonset_never_seen_keeps_the_table(live: Live) -> None:
    """Catches: an agent that takes "cannot see the DaemonSet" for "the DaemonSet is gone".
    Here the DaemonSet never existed: the watch lists nothing, so a stop keeps the table and
    the log says how to remove it by hand."""
    n1, n2 = node_names(live)
    live.start_operator(log_level="info")
    live.start_agent(n2, log_level="info")
    offset = start_agent(live, n1)
    name = f"agent-{n1}"
    wait_log(live, name, "applied generation", offset, timeout=30)
    wait_log(live, name, "was never seen (wrong --daemonset?)", offset)
    assert terminate(live, n1) == 0
    log = live.log(name)[offset:]
    assert "if this is an uninstall, remove the rules by hand on this node: nft delete" in log
    assert str(saved_ruleset.path(live.state_dir(n1), n1)) in log, log
    assert table_state(live.net.node_netns(n1)) is not None
