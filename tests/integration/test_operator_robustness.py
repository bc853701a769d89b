"""The operator against a real API server when single objects or the connection misbehave:
a write the API server always refuses, our objects deleted or edited by hand, a deletion
missed across a re-list, a lease call that hangs, and steady state (no writes at all).

Operators run as real processes (``tests/integration/live.py``); deadlines are generous and
polled (the machine is shared), never measured bounds.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from controller.resources import ADDRESS_GROUPS, GROUP, NODE_RULES, VERSION
from controller.testing.apiserver import TestControlPlane
from controller.testing.netns import NetnsCluster, Probe
from tests.integration.live import (
    Live,
    enforced_events,
    install_crds,
    scrape,
    start_operator_with,
)

# The agent robustness tests' TCP proxy (forwards, or freezes every connection).
from tests.integration.proxy import Proxy, free_port, health, proxied_kubeconfig

pytestmark = pytest.mark.integration

A, B, C = "10.101.0.10", "10.102.0.11", "10.102.0.12"
SLACK = 30.0  # a deadline on a loaded machine, never a measured bound
REPAIR = 10.0  # an object of ours deleted or edited by hand is back within this
BLOCKED = "198.51.100.0/24"  # the ValidatingAdmissionPolicy below refuses groups of this peer
M = "nftpolicy_operator_"


@pytest.fixture
def live(
    control_plane: TestControlPlane, netns_cluster: NetnsCluster, tmp_path: Path
) -> Iterator[Live]:
    """Nodes n1 (pod a) and n2 (pods b, c); nothing running yet."""
    install_crds(control_plane)
    live = Live(control_plane, netns_cluster, tmp_path)
    try:
        n1, n2 = nodes(live)
        live.add_node(n1, 1)
        live.add_node(n2, 2)
        live.add_namespace(live.ns)
        live.add_pod(live.ns, "a", n1, A, {"app": "a"})
        live.add_pod(live.ns, "b", n2, B, {"app": "b"})
        live.add_pod(live.ns, "c", n2, C, {"app": "c"})
        netns_cluster.wait_ready()
        yield live
    finally:
        live.close()
        if not control_plane.readyz():
            control_plane.restart_apiserver()


def nodes(live: Live) -> tuple[str, str]:
    return f"{live.ns}-n1", f"{live.ns}-n2"


def allow(name: str, target: str, peer: dict[str, Any], ns: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"app": target}}, "ingress": [{"from": [peer]}]},
    }


def app(label: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {"app": label}}}


def get(live: Live, plural: str, name: str) -> dict[str, Any] | None:
    try:
        return cast(
            dict[str, Any], live.custom.get_cluster_custom_object(GROUP, VERSION, plural, name)
        )
    except client.exceptions.ApiException as e:
        if e.status == 404:
            return None
        raise


def policies_on(live: Live, node: str) -> set[str]:
    rules = get(live, NODE_RULES, node)
    return {p["key"] for p in (rules or {}).get("spec", {}).get("policies", ())}


def groups(live: Live) -> dict[str, dict[str, Any]]:
    result = live.custom.list_cluster_custom_object(GROUP, VERSION, ADDRESS_GROUPS)
    return {g["metadata"]["name"]: g for g in cast(dict[str, Any], result)["items"]}


def group_of(live: Live, peer_text: str) -> dict[str, Any] | None:
    return next((g for g in groups(live).values() if peer_text in g["spec"]["peer"]), None)


def snapshot(live: Live) -> dict[tuple[str, str], str]:
    """Every object of ours -> resourceVersion."""
    out = {}
    for plural in (ADDRESS_GROUPS, NODE_RULES):
        result = cast(
            dict[str, Any], live.custom.list_cluster_custom_object(GROUP, VERSION, plural)
        )
        for item in result["items"]:
            out[(plural, item["metadata"]["name"])] = item["metadata"]["resourceVersion"]
    return out


def wait(check: Any, timeout: float, what: str, live: Live) -> float:
    """Poll until ``check()``; returns the seconds it took. Fails with the processes' logs."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            logs = "\n".join(f"--- {n}\n{live.log(n)[-5000:]}" for n in live.processes)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(0.1)
    return time.monotonic() - start


def wait_leading(live: Live, name: str = "operator") -> None:
    wait(lambda: "leading:" in live.log(name), SLACK, f"{name} to lead", live)


