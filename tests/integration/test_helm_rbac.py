"""The Helm chart installed into a real kube-apiserver: its RBAC is enough, and no more.

``helm install`` puts the chart (CRDs, ServiceAccounts, ClusterRoles, the Lease Role, the
Deployment and DaemonSet) into the test control plane; no pod runs (there is no kubelet).
Then, with the bound tokens of the chart's two ServiceAccounts:

* a ``kubectl auth can-i --token`` matrix: what each must be able to do, and what it must not;
* the real ``nftpolicy operator`` and ``nftpolicy agent`` processes, started with the
  arguments the chart renders and a kubeconfig holding only that token, carry a NetworkPolicy
  through to NodeRules, AddressGroups, the agent's status, an Event and a kernel table (the
  agent applies in a scratch network namespace standing in for its node);
* an agent whose ServiceAccount has no binding says 403 Forbidden in its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client

from controller.agent.render import FAMILY, TABLE
from controller.resources import ADDRESS_GROUPS, GROUP, NODE_RULES, VERSION, span_label
from controller.testing.apiserver import TestControlPlane
from controller.testing.netns import NetnsCluster
from tests.integration.live import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "nftpolicy"
LEASE = "nftpolicy-operator"
TIMEOUT = 30.0


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    install_output: str
    operator_sa: str
    agent_sa: str
    operator_token: str
    agent_token: str


def _helm(plane: TestControlPlane, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    helm = plane.bin_dir / "helm"
    if not os.access(helm, os.X_OK):
        pytest.skip(f"no helm next to the control-plane binaries ({helm})")
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    proc = subprocess.run(
        [str(helm), "--kubeconfig", str(plane.kubeconfig), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=180,
    )
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def release(control_plane: TestControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Release:
    """The chart, installed once for the module (namespaces never go away without a
    kube-controller-manager, so every run uses fresh names)."""
    suffix = uuid.uuid4().hex[:6]
    name, namespace = f"np-{suffix}", f"nftpolicy-{suffix}"
    home = tmp_path_factory.mktemp("helm")
    out = _helm(
        control_plane,
        home,
        "install",
        name,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
    ).stdout
    control_plane.kubectl(
        "wait",
        "--for",
        "condition=Established",
        "--timeout=60s",
        "crd/addressgroups.nftpolicy.io",
        "crd/noderules.nftpolicy.io",
    )
    operator_sa, agent_sa = f"{name}-nftpolicy-operator", f"{name}-nftpolicy-agent"
    return Release(
        name=name,
        namespace=namespace,
        install_output=out,
        operator_sa=operator_sa,
        agent_sa=agent_sa,
        operator_token=control_plane.token_for(namespace, operator_sa),
        agent_token=control_plane.token_for(namespace, agent_sa),
    )


def test_helm_install_creates_the_release(
    control_plane: TestControlPlane, release: Release
) -> None:
    assert "STATUS: deployed" in release.install_output
    assert (
        "(/metrics on 9090) and the agents (/metrics on host port 9091)" in release.install_output
    )  # NOTES.txt
    ns = release.namespace
    got = control_plane.kubectl(
        "-n",
        ns,
        "get",
        "deployment,daemonset,serviceaccount,service,role,rolebinding,pdb",
        "-l",
        f"app.kubernetes.io/instance={release.name}",
        "-o",
        "name",
    ).stdout.split()
    full = f"{release.name}-nftpolicy"
    for obj in (
        f"deployment.apps/{full}-operator",
        f"daemonset.apps/{full}-agent",
        f"serviceaccount/{full}-operator",
        f"serviceaccount/{full}-agent",
        f"service/{full}-metrics",
        f"role.rbac.authorization.k8s.io/{full}-operator-lease",
        f"rolebinding.rbac.authorization.k8s.io/{full}-operator-lease",
        f"poddisruptionbudget.policy/{full}-operator",
    ):
        assert obj in got
    roles = control_plane.kubectl("get", "clusterrole", "-o", "name").stdout.split()
    assert f"clusterrole.rbac.authorization.k8s.io/{full}-operator" in roles
    assert f"clusterrole.rbac.authorization.k8s.io/{full}-agent" in roles


# ---- kubectl auth can-i ------------------------------------------------------------------------

# (verb, resource, namespace) with namespace "*" = all namespaces, "" = cluster-scoped,
# "REL" = the release namespace; the resource may carry "/name" and "#subresource".
YES, NO = True, False
OPERATOR_MATRIX: list[tuple[str, str, str, bool]] = [
    ("list", "pods", "*", YES),
    ("watch", "pods", "*", YES),
    ("list", "namespaces", "", YES),
    ("watch", "namespaces", "", YES),
    ("list", "nodes", "", YES),
    ("watch", "nodes", "", YES),
    ("list", "networkpolicies.networking.k8s.io", "*", YES),
    ("watch", "networkpolicies.networking.k8s.io", "*", YES),
    ("list", "noderules.nftpolicy.io", "", YES),
    ("watch", "noderules.nftpolicy.io", "", YES),
    ("create", "noderules.nftpolicy.io", "", YES),
    ("patch", "noderules.nftpolicy.io", "", YES),
    ("delete", "noderules.nftpolicy.io", "", YES),
    ("get", "noderules.nftpolicy.io", "", YES),
    ("list", "addressgroups.nftpolicy.io", "", YES),
    ("watch", "addressgroups.nftpolicy.io", "", YES),
    ("get", "addressgroups.nftpolicy.io", "", YES),
    ("create", "addressgroups.nftpolicy.io", "", YES),
    ("patch", "addressgroups.nftpolicy.io", "", YES),
    ("delete", "addressgroups.nftpolicy.io", "", YES),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", "", YES),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", "", YES),
    ("create", "events", "default", YES),
    ("create", "events", "REL", YES),
    ("create", "leases.coordination.k8s.io", "REL", YES),
    ("get", f"leases.coordination.k8s.io/{LEASE}", "REL", YES),
    ("update", f"leases.coordination.k8s.io/{LEASE}", "REL", YES),
    # must not
    ("get", "secrets", "REL", NO),
    ("list", "secrets", "*", NO),
    ("get", "configmaps", "REL", NO),
    ("create", "pods", "REL", NO),
    ("patch", "pods", "*", NO),
    ("delete", "pods", "*", NO),
    ("patch", "namespaces", "", NO),
    ("patch", "nodes", "", NO),
    ("patch", "networkpolicies.networking.k8s.io", "*", NO),
    ("create", "networkpolicies.networking.k8s.io", "*", NO),
    ("update", "noderules.nftpolicy.io", "", NO),
    ("patch", "noderules.nftpolicy.io#status", "", NO),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", "", NO),
    ("get", "leases.coordination.k8s.io/some-other-lease", "REL", NO),
    ("update", "leases.coordination.k8s.io/some-other-lease", "REL", NO),
    ("get", f"leases.coordination.k8s.io/{LEASE}", "kube-system", NO),
    ("create", "leases.coordination.k8s.io", "kube-system", NO),
    ("delete", f"leases.coordination.k8s.io/{LEASE}", "REL", NO),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", "", NO),
    ("impersonate", "serviceaccounts", "*", NO),
]
AGENT_MATRIX: list[tuple[str, str, str, bool]] = [
    ("get", "noderules.nftpolicy.io", "", YES),
    ("list", "noderules.nftpolicy.io", "", YES),
    ("watch", "noderules.nftpolicy.io", "", YES),
    ("get", "addressgroups.nftpolicy.io", "", YES),
    ("list", "addressgroups.nftpolicy.io", "", YES),
    ("watch", "addressgroups.nftpolicy.io", "", YES),
    ("patch", "noderules.nftpolicy.io#status", "", YES),
    # must not
    ("create", "addressgroups.nftpolicy.io", "", NO),
    ("patch", "addressgroups.nftpolicy.io", "", NO),
    ("delete", "addressgroups.nftpolicy.io", "", NO),
    ("create", "noderules.nftpolicy.io", "", NO),
    ("patch", "noderules.nftpolicy.io", "", NO),
    ("update", "noderules.nftpolicy.io", "", NO),
    ("delete", "noderules.nftpolicy.io", "", NO),
    ("update", "noderules.nftpolicy.io#status", "", NO),
    ("get", "secrets", "REL", NO),
    ("list", "secrets", "*", NO),
    ("list", "pods", "*", NO),
    ("list", "nodes", "", NO),
    ("list", "networkpolicies.networking.k8s.io", "*", NO),
    ("create", "events", "REL", NO),
    ("get", f"leases.coordination.k8s.io/{LEASE}", "REL", NO),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", "", NO),
]


def can_i(plane: TestControlPlane, token: str, verb: str, resource: str, ns: str) -> bool:
    resource, _, subresource = resource.partition("#")
    args = ["auth", "can-i", verb, resource]
    if subresource:
        args.append(f"--subresource={subresource}")
    if ns == "*":
        args.append("--all-namespaces")
    elif ns:
        args += ["--namespace", ns]
    proc = plane.kubectl(*args, token=token, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return answer == "yes"


def _ids(matrix: list[tuple[str, str, str, bool]]) -> list[str]:
    return [f"{'can' if ok else 'cannot'} {v} {r} in {ns or 'cluster'}" for v, r, ns, ok in matrix]


@pytest.mark.parametrize(
    ("verb", "resource", "ns", "allowed"), OPERATOR_MATRIX, ids=_ids(OPERATOR_MATRIX)
)
def test_operator_can_i(
    control_plane: TestControlPlane,
    release: Release,
    verb: str,
    resource: str,
    ns: str,
    allowed: bool,
) -> None:
    ns = release.namespace if ns == "REL" else ns
    assert can_i(control_plane, release.operator_token, verb, resource, ns) is allowed


@pytest.mark.parametrize(
    ("verb", "resource", "ns", "allowed"), AGENT_MATRIX, ids=_ids(AGENT_MATRIX)
)
def test_agent_can_i(
    control_plane: TestControlPlane,
    release: Release,
    verb: str,
    resource: str,
    ns: str,
    allowed: bool,
) -> None:
    ns = release.namespace if ns == "REL" else ns
    assert can_i(control_plane, release.agent_token, verb, resource, ns) is allowed


# ---- the real processes with exactly those tokens ------------------------------------------------


def token_kubeconfig(plane: TestControlPlane, token: str, path: Path) -> Path:
    """A kubeconfig with the CA and the bearer token only (no client certificate)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": plane.url, "certificate-authority": str(plane.ca_file)},
            }
        ],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa"}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def chart_args(
    plane: TestControlPlane, kind: str, name: str, ns: str, env: dict[str, str]
) -> list[str]:
    """The container arguments the installed chart gives, with $(VAR) expanded from ``env``."""
    obj = json.loads(plane.kubectl("-n", ns, "get", kind, name, "-o", "json").stdout)
    args: list[str] = obj["spec"]["template"]["spec"]["containers"][0]["args"]
    for var, value in env.items():
        args = [a.replace(f"$({var})", value) for a in args]
    assert not [a for a in args if "$(" in a], args
    return args


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def logs_text(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)[-4000:]}" for n in self.procs)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture
def undo() -> Iterator[list[Callable[[], object]]]:
    """Callbacks run at teardown, last first: the control plane is shared by the session, so
    the objects a test made are removed (nodes, pods) rather than left to other tests'
    operators."""
    callbacks: list[Callable[[], object]] = []
    yield callbacks
    for callback in reversed(callbacks):
        with contextlib.suppress(Exception):
            callback()


