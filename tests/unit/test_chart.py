"""The Helm chart (charts/nftpolicy): lint, golden renders, and what the rendered objects say.

``helm template`` output for the default values and for ``golden/chart/custom.values.yaml`` is
compared with ``golden/chart/*.rendered.yaml``; regenerate after an intended change with
``UPDATE_GOLDEN=1 scripts/test.sh tests/unit/test_chart.py``.

helm comes from ``$NFTPOLICY_TESTENV_BIN/helm``, else from the bin directory that
``scripts/testenv.sh`` prints (built once from Go modules and cached); the tests skip only when
neither gives a helm.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.agent.agent import STOP_APPLY_WAIT

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "nftpolicy"
GOLDEN = Path(__file__).with_name("golden") / "chart"
CUSTOM_VALUES = GOLDEN / "custom.values.yaml"
RELEASE, NAMESPACE = "nftpolicy", "nftpolicy-system"
TESTENV_EXIT_NO_GO = 3


@cache
def _find_helm() -> tuple[Path | None, str]:
    """(helm path, '') or (None, why not)."""
    env_bin = os.environ.get("NFTPOLICY_TESTENV_BIN")
    if env_bin and os.access(Path(env_bin) / "helm", os.X_OK):
        return Path(env_bin) / "helm", ""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "testenv.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines and os.access(Path(lines[-1]) / "helm", os.X_OK):
        return Path(lines[-1]) / "helm", ""
    why = "Go is not installed" if proc.returncode == TESTENV_EXIT_NO_GO else proc.stderr[-500:]
    return None, f"no helm: $NFTPOLICY_TESTENV_BIN unset and scripts/testenv.sh gave none ({why})"


@pytest.fixture(scope="module")
def helm() -> Path:
    path, why = _find_helm()
    if path is None:
        pytest.skip(why)
    return path


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def template(helm: Path, *extra: str) -> str:
    return run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra).stdout


def objects(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def find(objs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{len(found)} {kind} named *{name_suffix}"
    return found[0]


@pytest.fixture(scope="module")
def default_objs(helm: Path) -> list[dict[str, Any]]:
    return objects(template(helm))


@pytest.fixture(scope="module")
def custom_objs(helm: Path) -> list[dict[str, Any]]:
    return objects(template(helm, "-f", str(CUSTOM_VALUES)))


def container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


# ---- lint and golden files -----------------------------------------------------------------


@pytest.mark.parametrize("values", [None, CUSTOM_VALUES], ids=["default", "custom"])
def test_helm_lint_strict(helm: Path, values: Path | None) -> None:
    extra = ["-f", str(values)] if values else []
    proc = run_helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *extra)
    assert "0 chart(s) failed" in proc.stdout, proc.stdout


@pytest.mark.parametrize("name", ["default", "custom"])
def test_template_matches_golden(helm: Path, name: str) -> None:
    extra = ["-f", str(CUSTOM_VALUES)] if name == "custom" else []
    out = template(helm, *extra)
    golden = GOLDEN / f"{name}.rendered.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(out)
    assert out == golden.read_text(), f"{golden} differs; UPDATE_GOLDEN=1 to accept"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "defaultDeny.ingress=yes"], "/defaultDeny/ingress"),
        (["--set-json", "defaultDeny.exemptNamespaces=[]"], "/defaultDeny/exemptNamespaces"),
        (["--set", "logLevel=verbose"], "/logLevel"),
        (["--set", "operator.replicas=0"], "/operator/replicas"),
        (["--set", "agent.resyncPeriod=0"], "/agent/resyncPeriod"),
        (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["--set", "agent.conntrackCleanup=maybe"], "/agent/conntrackCleanup"),
        (["--set", "agent.startupTimeoutSeconds=5"], "/agent/startupTimeoutSeconds"),
        (["--set", "defaultDeny.allowDns=true"], "allowDns"),  # a typo is not ignored
    ],
)
def test_schema_rejects_bad_values(helm: Path, args: list[str], message: str) -> None:
    proc = run_helm(
        helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args, check=False
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_crds_come_from_the_crds_directory(helm: Path, default_objs: list[dict[str, Any]]) -> None:
    assert not [o for o in default_objs if o["kind"] == "CustomResourceDefinition"]
    with_crds = objects(template(helm, "--include-crds"))
    crds = sorted(
        o["metadata"]["name"] for o in with_crds if o["kind"] == "CustomResourceDefinition"
    )
    assert crds == ["addressgroups.nftpolicy.io", "noderules.nftpolicy.io"]


def test_kube_version_constraint() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    # ValidatingAdmissionPolicy v1 and the node-name claim of pod-bound tokens: 1.30
    assert chart["kubeVersion"] == ">=1.30.0-0"


def test_older_kubernetes_is_refused(helm: Path) -> None:
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", "1.29.9", check=False)
    assert proc.returncode != 0
    assert "kubeVersion" in proc.stderr or ">=1.30.0-0" in proc.stderr, proc.stderr


# ---- the agent -------------------------------------------------------------------------------


def test_agent_daemonset_runs_on_every_node_in_the_host_network(
    default_objs: list[dict[str, Any]],
) -> None:
    ds = find(default_objs, "DaemonSet", "-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["serviceAccountName"] == "nftpolicy-agent"
    c = container(ds)
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c[
        "env"
    ]
    assert c["args"][:2] == ["agent", "--node=$(NODE_NAME)"]
    assert "--resync-period=30" in c["args"]
    assert "--no-conntrack-cleanup" not in c["args"]
    assert not any("netns" in a for a in c["args"])  # the node's own namespace
    # from the node's file system only the directory of the saved ruleset (nftables,
    # conntrack and netlink need no mounts)
    assert "--state-dir=/var/lib/nftpolicy" in c["args"]
    host = [v["hostPath"] for v in pod["volumes"] if v.get("hostPath")]
    assert host == [{"path": "/var/lib/nftpolicy", "type": "DirectoryOrCreate"}]
    assert {"name": "state", "mountPath": "/var/lib/nftpolicy"} in c["volumeMounts"]
    # uninstall: the agent watches its own DaemonSet; on SIGTERM it may wait 5 s for an apply
    # (agent.STOP_APPLY_WAIT), then remove the table and the file
    assert f"--daemonset={NAMESPACE}/nftpolicy-agent" in c["args"]
    assert ds["metadata"]["name"] == "nftpolicy-agent"
    assert pod["terminationGracePeriodSeconds"] >= STOP_APPLY_WAIT + 5


def test_agent_has_exactly_net_admin(default_objs: list[dict[str, Any]]) -> None:
    sc = container(find(default_objs, "DaemonSet", "-agent"))["securityContext"]
    assert sc["capabilities"]["add"] == ["NET_ADMIN"]  # tests/integration/test_capabilities.py
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsUser"] == 0  # added capabilities are only effective for root


def test_agent_probes(
    default_objs: list[dict[str, Any]], custom_objs: list[dict[str, Any]]
) -> None:
    """Liveness is /healthz (watch stale, applies failing, generation lagging, apply thread
    dead); readiness and start-up are /readyz (first apply done), so a slow first sync is not
    killed by liveness and a DaemonSet rollout waits for each agent to have applied."""
    c = container(find(default_objs, "DaemonSet", "-agent"))
    assert c["livenessProbe"] == {
        "httpGet": {"path": "/healthz", "port": "metrics"},
        "periodSeconds": 10,
        "failureThreshold": 3,
    }
    assert c["readinessProbe"] == {
        "httpGet": {"path": "/readyz", "port": "metrics"},
        "periodSeconds": 5,
    }
    assert c["startupProbe"] == {
        "httpGet": {"path": "/readyz", "port": "metrics"},
        "periodSeconds": 5,
        "failureThreshold": 60,  # startupTimeoutSeconds: 300
    }
    custom = container(find(custom_objs, "DaemonSet", "-agent"))
    assert custom["startupProbe"]["failureThreshold"] == 120  # 600 s


def test_agent_options_from_values(custom_objs: list[dict[str, Any]]) -> None:
    c = container(find(custom_objs, "DaemonSet", "-agent"))
    assert c["args"] == [
        "agent",
        "--node=$(NODE_NAME)",
        "--resync-period=10",
        "--state-dir=/var/lib/nftpolicy",
        "--no-conntrack-cleanup",
        "--no-log",
        "--unknown-endpoints=allow",
        "--ct-mark-mask=16711680",
        "--pod-cidrs=10.244.0.0/24,fd00:244::/64",
        "--log-level=debug",
        "--metrics-port=9091",
        "--metrics-address=0.0.0.0",
    ]
    assert c["image"] == "registry.example.com/net/nftpolicy:0.1.0-rc1"
    assert c["imagePullPolicy"] == "Always"


# ---- the operator ----------------------------------------------------------------------------


def test_operator_deployment_defaults(default_objs: list[dict[str, Any]]) -> None:
    dep = find(default_objs, "Deployment", "-operator")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == (dep["spec"]["selector"]["matchLabels"])
    )
    assert pod.get("hostNetwork") is not True
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = container(dep)
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["args"] == [
        "operator",
        f"--lease-namespace={NAMESPACE}",
        "--identity=$(POD_NAME)",
        "--default-deny=none",
        "--exempt-namespace=kube-system",
        "--dns-namespace=kube-system",
        "--dns-pod-selector=k8s-app=kube-dns",
        "--dns-service-selector=k8s-app=kube-dns",
        "--log-level=info",
        "--metrics-port=9090",
        "--metrics-address=0.0.0.0",
    ]
    assert c["image"] == "nftpolicy:0.1.0"  # appVersion when image.tag is empty
    pdb = find(default_objs, "PodDisruptionBudget")
    assert pdb["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]},
    }


def test_operator_options_from_values(custom_objs: list[dict[str, Any]]) -> None:
    dep = find(custom_objs, "Deployment", "-operator")
    assert dep["metadata"]["name"] == "np-operator"
    assert dep["spec"]["replicas"] == 1
    assert container(dep)["args"] == [
        "operator",
        f"--lease-namespace={NAMESPACE}",
        "--identity=$(POD_NAME)",
        "--default-deny=all",
        "--exempt-namespace=kube-system",
        "--exempt-namespace=monitoring",
        "--no-dns-allowance",
        "--log-level=warning",
        "--metrics-port=9090",
        "--metrics-address=0.0.0.0",
    ]
    pod = dep["spec"]["template"]["spec"]
    assert "podAntiAffinity" not in pod["affinity"]  # replaced by operator.affinity
    assert not [o for o in custom_objs if o["kind"] == "PodDisruptionBudget"]  # one replica
    assert not [o for o in custom_objs if o["kind"] == "Service"]  # metrics Service disabled


def test_dns_values_map_to_the_flags_and_rbac(helm: Path) -> None:
    objs = objects(
        template(
            helm,
            "--set",
            "dns.namespace=dns",
            "--set",
            "dns.podSelector=app=unbound\\,tier=dns",
            "--set",
            "dns.addresses={169.254.20.10,fd00::53}",
        )
    )
    args = container(find(objs, "Deployment", "-operator"))["args"]
    assert [a for a in args if a.startswith("--dns-")] == [
        "--dns-namespace=dns",
        "--dns-pod-selector=app=unbound,tier=dns",
        "--dns-service-selector=k8s-app=kube-dns",
        "--dns-address=169.254.20.10",
        "--dns-address=fd00::53",
    ]
    role = find(objs, "Role", "-operator-dns")
    assert role["metadata"]["namespace"] == "dns"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]}
    ]


@pytest.mark.parametrize(
    ("ingress", "egress", "flag"),
    [
        ("false", "false", "none"),
        ("true", "false", "ingress"),
        ("false", "true", "egress"),
        ("true", "true", "all"),
    ],
)
def test_default_deny_booleans_map_to_the_flag(
    helm: Path, ingress: str, egress: str, flag: str
) -> None:
    objs = objects(
        template(
            helm,
            "--set",
            f"defaultDeny.ingress={ingress}",
            "--set",
            f"defaultDeny.egress={egress}",
            "--show-only",
            "templates/operator-deployment.yaml",
        )
    )
    assert f"--default-deny={flag}" in container(objs[0])["args"]


# ---- RBAC --------------------------------------------------------------------------------------


def grants(role: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or '*') for every rule of a (Cluster)Role."""
    out = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or ["*"]:
                        out.add((group, resource, verb, name))
    return out


