"""An agent whose connection to the API server stops forwarding, or whose watches miss
deletions across an expired resourceVersion (410), with real packets.

One agent talks to the API server through ``Proxy``, a TCP proxy on 127.0.0.1 that can stop
forwarding while keeping every connection open (what a dead load balancer or a half-open
session looks like to the client), or hold back only what the agent sends.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from controller.agent.agent import AgentConfig
from controller.compiler.ir import AddressGroup, CompiledPolicy, LocalPod, NodeRules, Rule
from controller.kube import timeouts
from controller.model import Direction
from controller.resources import (
    ADDRESS_GROUPS,
    GROUP,
    NODE_RULES,
    VERSION,
    group_body,
    node_rules_body,
)
from controller.testing.apiserver import TestControlPlane, find_binaries
from controller.testing.netns import NetnsCluster, Probe
from tests.integration.live import Live, install_crds, two_nodes
from tests.integration.proxy import Proxy, free_port, health, proxied_kubeconfig

pytestmark = pytest.mark.integration

A, B, C, D = "10.101.0.10", "10.102.0.11", "10.101.0.12", "10.102.0.13"
DEFAULTS = AgentConfig(node="")
SLACK = 30.0  # a loaded machine: a deadline, never a measured bound


def wait_until(check: Any, timeout: float, what: str, live: Live) -> float:
    """Poll ``check()`` until true; returns when (monotonic). Fails with the processes' logs."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{live.log(n)[-4000:]}" for n in live.processes)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(0.2)
    return time.monotonic()


def noderules(live: Live, node: str) -> dict[str, Any]:
    return cast(
        dict[str, Any], live.custom.get_cluster_custom_object(GROUP, VERSION, NODE_RULES, node)
    )


def applied(live: Live, node: str) -> int | None:
    value = (noderules(live, node).get("status") or {}).get("appliedGeneration")
    return None if value is None else int(value)


# ---- a connection that stops forwarding -------------------------------------------------------


@pytest.fixture
def live(
    control_plane: TestControlPlane, netns_cluster: NetnsCluster, tmp_path: Path
) -> Iterator[Live]:
    pods = [("a", 1, A, {"app": "a"}), ("b", 2, B, {"app": "b"}), ("c", 1, C, {"app": "c"})]
    with two_nodes(control_plane, netns_cluster, tmp_path, pods) as live:
        yield live


def only_from(name: str, target: str, source: str, ns: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": {"app": target}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": source}}}]}],
        },
    }


