"""The Helm chart installed into a real kube-apiserver: its RBAC is enough, and no more.

``helm install`` puts the chart (CRDs, ServiceAccounts, ClusterRoles, the Lease Role, the
Deployment and DaemonSet) into the test control plane; no pod runs (there is no kubelet).
Then, with the bound tokens of the chart's two ServiceAccounts:

* a ``kubectl auth can-i --token`` matrix: what each must be able to do, and what it must not;
* the real ``nftpolicy operator`` and ``nftpolicy agent`` processes, started with the
  arguments the chart renders and a kubeconfig holding only that token, carry a NetworkPolicy
  through to NodeRules, AddressGroups, the agent's status, an Event and a kernel table (the
  agent applies in a scratch network namespace standing in for its node);
* an agent whose ServiceAccount has no binding says 403 Forbidden in its log;
* the chart's ValidatingAdmissionPolicy: with a token bound to a pod on node A (as the
  kubelet's are), the agent's ServiceAccount patches the status of NodeRules A and nothing
  else; a token without the node claim writes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client

from controller.agent.netns import netns as entered_netns
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
    policies = control_plane.kubectl(
        "get", "validatingadmissionpolicy,validatingadmissionpolicybinding", "-o", "name"
    ).stdout.split()
    assert (
        f"validatingadmissionpolicy.admissionregistration.k8s.io/{full}-agent-own-node" in policies
    )
    assert (
        f"validatingadmissionpolicybinding.admissionregistration.k8s.io/{full}-agent-own-node"
        in policies
    )


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
    ("create", "serviceaccounts/token", "REL", NO),
    ("update", "noderules.nftpolicy.io#status", "", NO),
    ("create", "validatingadmissionpolicies.admissionregistration.k8s.io", "", NO),
    ("delete", "validatingadmissionpolicybindings.admissionregistration.k8s.io", "", NO),
    ("list", "services", "*", NO),  # only in the DNS namespace (values dns.namespace)
]
AGENT_MATRIX: list[tuple[str, str, str, bool]] = [
    ("list", "noderules.nftpolicy.io", "", YES),
    ("watch", "noderules.nftpolicy.io", "", YES),
    ("list", "addressgroups.nftpolicy.io", "", YES),
    ("watch", "addressgroups.nftpolicy.io", "", YES),
    # RBAC cannot name the caller's node: the admission policy narrows this to its own node
    # (test_agent_patches_the_status_of_its_own_node_only)
    ("patch", "noderules.nftpolicy.io#status", "", YES),
    # its own DaemonSet, by name (uninstall versus restart; AGENT: the release's agent name)
    ("list", "daemonsets.apps/AGENT", "REL", YES),
    ("watch", "daemonsets.apps/AGENT", "REL", YES),
    # must not
    ("get", "noderules.nftpolicy.io", "", NO),  # the informers list and watch only
    ("list", "daemonsets.apps", "REL", NO),  # without the name: every DaemonSet
    ("watch", "daemonsets.apps", "REL", NO),
    ("get", "daemonsets.apps/AGENT", "REL", NO),
    ("list", "daemonsets.apps/some-other-daemonset", "REL", NO),
    ("list", "daemonsets.apps/AGENT", "kube-system", NO),
    ("patch", "daemonsets.apps/AGENT", "REL", NO),
    ("delete", "daemonsets.apps/AGENT", "REL", NO),
    ("get", "addressgroups.nftpolicy.io", "", NO),
    ("get", "noderules.nftpolicy.io#status", "", NO),
    ("list", "services", "*", NO),
    ("watch", "nodes", "", NO),
    ("impersonate", "serviceaccounts", "*", NO),
    ("create", "serviceaccounts/token", "REL", NO),
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
    resource = resource.replace("/AGENT", f"/{release.agent_sa}")  # the DaemonSet's name too
    assert can_i(control_plane, release.agent_token, verb, resource, ns) is allowed


def test_agent_lists_and_watches_its_daemonset_by_field_selector_only(
    control_plane: TestControlPlane, release: Release
) -> None:
    """What the agent's DaemonSet informer sends is allowed: a list and a watch with the field
    selector metadata.name (which resourceNames needs); the same without it is refused."""
    apps = client.AppsV1Api(control_plane.api_client(release.agent_token))
    name, ns = release.agent_sa, release.namespace  # the DaemonSet is named like its account
    by_name = f"metadata.name={name}"
    listed = apps.list_namespaced_daemon_set(ns, field_selector=by_name)
    assert [d.metadata.name for d in listed.items] == [name]
    stream = apps.list_namespaced_daemon_set(
        ns,
        field_selector=by_name,
        watch=True,
        timeout_seconds=1,
        resource_version=listed.metadata.resource_version,
        _preload_content=False,
    )
    assert stream.status == 200
    stream.release_conn()
    for kwargs in ({}, {"watch": True, "timeout_seconds": 1, "_preload_content": False}):
        with pytest.raises(client.exceptions.ApiException) as refused:
            apps.list_namespaced_daemon_set(ns, **kwargs)
        assert refused.value.status == 403, kwargs


# ---- the real processes with exactly those tokens ------------------------------------------------


def token_kubeconfig(
    plane: TestControlPlane, token: str, path: Path, server: str | None = None
) -> Path:
    """A kubeconfig with the CA and the bearer token only (no client certificate), for the
    API server at ``server`` (default: the control plane's URL)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {
                    "server": server or plane.url,
                    "certificate-authority": str(plane.ca_file),
                },
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