def test_agent_cluster_role_verbs(default_objs: list[dict[str, Any]]) -> None:
    role = find(default_objs, "ClusterRole", "-agent")
    assert grants(role) == {
        ("nftpolicy.io", "noderules", "list", "*"),
        ("nftpolicy.io", "noderules", "watch", "*"),
        ("nftpolicy.io", "addressgroups", "list", "*"),
        ("nftpolicy.io", "addressgroups", "watch", "*"),
        ("nftpolicy.io", "noderules/status", "patch", "*"),
    }
    binding = find(default_objs, "ClusterRoleBinding", "-agent")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "nftpolicy-agent", "namespace": NAMESPACE}
    ]


def test_operator_cluster_role_verbs(default_objs: list[dict[str, Any]]) -> None:
    got = grants(find(default_objs, "ClusterRole", "-operator"))
    watch = {
        (g, r, v, "*")
        for g, r in [
            ("", "pods"),
            ("", "namespaces"),
            ("", "nodes"),
            ("networking.k8s.io", "networkpolicies"),
        ]
        for v in ("list", "watch")
    }
    publish = {
        ("nftpolicy.io", r, v, "*")
        for r in ("noderules", "addressgroups")
        for v in ("get", "list", "watch", "create", "patch", "delete")
    }
    assert got == watch | publish | {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list", "*"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch", "*"),
        ("", "events", "create", "*"),
    }
    assert not [g for g in got if g[1] in ("secrets", "configmaps") or g[2] in ("*", "update")]