def assert_no_writes(live: Live, port: int, seconds: float) -> None:
    """Steady state: neither our objects nor the operator's write counters move. The baseline
    is taken once the operator has no write pending: a write lands in the API server a step
    before the operator counts its outcome."""
    wait(lambda: scrape(port)[M + "pending_writes"] == 0, SLACK, "no pending writes", live)
    before, counted = snapshot(live), scrape(port)[M + "writes_total"]
    time.sleep(seconds)
    assert snapshot(live) == before, "objects written in steady state"
    assert scrape(port)[M + "writes_total"] == counted


# ---- (a) a write the API server always refuses --------------------------------------------------


def refuse_blocked_groups(live: Live) -> None:
    """A ValidatingAdmissionPolicy that refuses AddressGroups of the BLOCKED peer (what a
    webhook, a quota or an object over etcd's size limit does to one write)."""
    admission = client.AdmissionregistrationV1Api(live.api)
    admission.create_validating_admission_policy(
        {
            "metadata": {"name": f"{live.ns}-refuse"},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [GROUP],
                            "apiVersions": ["*"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": [ADDRESS_GROUPS],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": f"!object.spec.peer.contains('{BLOCKED}')",
                        "message": f"groups of {BLOCKED} are refused here",
                        "reason": "Forbidden",
                    }
                ],
            },
        }
    )
    admission.create_validating_admission_policy_binding(
        {
            "metadata": {"name": f"{live.ns}-refuse"},
            "spec": {"policyName": f"{live.ns}-refuse", "validationActions": ["Deny"]},
        }
    )

    def refused() -> bool:  # the API server loads admission policies asynchronously
        probe = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AddressGroup",
            "metadata": {"name": f"{live.ns}-probe"},
            "spec": {"peer": f"ipBlock {BLOCKED}"},
        }
        try:
            live.custom.create_cluster_custom_object(
                GROUP, VERSION, ADDRESS_GROUPS, probe, dry_run="All"
            )
        except client.exceptions.ApiException as e:
            return e.status in (403, 422)
        return False

    wait(refused, SLACK, "the admission policy to take effect", live)


def test_a_refused_write_is_retried_alone_and_reported(live: Live) -> None:
    """Catches: a publisher that stops at the first failed write (the unrelated policy would
    never be published), retries without backoff (hundreds of attempts), keeps quiet about
    it, or never recovers once the API server accepts the object again."""
    ns = live.ns
    n1, n2 = nodes(live)
    refuse_blocked_groups(live)
    admission = client.AdmissionregistrationV1Api(live.api)
    try:
        port = free_port()
        start_operator_with(live, "operator", metrics_port=port)
        wait_leading(live)
        live.apply_policy(ns, allow("blocked", "a", {"ipBlock": {"cidr": BLOCKED}}, ns))
        refused = re.compile(r"create addressgroups/\S+ failed")
        wait(lambda: refused.search(live.log("operator")), SLACK, "the refused create", live)
        live.apply_policy(ns, allow("b-from-c", "b", app("c"), ns))
        took = wait(lambda: f"{ns}/b-from-c" in policies_on(live, n2), SLACK, "b-from-c", live)
        print(f"an unrelated policy published {took:.1f} s after its write, despite the refusal")
        assert f"{ns}/blocked" not in policies_on(live, n1)  # its group is missing: held back
        assert group_of(live, BLOCKED) is None

        # retried alone, with backoff: a handful of attempts in 20 s, not one per cycle
        first = scrape(port)[M + "write_failures_total"]
        time.sleep(20)
        attempts = scrape(port)[M + "write_failures_total"] - first
        assert 1 <= attempts <= 8, f"{attempts} attempts in 20 s"
        assert scrape(port)[M + "write_failures_forbidden_total"] >= attempts
        log = live.log("operator").splitlines()
        warned = [line for line in log if " WARNING " in line and refused.search(line)]
        assert len(warned) == 1, warned  # logged once per failure streak
        events = [e for e in live.events(ns, "blocked") if e.startswith("PublishFailed")]
        assert len(events) == 1 and "refused here" in events[0], live.events(ns, "blocked")
        print(f"{attempts:.0f} attempts in 20 s; event: {events[0]}")

        # past the grace (60 s) /readyz names the write; /healthz stays ok: a restart would
        # not make the API server accept it
        def unready() -> bool:
            status, body = health(port, "/readyz")
            return status == 503 and "writes: create addressgroups/" in body

        wait(unready, 60 + SLACK, "/readyz to report the failing write", live)
        assert health(port, "/healthz") == (200, "ok\n")
        print(f"/readyz: {health(port, '/readyz')[1].strip()}")

        # accepted again: the group goes out at its next retry, then n1's rules
        admission.delete_validating_admission_policy_binding(f"{ns}-refuse")
        took = wait(lambda: f"{ns}/blocked" in policies_on(live, n1), 45, "recovery", live)
        assert group_of(live, BLOCKED) is not None
        assert "succeeded after" in live.log("operator")
        assert health(port, "/readyz") == (200, "ok\n")
        print(f"published {took:.1f} s after the admission policy went")
        assert_no_writes(live, port, 3.0)
    finally:
        for delete in (
            admission.delete_validating_admission_policy_binding,
            admission.delete_validating_admission_policy,
        ):
            try:
                delete(f"{ns}-refuse")
            except client.exceptions.ApiException as e:
                if e.status != 404:
                    raise