def chart_capabilities(plane: TestControlPlane, kind: str, name: str, ns: str) -> list[str]:
    """The capabilities the installed chart adds to the workload's container."""
    obj = json.loads(plane.kubectl("-n", ns, "get", kind, name, "-o", "json").stdout)
    context = obj["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert context["capabilities"]["drop"] == ["ALL"], context
    caps: list[str] = context["capabilities"]["add"]
    return caps


# include/uapi/linux/capability.h
_CAPABILITY_BITS = {"NET_BIND_SERVICE": 10, "NET_ADMIN": 12, "NET_RAW": 13, "SYS_ADMIN": 21}


def effective_capabilities(pid: int) -> set[str]:
    """The effective capabilities of process ``pid`` (of those a chart might grant)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(x for x in status.splitlines() if x.startswith("CapEff:")).split()[1], 16)
    others = mask & ~sum(1 << bit for bit in _CAPABILITY_BITS.values())
    assert others == 0, f"process {pid} has more capabilities: {mask:#x}"
    return {name for name, bit in _CAPABILITY_BITS.items() if mask & (1 << bit)}


@contextlib.contextmanager
def api_server_in(netns_name: str, plane: TestControlPlane) -> Iterator[str]:
    """The API server's URL as seen from network namespace ``netns_name``: a relay listening
    on that namespace's 127.0.0.1 (the serving certificate's address) and connecting to the
    API server from this one, so a process confined to the node's namespace (it cannot
    switch namespaces without CAP_SYS_ADMIN) reaches it, as a hostNetwork agent does."""
    with entered_netns(netns_name):
        listener = socket.create_server(("127.0.0.1", 0))
    target = ("127.0.0.1", int(plane.url.rsplit(":", 1)[1]))

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def accept() -> None:  # started here, so it connects from this namespace
        while True:
            try:
                client_sock, _ = listener.accept()
                upstream = socket.create_connection(target, timeout=10)
            except OSError:
                return
            upstream.settimeout(None)
            for src, dst in ((client_sock, upstream), (upstream, client_sock)):
                threading.Thread(target=pump, args=(src, dst), daemon=True).start()

    threading.Thread(target=accept, name="api-relay", daemon=True).start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], prefix: Sequence[str] = ()) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.procs[name] = subprocess.Popen(
            [*prefix, sys.executable, "-m", "controller.cli", *args],
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


def agent_pod_token(
    plane: TestControlPlane, release: Release, node: str, undo: list[Callable[[], object]]
) -> str:
    """The agent's token as the kubelet gives it: bound to an agent pod on ``node`` (no pod
    runs; the object is enough), so it carries the node-name claim the chart's admission
    policy checks."""
    core = client.CoreV1Api(plane.api_client())
    pod = f"agent-{node}"
    core.create_namespaced_pod(
        release.namespace,
        {
            "metadata": {"name": pod},
            "spec": {
                "nodeName": node,
                "serviceAccountName": release.agent_sa,
                "containers": [{"name": "agent", "image": "nftpolicy"}],
            },
        },
    )
    undo.append(lambda: core.delete_namespaced_pod(pod, release.namespace, grace_period_seconds=0))
    return plane.token_for(release.namespace, release.agent_sa, pod=pod)


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
    agent_token = agent_pod_token(plane, release, node, undo)
    stack = contextlib.ExitStack()
    undo.append(stack.close)
    relay = stack.enter_context(api_server_in(netns, plane))
    agent_kc = token_kubeconfig(plane, agent_token, tmp_path / "agent.kubeconfig", relay)
    op_args = chart_args(plane, "deployment", f"{full}-operator", ns, {"POD_NAME": "operator-0"})
    agent_args = chart_args(plane, "daemonset", f"{full}-agent", ns, {"NODE_NAME": node})
    assert op_args[0] == "operator" and agent_args[0] == "agent"
    processes.start("operator", [*op_args, "--kubeconfig", str(operator_kc)])
    # The agent runs in its node's namespace with exactly the capabilities the chart grants
    # (as root: capabilities added to another user are not effective), not as this root test.
    caps = chart_capabilities(plane, "daemonset", f"{full}-agent", ns)
    confined = [
        *("ip", "netns", "exec", netns, "setpriv", "--inh-caps=-all"),
        "--bounding-set=-all," + ",".join(f"+{c.lower()}" for c in caps),
    ]
    # (--state-dir: the node's directory is this test's, not the host's)
    own = ["--kubeconfig", str(agent_kc), "--state-dir", str(tmp_path / "state")]
    processes.start("agent", [*agent_args, *own], prefix=confined)

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
    # the chart's --daemonset: the agent sees its DaemonSet (uninstall versus restart)
    eventually(
        lambda: "a stop keeps the table unless it is deleted" in processes.log("agent"),
        TIMEOUT,
        f"the agent seeing its DaemonSet\n{processes.logs_text()}",
    )
    agent_log = processes.log("agent")
    assert "not permitted" not in agent_log, agent_log
    assert "conntrack clean-up failed" not in agent_log, agent_log
    assert effective_capabilities(processes.procs["agent"].pid) == set(caps)


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


def test_helm_uninstall_then_sigterm_removes_the_table(
    control_plane: TestControlPlane,
    netns_cluster: NetnsCluster,
    processes: Processes,
    tmp_path: Path,
    undo: list[Callable[[], object]],
) -> None:
    """The real order of an uninstall: ``helm uninstall`` deletes the DaemonSet, then the
    agent's RoleBindings and ServiceAccount (its token stops working), and only then would the
    garbage collector have the kubelet SIGTERM the pods. The agent, running with the chart's
    arguments and RBAC, saw the deletion on the watch it opened before and removes its table
    and saved ruleset. Catches: an agent that cannot watch its DaemonSet with the chart's
    Role, or that re-checks at SIGTERM (refused by then) and so never removes anything."""
    plane, suffix = control_plane, uuid.uuid4().hex[:6]
    name, ns = f"un-{suffix}", f"nftpolicy-un-{suffix}"
    home = tmp_path / "helm"
    _helm(plane, home, "install", name, str(CHART), "--namespace", ns, "--create-namespace")
    node = f"{suffix}-un"
    netns = _add_node(plane, netns_cluster, node, "10.213.0.0/24", undo)
    custom = _custom(plane)
    custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        NODE_RULES,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NodeRules",
            "metadata": {"name": node},
            "spec": {},
        },
    )
    undo.append(lambda: custom.delete_cluster_custom_object(GROUP, VERSION, NODE_RULES, node))
    sa = f"{name}-nftpolicy-agent"
    release = Release(name, ns, "", "", sa, "", "")
    token = agent_pod_token(plane, release, node, undo)
    stack = contextlib.ExitStack()
    undo.append(stack.close)
    relay = stack.enter_context(api_server_in(netns, plane))
    kubeconfig = token_kubeconfig(plane, token, tmp_path / "agent.kubeconfig", relay)
    args = chart_args(plane, "daemonset", sa, ns, {"NODE_NAME": node})
    assert f"--daemonset={ns}/{sa}" in args
    state = tmp_path / "state"
    processes.start(
        "agent",
        [*args, "--kubeconfig", str(kubeconfig), "--state-dir", str(state)],
        prefix=["ip", "netns", "exec", netns],
    )
    saved = state / f"ruleset-{node}.json"
    eventually(
        lambda: (
            "a stop keeps the table unless it is deleted" in processes.log("agent")
            and saved.exists()
        ),
        TIMEOUT,
        f"the agent applying and seeing its DaemonSet\n{processes.logs_text()}",
    )

    _helm(plane, home, "uninstall", name, "--namespace", ns)
    eventually(
        lambda: "stopping this agent will remove the table" in processes.log("agent"),
        TIMEOUT,
        f"the agent seeing its DaemonSet deleted\n{processes.logs_text()}",
    )
    # by now the agent's identity is gone: a check made at SIGTERM would be refused
    with pytest.raises(client.exceptions.ApiException) as refused:
        client.AppsV1Api(plane.api_client(token)).list_namespaced_daemon_set(
            ns, field_selector=f"metadata.name={sa}"
        )
    assert refused.value.status in (401, 403), refused.value
    proc = processes.procs.pop("agent")
    proc.terminate()  # what the kubelet does once the garbage collector deleted the pod
    assert proc.wait(10) == 0
    log = processes.log("agent")
    assert "uninstalled: table inet nftpolicy removed, saved ruleset removed" in log, log
    table = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "table", FAMILY, TABLE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert table.returncode != 0, f"the table survived helm uninstall:\n{table.stdout}"
    assert not saved.exists()


# ---- the admission policy: each agent writes its own node's status only ---------------------


def _patch_status(plane: TestControlPlane, token: str, name: str) -> str:
    """Merge-patch NodeRules ``name``'s status as the agent does; "" if allowed, else why not."""
    custom = client.CustomObjectsApi(plane.api_client(token))
    try:
        custom.patch_cluster_custom_object_status(
            GROUP, VERSION, NODE_RULES, name, {"status": {"error": "written by the test"}}
        )
    except client.exceptions.ApiException as e:
        return f"{e.status} {e.body}"
    return ""