def test_agent_daemonset_role_names_its_own_daemonset_only(
    default_objs: list[dict[str, Any]], custom_objs: list[dict[str, Any]]
) -> None:
    """List and watch of the agent's own DaemonSet, in the release namespace (a list or watch
    authorized by resourceNames needs the field selector metadata.name the agent sends:
    tests/integration/test_helm_rbac.py)."""
    role = find(default_objs, "Role", "-agent-daemonset")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert grants(role) == {
        ("apps", "daemonsets", "list", "nftpolicy-agent"),
        ("apps", "daemonsets", "watch", "nftpolicy-agent"),
    }
    binding = find(default_objs, "RoleBinding", "-agent-daemonset")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "nftpolicy-agent", "namespace": NAMESPACE}
    ]
    # agent.removeRulesOnUninstall: false -> neither the Role nor the flag
    assert not [o for o in custom_objs if o["metadata"]["name"].endswith("-agent-daemonset")]


def test_operator_lease_role_is_namespaced_and_named(default_objs: list[dict[str, Any]]) -> None:
    role = find(default_objs, "Role", "-lease")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert grants(role) == {
        ("coordination.k8s.io", "leases", "create", "*"),
        ("coordination.k8s.io", "leases", "get", "nftpolicy-operator"),
        ("coordination.k8s.io", "leases", "update", "nftpolicy-operator"),
    }
    binding = find(default_objs, "RoleBinding", "-lease")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["subjects"][0]["name"] == "nftpolicy-operator"


