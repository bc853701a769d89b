"""What the real kube-apiserver of ``controller.testing.apiserver`` does for this project:
pods bound to nodes with kubelet-like status, NetworkPolicy defaulting, a CRD with a status
subresource, TokenRequest + RBAC, and data surviving an API server restart.

Needs the ``control_plane`` fixture (tests/integration/conftest.py): built binaries or Go.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from controller.testing.apiserver import TestControlPlane

T = TypeVar("T")

GROUP = "nftpolicy.io"
VERSION = "v1alpha1"
PLURAL = "testwidgets"
CRD_NAME = f"{PLURAL}.{GROUP}"


def unique(prefix: str) -> str:
    """A DNS-1123 name not used before (namespaces never finish deleting without KCM)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def eventually(fn: Callable[[], T], *, timeout: float = 15.0, what: str = "condition") -> T:
    """Call ``fn`` until it returns without AssertionError/ApiException; return its result."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (AssertionError, ApiException) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {timeout} s: {exc}") from exc
            time.sleep(0.2)


@pytest.fixture
def admin(control_plane: TestControlPlane) -> Iterator[k8s.ApiClient]:
    """An admin (system:masters) API client."""
    with control_plane.api_client() as api:
        yield api


@pytest.fixture
def namespace(admin: k8s.ApiClient) -> str:
    """A fresh namespace (never deleted: it would stay Terminating without a controller)."""
    name = unique("t")
    k8s.CoreV1Api(admin).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    return name


def test_control_plane_basics(control_plane: TestControlPlane, admin: k8s.ApiClient) -> None:
    assert control_plane.url.startswith("https://127.0.0.1:")
    assert control_plane.ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "client-certificate-data" in control_plane.kubeconfig.read_text()
    info = k8s.VersionApi(admin).get_code()
    assert info.git_version.startswith("v1."), info.git_version
    assert not info.git_version.startswith("v0.0.0"), "version ldflags missing"
    assert info.major == "1"
    # System namespaces come from the API server's own post-start controllers.
    names = {ns.metadata.name for ns in k8s.CoreV1Api(admin).list_namespace().items}
    assert {"default", "kube-system", "kube-public"} <= names
    # RBAC bootstrap policy is there, but aggregated ClusterRoles (admin, edit, view) stay empty:
    # filling them is kube-controller-manager's clusterrole-aggregation controller's job.
    rbac = k8s.RbacAuthorizationV1Api(admin)
    assert rbac.read_cluster_role("system:aggregate-to-view").rules
    assert not rbac.read_cluster_role("view").rules
    who = k8s.AuthenticationV1Api(admin).create_self_subject_review(k8s.V1SelfSubjectReview())
    assert "system:masters" in who.status.user_info.groups


def test_node_pod_and_kubelet_like_status(admin: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(admin)
    node = unique("node")
    core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=node, labels={"zone": "a"})))
    core.patch_node_status(
        node, {"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}}
    )
    got_node = core.read_node(node)
    assert got_node.metadata.labels["zone"] == "a"
    assert [(a.type, a.address) for a in got_node.status.addresses] == [
        ("InternalIP", "192.0.2.10")
    ]

    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="web", labels={"app": "web"}),
        spec=k8s.V1PodSpec(
            node_name=node,
            containers=[
                k8s.V1Container(
                    name="c",
                    image="example.invalid/web:1",
                    ports=[k8s.V1ContainerPort(container_port=80)],
                )
            ],
        ),
    )
    created = core.create_namespaced_pod(namespace, pod)
    assert created.spec.node_name == node
    assert created.status.phase == "Pending"
    assert not created.status.pod_ip

    core.patch_namespaced_pod_status(
        "web",
        namespace,
        {
            "status": {
                "phase": "Running",
                "podIP": "10.244.1.7",
                "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00:10:244:1::7"}],
                "hostIP": "192.0.2.10",
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        },
    )
    got = core.read_namespaced_pod("web", namespace)
    assert got.status.phase == "Running"
    assert got.status.pod_ip == "10.244.1.7"
    assert [p.ip for p in got.status.pod_ips] == ["10.244.1.7", "fd00:10:244:1::7"]
    assert got.status.host_ip == "192.0.2.10"
    assert got.spec.node_name == node
    assert {c.type: c.status for c in got.status.conditions}["Ready"] == "True"

    # IPs are validated; the phase is not.
    with pytest.raises(ApiException) as bad:
        core.patch_namespaced_pod_status("web", namespace, {"status": {"podIP": "10.244.1.300"}})
    assert bad.value.status == 422
    # A spec change in a status write is ignored; a spec update may not move the pod.
    core.patch_namespaced_pod_status("web", namespace, {"spec": {"nodeName": "elsewhere"}})
    assert core.read_namespaced_pod("web", namespace).spec.node_name == node
    with pytest.raises(ApiException) as moved:
        core.patch_namespaced_pod("web", namespace, {"spec": {"nodeName": "elsewhere"}})
    assert moved.value.status == 422
    # Pitfall for fake kubelets: when podIP differs from podIPs[0] the legacy podIP wins and
    # podIPs is silently replaced by [podIP] (v1 conversion), losing the IPv6 address.
    core.patch_namespaced_pod_status(
        "web", namespace, {"status": {"podIP": "10.244.1.8", "podIPs": [{"ip": "10.244.1.9"}]}}
    )
    got = core.read_namespaced_pod("web", namespace)
    assert (got.status.pod_ip, [p.ip for p in got.status.pod_ips]) == ("10.244.1.8", ["10.244.1.8"])
    # A field selector on spec.nodeName, as a node agent's watch uses.
    on_node = core.list_namespaced_pod(namespace, field_selector=f"spec.nodeName={node}")
    assert [p.metadata.name for p in on_node.items] == ["web"]


def test_network_policy_defaulting(admin: k8s.ApiClient, namespace: str) -> None:
    net = k8s.NetworkingV1Api(admin)
    body: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-web"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"port": 80}, {"port": "dns", "protocol": "UDP"}],
                }
            ],
        },
    }
    net.create_namespaced_network_policy(namespace, body)
    got = net.read_namespaced_network_policy("allow-web", namespace)
    assert got.spec.policy_types == ["Ingress"]  # defaulted: no egress rules
    ports = got.spec.ingress[0].ports
    assert [(p.protocol, p.port) for p in ports] == [("TCP", 80), ("UDP", "dns")]
    assert got.spec.ingress[0]._from[0].pod_selector.match_labels == {"role": "client"}

    egress: dict[str, Any] = {
        "metadata": {"name": "egress-only"},
        "spec": {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]},
    }
    net.create_namespaced_network_policy(namespace, egress)
    got = net.read_namespaced_network_policy("egress-only", namespace)
    assert got.spec.policy_types == ["Ingress", "Egress"]  # egress rules present
    assert got.spec.egress[0].to[0].ip_block.cidr == "10.0.0.0/8"

    with pytest.raises(ApiException) as bad:
        net.create_namespaced_network_policy(
            namespace,
            {
                "metadata": {"name": "bad-cidr"},
                "spec": {
                    "podSelector": {},
                    "egress": [{"to": [{"ipBlock": {"cidr": "300.0.0.0/8"}}]}],
                },
            },
        )
    assert bad.value.status == 422


def _widget_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "plural": PLURAL,
                "singular": "testwidget",
                "kind": "TestWidget",
                "listKind": "TestWidgetList",
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["port"],
                                    "properties": {
                                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                        "cidrs": {"type": "array", "items": {"type": "string"}},
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {
                                        "observedGeneration": {"type": "integer"},
                                        "ready": {"type": "boolean"},
                                    },
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def test_crd_with_status_subresource(admin: k8s.ApiClient) -> None:
    ext = k8s.ApiextensionsV1Api(admin)
    try:
        ext.create_custom_resource_definition(_widget_crd())
    except ApiException as exc:
        if exc.status != 409:
            raise

    def established() -> None:
        crd = ext.read_custom_resource_definition(CRD_NAME)
        conds = {c.type: c.status for c in (crd.status.conditions or [])}
        assert conds.get("Established") == "True", conds

    eventually(established, what="CRD Established")
    co = k8s.CustomObjectsApi(admin)
    name = unique("w")
    obj = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TestWidget",
        "metadata": {"name": name},
        "spec": {"port": 8080, "cidrs": ["10.0.0.0/8"], "bogus": True},
        "status": {"ready": True},
    }
    eventually(
        lambda: co.create_cluster_custom_object(GROUP, VERSION, PLURAL, obj),
        what="create custom object (REST handler installed)",
    )
    got = co.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    assert got["spec"] == {"port": 8080, "cidrs": ["10.0.0.0/8"]}  # unknown field pruned
    assert "status" not in got  # status is ignored on create with the subresource
    assert "namespace" not in got["metadata"]
    assert got["metadata"]["generation"] == 1

    co.patch_cluster_custom_object_status(
        GROUP, VERSION, PLURAL, name, {"status": {"ready": True, "observedGeneration": 1}}
    )
    got = co.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    assert got["status"] == {"ready": True, "observedGeneration": 1}
    assert got["metadata"]["generation"] == 1  # status writes do not bump generation

    co.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"spec": {"port": 9090}})
    got = co.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    assert got["metadata"]["generation"] == 2
    assert got["status"]["ready"] is True

    with pytest.raises(ApiException) as bad:
        co.create_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "TestWidget",
                "metadata": {"name": unique("bad")},
                "spec": {"port": 0},
            },
        )
    assert bad.value.status == 422
    listed = co.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert name in {item["metadata"]["name"] for item in listed["items"]}


def test_token_request_and_rbac(
    control_plane: TestControlPlane, admin: k8s.ApiClient, namespace: str
) -> None:
    token = control_plane.token_for(namespace, "reader")
    assert token.count(".") == 2  # a JWT
    # token_for is idempotent about the ServiceAccount it creates.
    assert control_plane.token_for(namespace, "reader", expiration_seconds=600)
    user = f"system:serviceaccount:{namespace}:reader"

    with control_plane.api_client(token=token) as sa_api:
        who = k8s.AuthenticationV1Api(sa_api).create_self_subject_review(k8s.V1SelfSubjectReview())
        assert who.status.user_info.username == user
        sa_core = k8s.CoreV1Api(sa_api)
        with pytest.raises(ApiException) as denied:
            sa_core.list_namespaced_pod(namespace)
        assert denied.value.status == 403

        rbac = k8s.RbacAuthorizationV1Api(admin)
        role = unique("pod-reader")
        rbac.create_cluster_role(
            {
                "metadata": {"name": role},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
                ],
            }
        )
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": role},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            }
        )
        pods = eventually(lambda: sa_core.list_namespaced_pod(namespace), what="list after grant")
        assert pods.items == []
        with pytest.raises(ApiException) as still_denied:
            sa_core.delete_collection_namespaced_pod(namespace)
        assert still_denied.value.status == 403

    # A token from another server's key (or garbage) is rejected.
    with control_plane.api_client(token=token[:-4] + "AAAA") as forged:
        with pytest.raises(ApiException) as unauth:
            k8s.CoreV1Api(forged).list_namespaced_pod(namespace)
        assert unauth.value.status == 401


def test_kubectl_auth_can_i_with_token(control_plane: TestControlPlane, namespace: str) -> None:
    if control_plane.kubectl_path is None:
        pytest.skip("no kubectl")
    token = control_plane.token_for(namespace, "can-i")
    denied = control_plane.kubectl(
        "auth", "can-i", "list", "pods", "-n", namespace, token=token, check=False
    )
    assert denied.stdout.strip() == "no", denied
    # Not the `view` ClusterRole: without kube-controller-manager it has no rules.
    control_plane.kubectl(
        "create", "role", "pod-lister", "-n", namespace, "--verb=get,list", "--resource=pods"
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        "pod-lister",
        "-n",
        namespace,
        "--role=pod-lister",
        f"--serviceaccount={namespace}:can-i",
    )
    assert (
        control_plane.kubectl(
            "auth", "can-i", "delete", "pods", "-n", namespace, token=token, check=False
        ).stdout.strip()
        == "no"
    )

    def allowed() -> None:
        res = control_plane.kubectl(
            "auth", "can-i", "list", "pods", "-n", namespace, token=token, check=False
        )
        assert res.stdout.strip() == "yes", res

    eventually(allowed, what="kubectl auth can-i after RoleBinding")


def test_restart_apiserver_keeps_data(
    control_plane: TestControlPlane, admin: k8s.ApiClient, namespace: str
) -> None:
    # Last in this module: the other tests share the session's control plane.
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="keep"), data={"k": "v"})
    )
    url, ca = control_plane.url, control_plane.ca_file.read_bytes()
    control_plane.restart_apiserver()
    assert control_plane.readyz()
    assert (control_plane.url, control_plane.ca_file.read_bytes()) == (url, ca)
    # The client made before the restart reconnects (its pooled connection is dead).
    cm = eventually(
        lambda: core.read_namespaced_config_map("keep", namespace), what="read after restart"
    )
    assert cm.data == {"k": "v"}
    with control_plane.api_client() as fresh:
        names = {n.metadata.name for n in k8s.CoreV1Api(fresh).list_namespace().items}
    assert namespace in names