def test_an_agent_behind_a_silent_connection_notices_reports_and_recovers(
    live: Live, control_plane: TestControlPlane, tmp_path: Path
) -> None:
    """Catches: watches and lists without client-side timeouts (the agent waited on a dead
    connection for minutes, on an old generation, while /healthz said ok), and an agent that
    does not converge once the connection forwards again."""
    ns, n1 = live.ns, f"{live.ns}-n1"
    agent, port = f"agent-{n1}", free_port()
    proxy = Proxy(("127.0.0.1", int(control_plane.url.rsplit(":", 1)[1])))
    try:
        live.start_operator()
        live.start_agent(
            n1,
            kubeconfig=proxied_kubeconfig(control_plane, proxy, tmp_path / "proxied"),
            metrics_port=port,
        )
        probes = [Probe(f"{ns}/b", A, 80), Probe(f"{ns}/c", A, 80), Probe(f"{ns}/a", C, 80)]
        live.apply_policy(ns, only_from("a-from-b", "a", "b", ns))
        live.wait_for(probes, [True, False, True], timeout=SLACK)
        wait_until(lambda: health(port, "/readyz")[0] == 200, SLACK, "the agent ready", live)
        wait_until(
            lambda: applied(live, n1) == noderules(live, n1)["metadata"]["generation"],
            SLACK,
            "the first status",
            live,
        )
        old = applied(live, n1)
        assert health(port) == (200, "ok\n")

        offset = len(live.log(agent))
        proxy.freeze()
        frozen = time.monotonic()
        live.apply_policy(ns, only_from("c-from-b", "c", "b", ns))  # isolates c, on n1
        wait_until(
            lambda: noderules(live, n1)["metadata"]["generation"] != old,
            SLACK,
            "the operator to publish",
            live,
        )
        # The agent cannot see the change, but it notices that it cannot see anything ...
        noticed = wait_until(
            lambda: "cannot reach the API server" in live.log(agent)[offset:],
            timeouts.WATCH_READ + SLACK,
            "the agent to notice the silence",
            live,
        )
        assert live.net.probe_many(probes, 0.5) == [True, False, True]  # the old rules hold
        assert applied(live, n1) == old
        # ... and says so on /healthz once its own re-listing did not help either.
        unhealthy = wait_until(
            lambda: health(port)[0] == 503,
            DEFAULTS.stale_after + SLACK,
            "/healthz to fail",
            live,
        )
        status, body = health(port)
        assert status == 503, body
        assert re.match(
            r"watch: \S+: not listed or watched anything for \d+ s \(last error: ", body
        )
        assert len(body.splitlines()) == 1, body
        assert live.net.probe_many(probes, 0.5) == [True, False, True]
        print(
            f"frozen: the agent noticed after {noticed - frozen:.1f} s, /healthz failed after "
            f"{unhealthy - frozen:.1f} s: {body.strip()}"
        )

        proxy.release()
        released = time.monotonic()
        took = live.wait_for(probes, [True, False, False], timeout=SLACK)
        wait_until(
            lambda: applied(live, n1) == noderules(live, n1)["metadata"]["generation"],
            SLACK,
            "the status of the new generation",
            live,
        )
        healthy = wait_until(lambda: health(port) == (200, "ok\n"), SLACK, "/healthz ok", live)
        assert "reachable again" in live.log(agent)[offset:]
        print(
            f"released: enforced after {took:.1f} s, /healthz ok after {healthy - released:.1f} s"
        )
    finally:
        proxy.close()


# ---- deletions missed across an expired resourceVersion -------------------------------------


@pytest.fixture(scope="module")
def plane_without_watch_cache() -> Iterator[TestControlPlane]:
    """A control plane whose watches come straight from etcd, so compacting etcd expires a
    resourceVersion for sure (the watch cache keeps its own window)."""
    with TestControlPlane(find_binaries(), extra_apiserver_args=["--watch-cache=false"]) as plane:
        install_crds(plane)
        yield plane