# ---- the metrics Service ---------------------------------------------------------------------


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["spec"]["template"]["metadata"]["labels"])


def test_metrics_service_selects_operator_and_agents(default_objs: list[dict[str, Any]]) -> None:
    svc = find(default_objs, "Service", "-metrics")
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    selector = svc["spec"]["selector"]
    for kind, suffix, port in (("Deployment", "-operator", 9090), ("DaemonSet", "-agent", 9091)):
        workload = find(default_objs, kind, suffix)
        assert selector.items() <= _labels(workload).items(), f"{kind} not selected"
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        assert f"--metrics-port={port}" in container["args"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_every_object_is_labelled_and_namespaced(default_objs: list[dict[str, Any]]) -> None:
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for obj in default_objs:
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE, meta["name"]
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in meta
        elif meta["name"].endswith("-operator-dns"):  # reads the DNS Services where they are
            assert meta["namespace"] == "kube-system" and obj["kind"] in ("Role", "RoleBinding")
        else:
            assert meta["namespace"] == NAMESPACE, (obj["kind"], meta["name"])


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def test_no_privileged_pod_anywhere(
    default_objs: list[dict[str, Any]], custom_objs: list[dict[str, Any]]
) -> None:
    for obj in default_objs + custom_objs:
        for node in _walk(obj):
            if isinstance(node, dict) and "privileged" in node:
                assert node["privileged"] is False


def test_agent_status_admission_policy(default_objs: list[dict[str, Any]]) -> None:
    """The policy matches the agent's ServiceAccount in the release namespace (its behaviour is
    tested against a real API server in tests/integration/test_helm_rbac.py)."""
    policy = find(default_objs, "ValidatingAdmissionPolicy", "-agent-own-node")
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (condition,) = spec["matchConditions"]
    assert f'"system:serviceaccount:{NAMESPACE}:nftpolicy-agent"' in condition["expression"]
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["noderules", "noderules/*"]
    binding = find(default_objs, "ValidatingAdmissionPolicyBinding", "-agent-own-node")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }


def test_metrics_listen_addresses(helm: Path) -> None:
    objs = objects(
        template(
            helm, "--set", "metrics.agentAddress=$(HOST_IP)", "--set", "metrics.operatorAddress=::"
        )
    )
    agent = container(find(objs, "DaemonSet", "-agent"))
    assert "--metrics-address=$(HOST_IP)" in agent["args"]
    assert {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}} in agent[
        "env"
    ]
    assert "--metrics-address=::" in container(find(objs, "Deployment", "-operator"))["args"]