# ---- (b) our objects deleted or edited by hand --------------------------------------------------


def test_objects_deleted_or_edited_by_hand_are_restored(live: Live) -> None:
    """Catches: an operator whose idea of what is published only changes when it writes
    (a deleted NodeRules would stay missing, then fail every replace with 404 and hold up
    every other write), and echoes of its own writes that cause writes (flapping)."""
    ns = live.ns
    n1, n2 = nodes(live)
    port = free_port()
    start_operator_with(live, "operator", metrics_port=port)
    wait_leading(live)
    live.apply_policy(ns, allow("a-from-b", "a", app("b"), ns))
    wait(lambda: f"{ns}/a-from-b" in policies_on(live, n1), SLACK, "a-from-b", live)
    wait(lambda: group_of(live, "app=b") is not None, SLACK, "its group", live)
    time.sleep(1.0)
    assert_no_writes(live, port, 3.0)
    wanted = {k: get(live, *k) for k in snapshot(live)}

    def essence(body: dict[str, Any] | None) -> Any:  # (nulls aside: a create keeps them)
        if body is None:
            return None
        spec = body["spec"]
        if "policies" in spec:  # NodeRules: its pods, and which policies with which peers
            rules = [(p["key"], [r.get("peers") for r in p["ingress"]]) for p in spec["policies"]]
            return body["metadata"]["labels"], spec["pods"], rules
        return body["metadata"]["labels"], spec["peer"], spec.get("addresses")

    def restored(plural: str, name: str) -> bool:
        return essence(get(live, plural, name)) == essence(wanted[(plural, name)])

    # kubectl delete nr <node>: back within seconds, and other nodes' updates keep flowing
    live.plane.kubectl("delete", "nr", n1)
    live.apply_policy(ns, allow("b-from-c", "b", app("c"), ns))
    took = wait(lambda: restored(NODE_RULES, n1), REPAIR, "the NodeRules back", live)
    wait(lambda: f"{ns}/b-from-c" in policies_on(live, n2), SLACK, "n2's update", live)
    print(f"deleted NodeRules restored after {took:.1f} s")

    # kubectl delete ag <group>
    group = group_of(live, "app=b")
    assert group is not None
    name = group["metadata"]["name"]
    live.plane.kubectl("delete", "ag", name)
    took = wait(lambda: restored(ADDRESS_GROUPS, name), REPAIR, "the group back", live)
    print(f"deleted AddressGroup restored after {took:.1f} s")

    # a hand-edited NodeRules spec (and a label dropped) is corrected
    live.plane.kubectl("patch", "nr", n1, "--type=merge", "-p", '{"spec": {"policies": []}}')
    took = wait(lambda: restored(NODE_RULES, n1), REPAIR, "the spec corrected", live)
    live.plane.kubectl("label", "ag", name, "app.kubernetes.io/managed-by-")
    wait(lambda: restored(ADDRESS_GROUPS, name), REPAIR, "the labels corrected", live)
    print(f"hand-edited NodeRules corrected after {took:.1f} s")
    assert scrape(port)[M + "repairs_total"] >= 4
    time.sleep(1.0)
    assert_no_writes(live, port, 5.0)


