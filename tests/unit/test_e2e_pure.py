"""The pure parts of the kind e2e suite (e2e/): kind config, manifests, probes, expectations.

The suite itself only runs in GitHub Actions (docker + kind); these run everywhere, and also
prove that e2e/ imports without kind, docker or pytest-kind.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import fail_closed, install, kind_config, netpol, providers
from tests.netpol_upstream import model
from tests.netpol_upstream.cases import (
    CASES,
    SKIPPED_SCTP,
    ApplyPolicy,
    DeletePolicy,
    SetNamespaceLabels,
    SetPodLabels,
    case_by_name,
)
from tests.netpol_upstream.model import ALL_PODS, Addresses, Reachability

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ["nftpolicy-e2e-worker", "nftpolicy-e2e-worker2"]


# ---- importability -----------------------------------------------------------------------------


def test_e2e_modules_import_without_kind_or_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytest_kind", None)  # as if not installed
    monkeypatch.setenv("PATH", "/nonexistent")
    for name in (
        "e2e.conftest",
        "e2e.test_00_baseline",
        "e2e.test_05_install",
        "e2e.test_10_upstream",
        "e2e.test_20_failures",
        "e2e.cluster",
        "e2e.providers",
    ):
        monkeypatch.delitem(sys.modules, name, raising=False)
        importlib.import_module(name)
    assert "not installed" in (sys.modules["e2e.providers"].kind_unavailable_reason() or "")


# ---- providers ---------------------------------------------------------------------------------


def node(name: str, ready: bool = True, **spec: Any) -> dict[str, Any]:
    status = "True" if ready else "False"
    return {
        "metadata": {"name": name},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": status}]},
    }


def test_the_model_goes_on_ready_schedulable_nodes() -> None:
    nodes = {
        "items": [
            node("n3"),
            node("n1"),
            node(
                "cp",
                taints=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
            ),
            node("down", ready=False),
            node("cordoned", unschedulable=True),
            node("preferred", taints=[{"key": "k", "effect": "PreferNoSchedule"}]),
        ]
    }
    assert providers.schedulable_nodes(nodes) == ["n1", "n3", "preferred"]
    assert providers.pick_nodes(nodes) == ["n1", "n3", "preferred"]
    assert providers.pick_nodes(nodes, ["n3", "n1"]) == ["n3", "n1"]
    with pytest.raises(ValueError, match=r"names \['cp'\], which are not Ready schedulable"):
        providers.pick_nodes(nodes, ["cp", "n1"])
    with pytest.raises(ValueError, match="needs two Ready schedulable nodes"):
        providers.pick_nodes({"items": [node("n1"), node("down", ready=False)]})


def test_a_given_cluster_keeps_its_images_and_nodes(tmp_path: Path) -> None:
    p = providers.KubeconfigProvider(tmp_path / "kubeconfig", ("b", "a"))
    assert p.pull_policy == "IfNotPresent"
    p.load_image("nftpolicy:e2e")  # nothing to do: the image is on the nodes or pullable
    assert p.nodes({"items": [node("a"), node("b"), node("c")]}) == ["b", "a"]


# ---- kind config -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "dual"])
def test_kind_config(family: str) -> None:
    cfg = kind_config.kind_config(family)
    assert cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert cfg["kind"] == "Cluster"
    assert cfg["networking"] == {"ipFamily": family}  # kindnet stays (pinned kind v0.23.0)
    assert [n["role"] for n in cfg["nodes"]] == ["control-plane", "worker", "worker"]
    assert yaml.safe_load(kind_config.kind_config_yaml(family)) == cfg


def test_kind_config_options() -> None:
    cfg = kind_config.kind_config("ipv6", workers=3, disable_default_cni=True)
    assert cfg["networking"] == {"ipFamily": "ipv6", "disableDefaultCNI": True}
    assert len(cfg["nodes"]) == 4
    with pytest.raises(ValueError, match="ip_family"):
        kind_config.kind_config("ipv5")
    with pytest.raises(ValueError, match="worker"):
        kind_config.kind_config("ipv4", workers=0)


def test_worker_names_and_families() -> None:
    assert kind_config.worker_names() == WORKERS
    assert kind_config.worker_names("c", 3) == ["c-worker", "c-worker2", "c-worker3"]
    assert [kind_config.ip_family_number(f) for f in ("ipv4", "ipv6", "dual")] == [4, 6, 4]


def test_workflow_pins_the_same_kind_version() -> None:
    workflow = (ROOT / ".github" / "workflows" / "e2e.yml").read_text()
    assert f"KIND_VERSION: {kind_config.KIND_VERSION}" in workflow
    jobs = yaml.safe_load(workflow)["jobs"]
    families = jobs["e2e"]["strategy"]["matrix"]["ip-family"]
    assert sorted(families) == ["ipv4", "ipv6"]
    # .ci/run is scripts/test.sh + scripts/e2e.sh (Debian hosts); GitHub runs the first, and kind
    assert any("bash scripts/test.sh" in str(step.get("run", "")) for step in jobs["ci"]["steps"])


# ---- manifests ---------------------------------------------------------------------------------


def test_namespace_manifests() -> None:
    namespaces = netpol.namespace_manifests()
    assert [n["metadata"]["name"] for n in namespaces] == ["x", "y", "z"]
    for ns in namespaces:
        name = ns["metadata"]["name"]
        assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": name}


def test_pod_manifests() -> None:
    pods = netpol.pod_manifests(WORKERS)
    assert [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in pods] == list(ALL_PODS)
    for pod in pods:
        name = pod["metadata"]["name"]
        assert set(pod) == {"apiVersion", "kind", "metadata", "spec"}  # no status
        assert set(pod["metadata"]) == {"name", "namespace", "labels"}  # no uid
        assert pod["metadata"]["labels"] == {"pod": name}
        spec = pod["spec"]
        assert "nodeName" not in spec
        want_node = WORKERS[0] if name in ("a", "c") else WORKERS[1]
        assert spec["nodeSelector"] == {"kubernetes.io/hostname": want_node}
        ports = sorted(c["ports"][0]["name"] for c in spec["containers"])
        assert ports == ["serve-80-tcp", "serve-80-udp", "serve-81-tcp", "serve-81-udp"]
        for c in spec["containers"]:
            assert c["image"] == model.AGNHOST_IMAGE
            assert c["command"][:2] == ["/agnhost", "serve-hostname"]
    assert netpol.node_of("y/b", ["only"]) == "only"
    with pytest.raises(ValueError):
        netpol.node_of("x/a", [])


# ---- probes ------------------------------------------------------------------------------------


def test_probe_command_ipv4_and_ipv6() -> None:
    assert netpol.probe_command("y/b", "10.244.1.5", 81, "UDP") == [
        "exec", "-n", "y", "b", "-c", "cont-80-tcp", "--",
        "/agnhost", "connect", "10.244.1.5:81", "--timeout=1s", "--protocol=udp",
    ]  # fmt: skip
    cmd = netpol.probe_command("x/a", "fd00:10:244:1::5", 80, "TCP", timeout=3)
    assert cmd[-3:] == ["[fd00:10:244:1::5]:80", "--timeout=3s", "--protocol=tcp"]
    with pytest.raises(ValueError, match="protocol"):
        netpol.probe_command("x/a", "10.0.0.1", 80, "ICMP")
    with pytest.raises(ValueError):
        netpol.probe_command("a", "10.0.0.1", 80, "TCP")


def test_probe_pairs() -> None:
    pairs = netpol.probe_pairs()
    assert len(pairs) == 81 and len(set(pairs)) == 81
    table = Reachability()
    assert len(netpol.pairs_to_probe(table)) == 72
    assert all(s != d for s, d in netpol.pairs_to_probe(table))
    assert len(netpol.pairs_to_probe(table, skip_loopback=False)) == 81


def test_retry_pairs_are_only_missed_allows() -> None:
    expected = Reachability().expect("x/a", "x/b", False).freeze()
    observed = {p: True for p in netpol.pairs_to_probe(expected)}
    observed[("x/a", "x/b")] = True  # wrongly allowed: never retried away
    observed[("y/a", "y/b")] = False  # wrongly blocked: one more try
    assert netpol.retry_pairs(expected, observed) == [("y/a", "y/b")]


# ---- expectations ------------------------------------------------------------------------------


def test_e2e_runs_every_tcp_udp_upstream_case() -> None:
    cases = netpol.e2e_cases()
    assert len(cases) == len(CASES) == 45
    assert len({c.name for c in cases}) == 45
    assert all(c.protocols <= {"TCP", "UDP"} for c in cases)
    assert not {c.name for c in cases} & set(SKIPPED_SCTP)
    for case in cases:
        for probe in case.probes:
            assert probe.port in (80, 81)
            assert probe.expected.pods == ALL_PODS


def test_expected_matrix_of_default_deny_ingress() -> None:
    case = case_by_name("should support a 'default-deny-ingress' policy")
    (probe,) = case.probes
    for src, dst, ok in probe.expected.cells():
        assert ok == (not dst.startswith("x/")), (src, dst)


def test_baseline_expectations() -> None:
    nothing = netpol.nothing_enforced_matrix()
    assert nothing.count(False) == 0
    enforced = netpol.expected_with_baseline_enforced()
    assert enforced.get("y/a", "x/a") is False and enforced.get("x/a", "y/a") is False
    assert enforced.get("y/a", "z/b") is True
    policy = netpol.baseline_policy()
    assert policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert policy["metadata"]["namespace"] == "x"
    # what the baseline test reports when the CNI enforces: x's rows and columns,
    # 27 + 27 - 9 = 45 blocked cells, 3 of them loopback (ignored)
    assert enforced.count(False) == 45
    assert len(nothing.compare(enforced.as_dict())) == 42


# ---- actions -----------------------------------------------------------------------------------


ADDRESSES = Addresses(4, {p: f"10.244.{i // 3 + 1}.{i + 10}" for i, p in enumerate(ALL_PODS)})


def test_apply_and_delete_policy_commands() -> None:
    labels = netpol.pristine_labels()
    apply = next(a for c in CASES for s in c.steps for a in s.actions if isinstance(a, ApplyPolicy))
    args, manifest = netpol.action_command(apply, ADDRESSES, labels)
    assert args == ["apply", "-f", "-"]
    assert manifest is not None
    assert manifest["apiVersion"] == "networking.k8s.io/v1"
    assert manifest["kind"] == "NetworkPolicy"
    assert manifest["metadata"]["namespace"] in model.NAMESPACES
    args, manifest = netpol.action_command(DeletePolicy("x", "p"), ADDRESSES, labels)
    assert args == ["-n", "x", "delete", "networkpolicy", "p"] and manifest is None


def test_ip_dependent_policies_use_the_cluster_addresses() -> None:
    factories = [
        a for c in CASES for s in c.steps for a in s.actions
        if isinstance(a, ApplyPolicy) and a.needs_addresses
    ]  # fmt: skip
    assert factories
    for action in factories:
        text = json.dumps(netpol.policy_manifest(action, ADDRESSES))
        assert "10.244." in text or "0.0.0.0/4" in text


def test_label_actions_patch_to_the_exact_label_set() -> None:
    labels = netpol.pristine_labels()
    args, stdin = netpol.action_command(
        SetPodLabels("x", "b", {"pod": "b", "pod2": "updated"}), ADDRESSES, labels
    )
    assert stdin is None
    assert args[:6] == ["-n", "x", "patch", "pod", "b", "--type"]
    assert json.loads(args[-1]) == {"metadata": {"labels": {"pod": "b", "pod2": "updated"}}}
    assert labels[("Pod", "x/b")] == {"pod": "b", "pod2": "updated"}

    args, _ = netpol.action_command(SetPodLabels("x", "b", {"pod": "b"}), ADDRESSES, labels)
    assert json.loads(args[-1]) == {"metadata": {"labels": {"pod": "b", "pod2": None}}}

    args, _ = netpol.action_command(
        SetNamespaceLabels("y", {**model.namespace_labels("y"), "ns2": "updated"}),
        ADDRESSES,
        labels,
    )
    assert args[:3] == ["patch", "namespace", "y"]
    assert json.loads(args[-1])["metadata"]["labels"]["ns2"] == "updated"


def test_label_patch_never_removes_the_namespace_name_label() -> None:
    patch = netpol.label_patch({"kubernetes.io/metadata.name": "y", "a": "1"}, {"b": "2"})
    assert patch == {"metadata": {"labels": {"a": None, "b": "2"}}}


def test_reset_commands_restore_the_pristine_model() -> None:
    labels = netpol.pristine_labels()
    assert netpol.reset_commands(labels) == [
        ["-n", ns, "delete", "networkpolicy", "--all", "--wait=true"] for ns in ("x", "y", "z")
    ]
    labels[("Pod", "x/a")] = {"pod": "a", "target": "isolated"}
    labels[("Namespace", "y")] = {**model.namespace_labels("y"), "ns2": "updated"}
    commands = netpol.reset_commands(labels)
    assert len(commands) == 5
    assert commands[3][:3] == ["patch", "namespace", "y"]
    assert json.loads(commands[3][-1]) == {
        "metadata": {"labels": {"ns2": None, "kubernetes.io/metadata.name": "y"}}
    }
    assert json.loads(commands[4][-1]) == {"metadata": {"labels": {"pod": "a", "target": None}}}
    assert labels == netpol.pristine_labels()


def test_every_case_replays_to_kubectl_commands() -> None:
    """Each action of each case becomes a kubectl command, and the reset undoes the labels."""
    for case in netpol.e2e_cases():
        labels = netpol.pristine_labels()
        for step in case.steps:
            for action in step.actions:
                args, _ = netpol.action_command(action, ADDRESSES, labels)
                assert args and args[0] in ("apply", "-n", "patch")
        netpol.reset_commands(labels)
        assert labels == netpol.pristine_labels()


# ---- install -----------------------------------------------------------------------------------


def test_split_image() -> None:
    assert install.split_image("nftpolicy:e2e") == ("nftpolicy", "e2e")
    assert install.split_image("localhost:5000/net/nftpolicy:1.0") == (
        "localhost:5000/net/nftpolicy",
        "1.0",
    )
    assert install.split_image("localhost:5000/nftpolicy") == ("localhost:5000/nftpolicy", "latest")
    with pytest.raises(ValueError, match="digest"):
        install.split_image("nftpolicy@sha256:abc")


def test_helm_install_args() -> None:
    args = install.helm_install_args("nftpolicy:e2e")
    assert args[:4] == ["upgrade", "--install", "nftpolicy", str(install.CHART)]
    assert args[args.index("--namespace") + 1] == "nftpolicy-system"
    assert "--wait" in args
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert "image.repository=nftpolicy" in sets
    assert "image.tag=e2e" in sets
    assert "image.pullPolicy=Never" in sets  # loaded with kind load docker-image
    assert install.docker_build_args("nftpolicy:e2e") == [
        "build", "--tag", "nftpolicy:e2e", str(ROOT)
    ]  # fmt: skip


# ---- fail_closed: the new-pod sweep ------------------------------------------------------------


def _sweep_lines(*events: tuple[float, str, str]) -> list[str]:
    return [json.dumps(list(e)) for e in events] + ["not json: kubectl's own noise"]


def test_sweep_intervals_run_from_reached_to_silent_and_keep_the_last_open() -> None:
    """Refused (a reset from the pod: its server not listening yet) is reached too."""
    lines = _sweep_lines(
        (1.0, "", "started"), (2.0, "10.0.0.5", "refused"), (2.5, "10.0.0.5", "open"),
        (3.0, "10.0.0.5", "silent"), (4.0, "10.0.0.6", "open"), (5.0, "10.0.0.7", "silent"),
    )  # fmt: skip
    assert fail_closed.sweep_started(lines) == 1.0
    assert fail_closed.parse_sweep(lines) == [
        fail_closed.Interval("10.0.0.5", 2.0, 3.0),
        fail_closed.Interval("10.0.0.6", 4.0, math.inf),
    ]


def test_a_breach_is_any_overlap_with_the_pods_lifetime_on_its_ip() -> None:
    pod = fail_closed.Lifetime("fc-deny/t0", "10.0.0.5", created=10.0, reported=11.0, gone=20.0)
    before = fail_closed.Interval("10.0.0.5", 1.0, 9.0)  # an earlier pod with the same IP
    other_ip = fail_closed.Interval("10.0.0.6", 12.0, 13.0)
    assert fail_closed.breaches([before, other_ip], [pod]) == []
    during = fail_closed.Interval("10.0.0.5", 10.5, 10.7)  # before the IP was even reported
    assert fail_closed.breaches([during], [pod]) == [
        "fc-deny/t0 (10.0.0.5) reached from +0.500 s to +0.700 s after its creation"
    ]


def test_wait_is_from_the_ip_report_to_the_first_connection_and_never_negative() -> None:
    pods = [
        fail_closed.Lifetime("a", "10.0.0.5", created=10.0, reported=11.0, gone=20.0),
        fail_closed.Lifetime("b", "10.0.0.6", created=10.0, reported=11.0, gone=20.0),
        fail_closed.Lifetime("c", "10.0.0.7", created=10.0, reported=11.0, gone=20.0),
    ]
    intervals = [
        fail_closed.Interval("10.0.0.5", 11.25, math.inf),
        fail_closed.Interval("10.0.0.6", 10.9, 12.0),  # our watch saw the report late
        fail_closed.Interval("10.0.0.7", 21.0, 22.0),  # after the pod was gone: not its wait
    ]
    assert fail_closed.waits(intervals, pods) == {"a": 0.25, "b": 0.0, "c": None}


def test_nearest_rank_percentile() -> None:
    values = [float(v) for v in range(1, 51)]
    assert fail_closed.percentile(values, 99) == 50.0
    assert fail_closed.percentile(values, 50) == 25.0
    with pytest.raises(ValueError):
        fail_closed.percentile([], 50)