def etcd(plane: TestControlPlane, call: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{plane.etcd_url}/v3/{call}", json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return cast(dict[str, Any], json.loads(r.read()))


def expire_versions(live: Live) -> None:
    """One more write, then compact etcd up to now: every older resourceVersion is gone."""
    live.core.patch_namespace(live.ns, {"metadata": {"labels": {"bump": str(time.time_ns())}}})
    key = base64.b64encode(b"/").decode()
    revision = etcd(live.plane, "kv/range", {"key": key, "limit": 1})["header"]["revision"]
    etcd(live.plane, "kv/compaction", {"revision": revision, "physical": True})


def publish(live: Live, rules: NodeRules, groups: list[AddressGroup]) -> None:
    for group in groups:
        live.custom.create_cluster_custom_object(
            GROUP, VERSION, ADDRESS_GROUPS, group_body(group, [rules.node])
        )
    live.custom.create_cluster_custom_object(GROUP, VERSION, NODE_RULES, node_rules_body(rules))


def while_the_watches_are_away(live: Live, proxy: Proxy, change: Any) -> None:
    """Hold the agent's requests until both watches ended (the server ends each after
    WATCH_SERVER seconds) and asked to resume; ``change()``; expire their versions; release:
    both resume from a version that is gone (410) and list again. The agent's status must be
    written already: its watches are then the only requests it makes."""
    proxy.hold_requests()
    wait_until(
        lambda: proxy.holding() >= 2,
        timeouts.WATCH_SERVER + SLACK,
        "both watches to ask to resume",
        live,
    )
    change()
    expire_versions(live)
    proxy.release()


def test_deletions_missed_across_a_410_are_forgotten(
    plane_without_watch_cache: TestControlPlane, netns_cluster: NetnsCluster, tmp_path: Path
) -> None:
    """Catches: a re-list that keeps objects it no longer lists, and an agent that, having
    forgotten a group its rules need, keeps the old table (which still admits the group's
    peers) for as long as the group is missing instead of enforcing it as empty."""
    plane = plane_without_watch_cache
    live = Live(plane, netns_cluster, tmp_path)
    proxy = Proxy(("127.0.0.1", int(plane.url.rsplit(":", 1)[1])))
    try:
        n1, n2 = f"{live.ns}-n1", f"{live.ns}-n2"
        live.add_node(n1, 1)
        live.add_node(n2, 2)
        live.add_namespace(live.ns)
        for name, node, ip in (("a", n1, A), ("b", n2, B), ("c", n1, C), ("d", n2, D)):
            live.add_pod(live.ns, name, node, ip, {"app": name})
        netns_cluster.wait_ready()
        ns = live.ns
        g_b = AddressGroup(f"{live.ns}-b", "pod b", frozenset({ipaddress.ip_address(B)}))
        g_c = AddressGroup(f"{live.ns}-c", "pod c", frozenset({ipaddress.ip_address(C)}))
        rules = NodeRules(
            node=n1,
            pods=(LocalPod(f"{ns}/a", (ipaddress.ip_address(A),)),),
            policies=(
                CompiledPolicy(
                    f"{ns}/a-in",
                    (f"{ns}/a",),
                    frozenset({Direction.INGRESS}),
                    ingress=(Rule(peers=(g_b.name, g_c.name)),),
                ),
            ),
        )
        publish(live, rules, [g_b, g_c])
        agent = f"agent-{n1}"
        live.start_agent(n1, kubeconfig=proxied_kubeconfig(plane, proxy, tmp_path / "proxied"))
        probes = [Probe(f"{ns}/b", A, 80), Probe(f"{ns}/c", A, 80), Probe(f"{ns}/d", A, 80)]
        live.wait_for(probes, [True, True, False], timeout=SLACK)
        wait_until(lambda: applied(live, n1) == 1, SLACK, "the agent's status", live)

        # 1. A group deleted while the watches are away: forgotten, and enforced as empty.
        offset = len(live.log(agent))
        while_the_watches_are_away(
            live,
            proxy,
            lambda: live.custom.delete_cluster_custom_object(
                GROUP, VERSION, ADDRESS_GROUPS, g_b.name
            ),
        )
        took = live.wait_for(probes, [False, True, False], timeout=SLACK)
        log = live.log(agent)[offset:]
        assert "addressgroups: watch version expired, listing again" in log, log[-3000:]
        assert f"groups {g_b.name} missing" in log
        assert g_b.name in noderules(live, n1)["status"]["error"]
        print(f"a group deleted across a 410: enforced as empty {took:.1f} s after the release")
        live.custom.create_cluster_custom_object(
            GROUP, VERSION, ADDRESS_GROUPS, group_body(g_b, [n1])
        )
        live.wait_for(probes, [True, True, False], timeout=SLACK)
        wait_until(lambda: noderules(live, n1)["status"]["error"] == "", SLACK, "no error", live)

        # 2. The NodeRules deleted while the watches are away: forgotten (the node keeps its
        # last table, as when the operator deletes a node's rules); rules published again
        # afterwards, as a new object, are applied and reported on it.
        offset = len(live.log(agent))
        while_the_watches_are_away(
            live,
            proxy,
            lambda: live.custom.delete_cluster_custom_object(GROUP, VERSION, NODE_RULES, n1),
        )
        wait_until(
            lambda: "no NodeRules for this node" in live.log(agent)[offset:],
            SLACK,
            "the agent to forget its NodeRules",
            live,
        )
        assert f"noderules/{n1}: watch version expired" in live.log(agent)[offset:]
        assert live.net.probe_many(probes, 0.5) == [True, True, False]
        live.custom.create_cluster_custom_object(
            GROUP, VERSION, NODE_RULES, node_rules_body(NodeRules(node=n1))
        )
        live.wait_for(probes, [True, True, True], timeout=SLACK)
        wait_until(lambda: applied(live, n1) == 1, SLACK, "the new object's status", live)
    finally:
        proxy.close()
        live.close()