# ---- (c) a deletion missed across a re-list -----------------------------------------------------


def test_a_deletion_missed_across_a_relist_is_forgotten(
    live: Live, control_plane: TestControlPlane
) -> None:
    """Catches: an operator that keeps a pod kopf's re-list no longer shows (no DELETED event
    comes for it): the pod's IP stays in its AddressGroup and its allowances keep admitting
    whatever sends from that address."""
    ns = live.ns
    n1, n2 = nodes(live)
    port = free_port()
    start_operator_with(live, "operator", metrics_port=port)
    for node in (n1, n2):
        live.start_agent(node)
    wait_leading(live)
    live.apply_policy(ns, allow("a-from-b", "a", app("b"), ns))
    probes = [Probe(f"{ns}/b", A, 80), Probe(f"{ns}/c", A, 80)]
    live.wait_for(probes, [True, False], timeout=SLACK)
    uid = live.networking.read_namespaced_network_policy("a-from-b", ns).metadata.uid
    wait(lambda: enforced_events(live, ns, uid) == 1, SLACK, "the Enforced event", live)
    offset = len(live.log("operator"))

    # The operator sees nothing while the API server restarts (its watches break) and pod
    # b's object is deleted; b's network namespace stays, still sending from B.
    operator = live.processes["operator"]
    os.kill(operator.pid, signal.SIGSTOP)
    try:
        control_plane.restart_apiserver()
        live.core.delete_namespaced_pod("b", ns, grace_period_seconds=0)
    finally:
        os.kill(operator.pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait(
        lambda: B not in str((group_of(live, "app=b") or {}).get("spec")),
        SLACK,
        "b's address to leave its group",
        live,
    )
    took = live.wait_for(probes, [False, False], timeout=SLACK)
    log = live.log("operator")[offset:]
    assert re.search(
        r"reconcile \(kopf listed again\):.*Pod \d+ listed, \d+ updated, 1 forgotten", log
    ), log[-4000:]
    assert scrape(port)[M + "reconcile_corrections_total"] >= 1
    print(
        f"b forgotten and its allowance gone {time.monotonic() - resumed:.1f} s after the "
        f"operator resumed (probes {took:.1f} s)"
    )


# ---- (d) a lease call that hangs ----------------------------------------------------------------


def test_a_leader_whose_connection_hangs_stops_publishing(
    live: Live, control_plane: TestControlPlane, tmp_path: Path
) -> None:
    """Catches: lease calls without a timeout (a leader behind a dead connection would go on
    believing it leads, and write whatever it had in flight, while a standby takes over)."""
    ns = live.ns
    n1, _ = nodes(live)
    proxy = Proxy(("127.0.0.1", int(control_plane.url.rsplit(":", 1)[1])))
    try:
        port = free_port()
        kubeconfig = proxied_kubeconfig(control_plane, proxy, tmp_path / "proxied")
        start_operator_with(live, "op-a", metrics_port=port, kubeconfig=kubeconfig)
        wait_leading(live, "op-a")
        start_operator_with(live, "op-b")
        wait(lambda: "initial listing complete" in live.log("op-b"), SLACK, "the standby", live)
        time.sleep(2.0)

        proxy.freeze()
        frozen = time.monotonic()
        took = wait(lambda: scrape(port)[M + "leader"] == 0, 20.0, "op-a to stop leading", live)
        assert "not leading any more" in live.log("op-a")
        assert took <= 10.0 + 5.0, f"stopped leading only {took:.1f} s after the freeze"
        print(f"leader behind a frozen connection stopped publishing after {took:.1f} s")

        # the standby takes over once the lease expires, and publishes a change
        live.apply_policy(ns, allow("a-from-b", "a", app("b"), ns))
        wait(lambda: f"{ns}/a-from-b" in policies_on(live, n1), 15 + SLACK, "takeover", live)
        print(f"standby published {time.monotonic() - frozen:.1f} s after the freeze")
        proxy.release()
        time.sleep(5.0)
        assert scrape(port)[M + "leader"] == 0  # the lease is op-b's now
        assert "leading:" not in live.log("op-a").split("not leading any more", 1)[1]
    finally:
        proxy.close()