def _custom(plane: TestControlPlane) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(plane.api_client())


def _get(custom: client.CustomObjectsApi, plural: str, name: str) -> dict[str, Any] | None:
    try:
        obj = cast(dict[str, Any], custom.get_cluster_custom_object(GROUP, VERSION, plural, name))
    except client.exceptions.ApiException as e:
        if e.status == 404:
            return None
        raise
    return obj


def _add_node(
    plane: TestControlPlane,
    net: NetnsCluster,
    name: str,
    cidr: str,
    undo: list[Callable[[], object]],
) -> str:
    node = net.add_node(name, cidr)
    core = client.CoreV1Api(plane.api_client())
    core.create_node({"metadata": {"name": name}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
    undo.append(lambda: core.delete_node(name))
    core.patch_node_status(
        name, {"status": {"addresses": [{"type": "InternalIP", "address": node.ipv4}]}}
    )
    return net.node_netns(name)


def test_operator_and_agent_work_with_the_chart_rbac_only(
    control_plane: TestControlPlane,
    release: Release,
    netns_cluster: NetnsCluster,
    processes: Processes,
    tmp_path: Path,
    undo: list[Callable[[], object]],
) -> None:
    plane, ns = control_plane, release.namespace
    node = f"{ns.rsplit('-', 1)[1]}-n1"
    netns = _add_node(plane, netns_cluster, node, "10.211.0.0/24", undo)
    core = client.CoreV1Api(plane.api_client())
    app_ns = f"app-{ns.rsplit('-', 1)[1]}"
    core.create_namespace({"metadata": {"name": app_ns}})
    for pod, ip in (("a", "10.211.0.10"), ("b", "10.211.0.11")):
        core.create_namespaced_pod(
            app_ns,
            {
                "metadata": {"name": pod, "labels": {"app": pod}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "agnhost"}]},
            },
        )
        core.patch_namespaced_pod_status(
            pod, app_ns, {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
        )
        # no kubelet confirms a graceful deletion: delete at once
        undo.append(lambda p=pod: core.delete_namespaced_pod(p, app_ns, grace_period_seconds=0))

    full = f"{release.name}-nftpolicy"
    operator_kc = token_kubeconfig(plane, release.operator_token, tmp_path / "operator.kubeconfig")
    agent_kc = token_kubeconfig(plane, release.agent_token, tmp_path / "agent.kubeconfig")
    op_args = chart_args(plane, "deployment", f"{full}-operator", ns, {"POD_NAME": "operator-0"})
    agent_args = chart_args(plane, "daemonset", f"{full}-agent", ns, {"NODE_NAME": node})
    assert op_args[0] == "operator" and agent_args[0] == "agent"
    processes.start("operator", [*op_args, "--kubeconfig", str(operator_kc)])
    processes.start("agent", [*agent_args, "--kubeconfig", str(agent_kc), "--netns", netns])

    networking = client.NetworkingV1Api(plane.api_client())
    undo.append(lambda: networking.delete_namespaced_network_policy("a-from-b", app_ns))
    networking.create_namespaced_network_policy(
        app_ns,
        {
            "metadata": {"name": "a-from-b"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "a"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}],
            },
        },
    )
    custom = _custom(plane)

    def published() -> bool:
        rules = _get(custom, NODE_RULES, node)
        return rules is not None and any(
            p["key"] == f"{app_ns}/a-from-b" for p in rules["spec"].get("policies", [])
        )

    eventually(published, TIMEOUT, f"NodeRules {node} with the policy\n{processes.logs_text()}")
    listed = custom.list_cluster_custom_object(
        GROUP, VERSION, ADDRESS_GROUPS, label_selector=span_label(node)
    )
    groups = cast(dict[str, Any], listed)["items"]
    assert any("10.211.0.11" in g["spec"].get("addresses", []) for g in groups), groups

    def applied() -> bool:
        rules = _get(custom, NODE_RULES, node) or {}
        status = rules.get("status") or {}
        return (
            status.get("appliedGeneration") == rules["metadata"]["generation"]
            and status.get("error") == ""
            and published()
        )

    eventually(applied, TIMEOUT, f"the agent's status on {node}\n{processes.logs_text()}")
    table = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "table", FAMILY, TABLE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert table.returncode == 0 and "10.211.0.10" in table.stdout, table.stderr

    lease = client.CoordinationV1Api(plane.api_client()).read_namespaced_lease(LEASE, ns)
    assert lease.spec is not None and lease.spec.holder_identity == "operator-0"

    def enforced_event() -> bool:
        events = core.list_namespaced_event(app_ns, field_selector="involvedObject.name=a-from-b")
        return any(e.reason == "Enforced" for e in events.items)

    eventually(enforced_event, TIMEOUT, f"an Enforced event\n{processes.logs_text()}")
    for name in ("operator", "agent"):
        log = processes.log(name)
        # "orbidden": Forbidden (API), forbidden (kopf's messages), APIForbiddenError
        assert "orbidden" not in log, f"{name} was refused something:\n{log}"