def test_agent_patches_the_status_of_its_own_node_only(
    control_plane: TestControlPlane, release: Release, undo: list[Callable[[], object]]
) -> None:
    plane, suffix = control_plane, release.namespace.rsplit("-", 1)[1]
    node_a, node_b = f"{suffix}-va", f"{suffix}-vb"
    core, custom = client.CoreV1Api(plane.api_client()), _custom(plane)
    for node in (node_a, node_b):
        core.create_node({"metadata": {"name": node}})
        undo.append(lambda n=node: core.delete_node(n))
        custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            NODE_RULES,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "NodeRules",
                "metadata": {"name": node},
                "spec": {},
            },
        )
        undo.append(
            lambda n=node: custom.delete_cluster_custom_object(GROUP, VERSION, NODE_RULES, n)
        )
    token_a = agent_pod_token(plane, release, node_a, undo)
    whoami = json.loads(plane.kubectl("auth", "whoami", "-o", "json", token=token_a).stdout)
    extra = whoami["status"]["userInfo"]["extra"]
    assert extra["authentication.kubernetes.io/node-name"] == [node_a], whoami

    # RBAC lets every agent token patch every NodeRules status ...
    assert can_i(plane, token_a, "patch", f"noderules.nftpolicy.io/{node_b}#status", "")
    # ... the admission policy narrows that to its own node.
    assert _patch_status(plane, token_a, node_a) == ""
    got = _get(custom, NODE_RULES, node_a)
    assert got is not None and got["status"]["error"] == "written by the test"
    refused = _patch_status(plane, token_a, node_b)
    assert refused.startswith("403"), refused
    assert f"may only write the status of NodeRules {node_a}, not of {node_b}" in refused
    assert (_get(custom, NODE_RULES, node_b) or {}).get("status") is None

    # A token not bound to a pod carries no node: fail closed, even for "its own" node.
    for node in (node_a, node_b):
        refused = _patch_status(plane, release.agent_token, node)
        assert refused.startswith("403") and "no node-name claim" in refused, refused
    # The operator (another ServiceAccount) is not concerned by the policy; RBAC refuses it
    # status writes anyway.
    assert _patch_status(plane, release.operator_token, node_a).startswith("403")