def test_agent_without_rbac_says_forbidden(
    control_plane: TestControlPlane,
    release: Release,
    netns_cluster: NetnsCluster,
    processes: Processes,
    tmp_path: Path,
    undo: list[Callable[[], object]],
) -> None:
    plane, ns = control_plane, release.namespace
    node = f"{ns.rsplit('-', 1)[1]}-n2"
    netns = _add_node(plane, netns_cluster, node, "10.212.0.0/24", undo)
    token = plane.token_for(ns, "no-bindings")  # a ServiceAccount no role is bound to
    assert not can_i(plane, token, "list", "noderules.nftpolicy.io", "")
    kubeconfig = token_kubeconfig(plane, token, tmp_path / "nobody.kubeconfig")
    full = f"{release.name}-nftpolicy"
    args = chart_args(plane, "daemonset", f"{full}-agent", ns, {"NODE_NAME": node})
    processes.start("agent", [*args, "--kubeconfig", str(kubeconfig), "--netns", netns])
    eventually(
        lambda: "Forbidden" in processes.log("agent"),
        TIMEOUT,
        f"a Forbidden error\n{processes.logs_text()}",
    )
    log = processes.log("agent")
    assert any("403" in line and "Forbidden" in line for line in log.splitlines()), log
    assert "noderules" in log or "addressgroups" in log, log  # says what it could not read
    table = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "table", FAMILY, TABLE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert table.returncode != 0  # nothing was applied
