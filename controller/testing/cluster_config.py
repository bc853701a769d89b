"""What the local real-node cluster looks like: addresses, paths, configs and command lines.

Pure (no I/O): ``cluster.py`` turns this into namespaces, files and processes. The layout (see
``shared/notes/real-node-cluster.md`` for the research behind it)::

    host netns            socat 127.0.0.1:PORT --(nsenter, one process per connection)--+
    netns NAME-cp         bridge lan0 10.250.0.1/24 <------------------------------------+
                          etcd (127.0.0.1:2379), kube-apiserver (:6443), controller-manager,
                          scheduler; routes 10.244.I.0/24 via each node
    netns NAME-node-I     eth0 10.250.0.(10+I)/24 (veth to lan0), ip_forward, default route to
    (+ mount, uts ns)     the cp (which does not forward: stray packets die there), routes to
                          the other nodes' pod CIDRs; containerd + kubelet + kube-proxy sharing
                          one mount namespace with private /run, /var/lib and /var/log
    pods                  ptp veth per pod from 10.244.I.0/24: pod-to-pod traffic, same node or
                          not, is routed by the node namespace (its nftables forward hook sees
                          it); nothing enforces NetworkPolicy but the agent under test

IPv4 only. Node ``I`` (1-based) is ``NAME-node-I`` with pod CIDR ``10.244.I.0/24``; the control
plane is not a node.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from controller.testing.support import CertSpec

K8S_VERSION = "v1.34.4"
DEFAULT_NAME = "nftp"
DEFAULT_NODES = 3
MAX_NODES = 200
LAN_PREFIX = 24
CP_IP = "10.250.0.1"
NODE_IP_BASE = "10.250.0.10"  # node I is NODE_IP_BASE + I
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
API_PORT = 6443
ETCD_CLIENT = "http://127.0.0.1:2379"
ETCD_PEER = "http://127.0.0.1:2380"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"
CNI_BIN_DIR = "/usr/lib/cni"
CNI_PLUGINS = ("ptp", "host-local", "portmap", "loopback")
LAN_BRIDGE = "lan0"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CLUSTER_DOMAIN = "cluster.local"
SERVICE_ACCOUNT_ISSUER = f"https://kubernetes.default.svc.{CLUSTER_DOMAIN}"

# Directories every node gets a private copy of (bind mounts inside its mount namespace):
# containerd's shim sockets (/run/containerd/s), runc state, CNI's IPAM and cache, kubelet's
# pod directories and /var/log/{pods,containers} (fixed paths) would otherwise be shared.
PRIVATE_DIRS = ("/run", "/var/lib", "/var/log")

# protectKernelDefaults makes kubelet check (not set) these; without it kubelet would write the
# host's real values. They are bind-mounted read-only from files in each node's mount namespace.
KUBELET_SYSCTLS: Mapping[str, str] = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}

CONTROL_PLANE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
NODE_BINARIES = ("kubelet", "kube-proxy")
K8S_BINARIES = CONTROL_PLANE_BINARIES + NODE_BINARIES

# Host tools and the Debian package that has each.
HOST_TOOLS: Mapping[str, str] = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "socat": "socat",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "ip": "iproute2",
    "iptables": "iptables",
    "sysctl": "procps",
    "hostname": "hostname",
    "sleep": "coreutils",
    "openssl": "openssl",
}

_NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,30}[a-z0-9])?")
_NODE_NETNS_RE = r"-node-[0-9]+"


class PlanError(ValueError):
    """The requested cluster cannot be laid out (bad name, node count or state directory)."""


@dataclass(frozen=True)
class NodePlan:
    """One node: its names, addresses and cgroup."""

    index: int
    name: str
    ip: str
    pod_cidr: str
    pod_gateway: str
    cp_veth: str

    @property
    def netns(self) -> str:
        """The node's network namespace (``ip netns`` name); the same as the node's name."""
        return self.name

    @property
    def cgroup(self) -> str:
        """kubelet's ``cgroupRoot``: every pod cgroup lives below it, in every hierarchy."""
        return f"/{self.name}"


@dataclass(frozen=True)
class ClusterPlan:
    """The whole cluster: a name (prefix of every namespace, cgroup and node), a state
    directory (certificates, configs, node runtime directories, logs) and its nodes."""

    name: str
    state_dir: Path
    nodes: tuple[NodePlan, ...]

    @property
    def cp_netns(self) -> str:
        """The control plane's network namespace."""
        return f"{self.name}-cp"

    @property
    def netns_names(self) -> tuple[str, ...]:
        """Every network namespace of this cluster, control plane first."""
        return (self.cp_netns, *(n.netns for n in self.nodes))

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "cluster.json"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig for the host (server: the 127.0.0.1 forwarder)."""
        return self.state_dir / "kubeconfig"

    @property
    def etcd_dir(self) -> Path:
        return self.state_dir / "etcd"

    def component_kubeconfig(self, component: str) -> Path:
        """The kubeconfig a control-plane component or node uses (server: the LAN address)."""
        return self.state_dir / "kubeconfigs" / f"{component}.kubeconfig"

    def node_dir(self, node: NodePlan) -> Path:
        return self.state_dir / "nodes" / node.name

    def log(self, component: str, node: NodePlan | None = None) -> Path:
        if node is None:
            return self.logs_dir / f"{component}.log"
        return self.logs_dir / node.name / f"{component}.log"

    def pki(self, name: str) -> Path:
        """A file of the PKI directory (``ca.crt``, ``admin.key``...)."""
        return self.pki_dir / name

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise PlanError(f"cluster {self.name} has no node {name}")


def _hidden_in_nodes(path: PurePosixPath) -> str | None:
    """The private directory that hides ``path`` inside the nodes' mount namespaces, if any."""
    for private in (*PRIVATE_DIRS, "/var/run"):
        if path == PurePosixPath(private) or PurePosixPath(private) in path.parents:
            return private
    return None


def plan_cluster(name: str, node_count: int, state_dir: Path) -> ClusterPlan:
    """Lay out a cluster of ``node_count`` nodes named ``NAME-node-1..N``.

    Raises:
        PlanError: a name that would not make valid node names, a node count outside
            1..MAX_NODES, or a state directory the nodes could not see.
    """
    if not _NAME_RE.fullmatch(name):
        raise PlanError(
            f"cluster name {name!r}: use 1-32 lowercase letters, digits and '-', starting "
            "with a letter (it prefixes node names, which must be DNS labels)"
        )
    if not 1 <= node_count <= MAX_NODES:
        raise PlanError(f"--nodes {node_count}: choose 1..{MAX_NODES}")
    if not state_dir.is_absolute():
        raise PlanError(f"state directory {state_dir} must be an absolute path")
    hidden = _hidden_in_nodes(PurePosixPath(state_dir))
    if hidden is not None:
        raise PlanError(
            f"state directory {state_dir} is under {hidden}, which every node replaces with "
            "its own private copy (so the node's processes could not read their configs); "
            "choose another, e.g. /var/tmp/..."
        )
    base = ipaddress.IPv4Address(NODE_IP_BASE)
    nodes = []
    for i in range(1, node_count + 1):
        cidr = ipaddress.IPv4Network(f"10.244.{i}.0/24")
        nodes.append(
            NodePlan(
                index=i,
                name=f"{name}-node-{i}",
                ip=str(base + i),
                pod_cidr=str(cidr),
                pod_gateway=str(cidr.network_address + 1),
                cp_veth=f"veth{i}",
            )
        )
    return ClusterPlan(name=name, state_dir=state_dir, nodes=tuple(nodes))


def default_state_dir(name: str) -> Path:
    """Where a cluster keeps its state unless told otherwise."""
    return Path("/var/tmp") / f"{name}-cluster"


def is_cluster_netns(cluster_name: str, netns: str) -> bool:
    """Whether ``netns`` (an ``ip netns`` name) belongs to cluster ``cluster_name``."""
    return netns == f"{cluster_name}-cp" or bool(
        re.fullmatch(re.escape(cluster_name) + _NODE_NETNS_RE, netns)
    )


# ---- binaries ----------------------------------------------------------------------------------


def resolve_binaries(
    names: Iterable[str], dirs: Sequence[Path], is_executable: Callable[[Path], bool]
) -> tuple[dict[str, Path], list[str]]:
    """Look each binary up by name in ``dirs`` (first match wins).

    Returns the found paths and the names found nowhere.
    """
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in names:
        for directory in dirs:
            if is_executable(directory / name):
                found[name] = directory / name
                break
        else:
            missing.append(name)
    return found, missing


# ---- PKI ---------------------------------------------------------------------------------------


def certificates(plan: ClusterPlan) -> tuple[CertSpec, ...]:
    """Every certificate the cluster needs, issued by one CA.

    Users are identified by subject (RBAC's default bindings know ``system:kube-*`` users and
    ``system:nodes``/``system:node:NAME`` for the Node authorizer); each node has one cert for
    both kubelet's serving endpoint (SAN = its IP and name) and its client identity.
    """
    specs = [
        CertSpec(
            "apiserver",
            "kube-apiserver",
            server=True,
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
            ),
            ips=("127.0.0.1", CP_IP, KUBERNETES_SERVICE_IP),
        ),
        CertSpec(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            "system:masters",
            client=True,
        ),
        CertSpec("admin", f"{plan.name}-admin", "system:masters", client=True),
        CertSpec("kube-controller-manager", "system:kube-controller-manager", client=True),
        CertSpec("kube-scheduler", "system:kube-scheduler", client=True),
        CertSpec("kube-proxy", "system:kube-proxy", client=True),
    ]
    specs += [
        CertSpec(
            node.name,
            f"system:node:{node.name}",
            "system:nodes",
            server=True,
            client=True,
            dns_names=(node.name,),
            ips=(node.ip,),
        )
        for node in plan.nodes
    ]
    return tuple(specs)


def api_url_lan() -> str:
    """The API server's URL inside the cluster's namespaces."""
    return f"https://{CP_IP}:{API_PORT}"


def api_url_host(port: int) -> str:
    """The API server's URL on the host: the forwarder on loopback."""
    return f"https://127.0.0.1:{port}"


# ---- networking --------------------------------------------------------------------------------


def cp_ip_batch(plan: ClusterPlan) -> list[str]:
    """``ip -batch`` lines run in the control-plane namespace: the LAN bridge, one veth per node
    (its peer created directly inside the node's namespace as ``eth0``, so no interface ever
    exists in the host's namespace) and routes to the pod CIDRs (replies to pods, webhooks)."""
    lines = [
        "link set lo up",
        f"link add {LAN_BRIDGE} type bridge",
        f"addr add {CP_IP}/{LAN_PREFIX} dev {LAN_BRIDGE}",
        f"link set {LAN_BRIDGE} up",
    ]
    for node in plan.nodes:
        lines += [
            f"link add {node.cp_veth} type veth peer name eth0 netns {node.netns}",
            f"link set {node.cp_veth} master {LAN_BRIDGE}",
            f"link set {node.cp_veth} up",
        ]
    lines += [f"route add {node.pod_cidr} via {node.ip}" for node in plan.nodes]
    return lines


def node_ip_batch(plan: ClusterPlan, node: NodePlan) -> list[str]:
    """``ip -batch`` lines run in a node's namespace (after ``cp_ip_batch`` made its eth0).

    The default route matters: a host-network process connecting to a Service ClusterIP needs
    a route before kube-proxy's OUTPUT DNAT sees the packet.
    """
    lines = [
        "link set lo up",
        f"addr add {node.ip}/{LAN_PREFIX} dev eth0",
        "link set eth0 up",
        f"route add default via {CP_IP}",
    ]
    lines += [f"route add {other.pod_cidr} via {other.ip}" for other in plan.nodes if other != node]
    return lines


NODE_SYSCTLS: Mapping[str, str] = {"net.ipv4.ip_forward": "1"}


def cni_config(plan: ClusterPlan, node: NodePlan) -> dict[str, Any]:
    """The node's CNI network: ``ptp`` (a routed veth per pod, host-local IPAM on the node's pod
    CIDR, no masquerade) and ``portmap`` for hostPorts. Nothing here enforces NetworkPolicy."""
    return {
        "cniVersion": "1.0.0",
        "name": plan.name,
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.pod_gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


# ---- node mount namespace ----------------------------------------------------------------------


@dataclass(frozen=True)
class BindMount:
    """``mount --bind source target`` inside a node's mount namespace (then read-only)."""

    source: Path
    target: str
    read_only: bool = False


def node_private_dir(plan: ClusterPlan, node: NodePlan, private: str) -> Path:
    """The host directory that is ``private`` (e.g. ``/var/lib``) inside ``node``."""
    return plan.node_dir(node) / "root" / private.strip("/")


def node_sysctl_file(plan: ClusterPlan, node: NodePlan, key: str) -> Path:
    """The file whose content a node's kubelet reads as ``/proc/sys/<key>``."""
    return plan.node_dir(node) / "sysctl" / key.replace("/", ".")


def node_mounts(plan: ClusterPlan, node: NodePlan) -> tuple[BindMount, ...]:
    """The bind mounts that make a node's mount namespace its own."""
    mounts = [BindMount(node_private_dir(plan, node, d), d) for d in PRIVATE_DIRS]
    mounts += [
        BindMount(node_sysctl_file(plan, node, key), f"/proc/sys/{key}", read_only=True)
        for key in KUBELET_SYSCTLS
    ]
    return tuple(mounts)


def mount_argvs(mount: BindMount) -> list[list[str]]:
    """The ``mount`` commands for one bind mount."""
    argvs = [["mount", "--bind", str(mount.source), mount.target]]
    if mount.read_only:
        argvs.append(["mount", "-o", "remount,bind,ro", mount.target])
    return argvs


# ---- configs -----------------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(doc: Mapping[str, Any], _prefix: str = "") -> str:
    """A small TOML writer (tables and scalars/arrays) for containerd's config."""
    scalars = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, Mapping)]
    out = ""
    if _prefix and scalars:
        out += f"[{_prefix}]\n"
    out += "".join(line + "\n" for line in scalars)
    for key, value in doc.items():
        if isinstance(value, Mapping):
            quoted = json.dumps(key) if "." in key else key
            out += to_toml(value, f"{_prefix}.{quoted}" if _prefix else quoted)
    return out


def cni_conf_dir(plan: ClusterPlan, node: NodePlan) -> Path:
    return plan.node_dir(node) / "cni"


def containerd_config(plan: ClusterPlan, node: NodePlan) -> dict[str, Any]:
    """containerd 1.6 config (version 2). Standard paths: /run and /var/lib are the node's own.

    ``restrict_oom_score_adj``: root here lacks CAP_SYS_RESOURCE, so negative OOM scores
    (kubelet asks -998 for sandboxes) would fail; ``SystemdCgroup = false``: no systemd, and
    kubelet uses cgroupfs; ``netns_mounts_under_state_dir``: pod netns files in /run/containerd.
    """
    cri = {
        "sandbox_image": PAUSE_IMAGE,
        "disable_apparmor": True,
        "restrict_oom_score_adj": True,
        "netns_mounts_under_state_dir": True,
        "enable_selinux": False,
        "stream_server_address": "127.0.0.1",
        "cni": {"bin_dir": CNI_BIN_DIR, "conf_dir": str(cni_conf_dir(plan, node))},
        "containerd": {
            "snapshotter": "overlayfs",
            "default_runtime_name": "runc",
            "runtimes": {
                "runc": {
                    "runtime_type": "io.containerd.runc.v2",
                    "options": {"SystemdCgroup": False},
                }
            },
        },
    }
    return {
        "version": 2,
        "root": "/var/lib/containerd",
        "state": "/run/containerd",
        "oom_score": 0,
        # Snapshotters that only log errors on this machine, and tracing nobody collects.
        "disabled_plugins": [
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.tracing.processor.v1.otlp",
            "io.containerd.internal.v1.tracing",
        ],
        "grpc": {"address": CONTAINERD_SOCKET},
        "plugins": {"io.containerd.grpc.v1.cri": cri},
    }


def kubelet_config(plan: ClusterPlan, node: NodePlan) -> dict[str, Any]:
    """KubeletConfiguration for one node (traps of this machine explained inline)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(plan.pki(f"{node.name}.crt")),
        "tlsPrivateKeyFile": str(plan.pki(f"{node.name}.key")),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(plan.pki("ca.crt"))},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        # cgroup v1 hybrid host without systemd; one root per node, or each kubelet would
        # garbage-collect the other nodes' pod cgroups as orphans.
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup,
        "failCgroupV1": False,
        "failSwapOn": False,
        # Check, never write, the host-wide kernel tunables (faked per node, KUBELET_SYSCTLS).
        "protectKernelDefaults": True,
        # No CAP_SYS_RESOURCE: the default -999 cannot be set.
        "oomScoreAdj": 0,
        # No registry: an image collected could never be pulled back.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # The host disk is shared with everything else; evict only when nearly full.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
            "imagefs.inodesFree": "1%",
        },
        "clusterDomain": CLUSTER_DOMAIN,
        # No cluster DNS; pods get an empty resolv.conf rather than the host's resolvers.
        "resolvConf": "",
        "podLogsDir": "/var/log/pods",
        "registerNode": True,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "localStorageCapacityIsolation": True,
    }


def kube_proxy_config(plan: ClusterPlan, node: NodePlan) -> dict[str, Any]:
    """KubeProxyConfiguration: iptables mode inside the node's namespace.

    conntrack all zero: kube-proxy would otherwise write nf_conntrack_max and the module's
    hashsize, which are host-wide (and fail from a namespace) — and leave the per-namespace
    timeouts at the kernel's defaults.
    """
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(plan.component_kubeconfig("kube-proxy"))},
        "hostnameOverride": node.name,
        "bindAddress": node.ip,
        "clusterCIDR": CLUSTER_CIDR,
        "oomScoreAdj": 0,
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def node_manifest(node: NodePlan) -> dict[str, Any]:
    """The Node object created before its kubelet starts, with the fixed pod CIDR that the
    routes and the CNI config already use (kubelet takes the object over on registration)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name},
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
    }


def node_ready(node: Mapping[str, Any]) -> bool:
    """Whether a Node object (as a dict) has condition Ready=True."""
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# ---- command lines -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """A long-running process: where it runs (``node`` None: the control-plane namespace) and
    its command line (run through nsenter by the shell)."""

    name: str
    argv: tuple[str, ...]
    node: str | None = None


def control_plane_components(plan: ClusterPlan, bins: Mapping[str, Path]) -> tuple[Component, ...]:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler, in start order."""
    pki = plan.pki

    def kubeconfig_flags(component: str) -> tuple[str, ...]:
        path = plan.component_kubeconfig(component)
        return (
            f"--kubeconfig={path}",
            f"--authentication-kubeconfig={path}",
            f"--authorization-kubeconfig={path}",
        )

    etcd = (
        str(bins["etcd"]),
        "--name=default",
        f"--data-dir={plan.etcd_dir}",
        f"--listen-client-urls={ETCD_CLIENT}",
        f"--advertise-client-urls={ETCD_CLIENT}",
        f"--listen-peer-urls={ETCD_PEER}",
        f"--initial-advertise-peer-urls={ETCD_PEER}",
        f"--initial-cluster=default={ETCD_PEER}",
        "--log-level=warn",
        "--unsafe-no-fsync=true",  # throwaway data; fsync would make every write wait on disk
    )
    apiserver = (
        str(bins["kube-apiserver"]),
        f"--etcd-servers={ETCD_CLIENT}",
        "--bind-address=0.0.0.0",  # of the cp namespace: its loopback and the LAN
        f"--advertise-address={CP_IP}",
        f"--secure-port={API_PORT}",
        f"--tls-cert-file={pki('apiserver.crt')}",
        f"--tls-private-key-file={pki('apiserver.key')}",
        f"--client-ca-file={pki('ca.crt')}",
        f"--kubelet-client-certificate={pki('apiserver-kubelet-client.crt')}",
        f"--kubelet-client-key={pki('apiserver-kubelet-client.key')}",
        f"--kubelet-certificate-authority={pki('ca.crt')}",
        "--kubelet-preferred-address-types=InternalIP",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki('sa.pub')}",
        f"--service-account-signing-key-file={pki('sa.key')}",
        # Webhooks and aggregated APIs are called at their endpoints' pod IPs (routed from the
        # cp namespace) instead of ClusterIPs (no kube-proxy there).
        "--enable-aggregator-routing=true",
        # kubeadm's front-proxy settings (no front-proxy-client certificate is ever issued):
        # without them the controller-manager and scheduler log, for as long as they run,
        # that extension-apiserver-authentication lacks requestheader-client-ca-file.
        f"--requestheader-client-ca-file={pki('ca.crt')}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--profiling=false",
    )
    controller_manager = (
        str(bins["kube-controller-manager"]),
        *kubeconfig_flags("kube-controller-manager"),
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki('sa.key')}",
        f"--root-ca-file={pki('ca.crt')}",
        f"--cluster-signing-cert-file={pki('ca.crt')}",
        f"--cluster-signing-key-file={pki('ca.key')}",
        "--allocate-node-cidrs=false",  # fixed per node (node_manifest)
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--cluster-name={plan.name}",
        "--profiling=false",
    )
    scheduler = (
        str(bins["kube-scheduler"]),
        *kubeconfig_flags("kube-scheduler"),
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        "--profiling=false",
    )
    return (
        Component("etcd", etcd),
        Component("kube-apiserver", apiserver),
        Component("kube-controller-manager", controller_manager),
        Component("kube-scheduler", scheduler),
    )


def node_components(
    plan: ClusterPlan, node: NodePlan, bins: Mapping[str, Path]
) -> tuple[Component, ...]:
    """containerd, kubelet, kube-proxy of one node, in start order."""
    node_dir = plan.node_dir(node)
    containerd = ("containerd", f"--config={node_dir / 'containerd.toml'}")
    kubelet = (
        str(bins["kubelet"]),
        f"--config={node_dir / 'kubelet.yaml'}",
        f"--kubeconfig={plan.component_kubeconfig(node.name)}",
        f"--hostname-override={node.name}",
        f"--node-ip={node.ip}",
        "--v=1",
    )
    kube_proxy = (str(bins["kube-proxy"]), f"--config={node_dir / 'kube-proxy.yaml'}", "--v=1")
    return (
        Component("containerd", containerd, node.name),
        Component("kubelet", kubelet, node.name),
        Component("kube-proxy", kube_proxy, node.name),
    )


def netns_path(netns: str) -> str:
    return f"/run/netns/{netns}"


def holder_argv(node: NodePlan) -> list[str]:
    """The process that owns a node's mount and UTS namespaces (inside its network namespace)
    for the node's lifetime; every node process joins them with ``enter_argv``.

    ``nsenter`` + ``unshare``, not ``ip netns exec``: that remounts /sys, losing the cgroup
    mounts kubelet and runc need. Propagation slave: the host's mounts stay visible, the
    node's own (bind mounts, kubelet's volumes, container rootfs) never reach the host.
    """
    return [
        "nsenter",
        f"--net={netns_path(node.netns)}",
        "--",
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "slave",
        "--",
        "sleep",
        "infinity",
    ]


def enter_argv(holder_pid: int) -> list[str]:
    """Prefix that runs a command in a node (its network, mount and UTS namespaces)."""
    return ["nsenter", f"--target={holder_pid}", "--net", "--mount", "--uts", "--"]


def cp_enter_argv(plan: ClusterPlan) -> list[str]:
    """Prefix that runs a command in the control-plane network namespace."""
    return ["nsenter", f"--net={netns_path(plan.cp_netns)}", "--"]


def forwarder_argv(plan: ClusterPlan, port: int, socat: str, nsenter: str) -> list[str]:
    """socat on the host's 127.0.0.1:``port`` that, per connection, starts a socat inside the
    control-plane namespace connected to the API server: host clients (kubectl, helm, pytest)
    reach it without any packet leaving the cluster's namespaces. Streams (exec, logs,
    port-forward) pass through unchanged."""
    inner = f"{nsenter} --net={netns_path(plan.cp_netns)} {socat} STDIO TCP\\:{CP_IP}\\:{API_PORT}"
    return [socat, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"EXEC:{inner}"]


def ctr_import_argv(holder_pid: int) -> list[str]:
    """Import a docker-archive read from standard input into a node's containerd (stdin, so
    the tar needs not be visible inside the node's mount namespace)."""
    return [
        *enter_argv(holder_pid),
        "ctr",
        f"--address={CONTAINERD_SOCKET}",
        "--namespace=k8s.io",
        "images",
        "import",
        "-",
    ]


def image_refs(manifest_json: bytes) -> list[str]:
    """The RepoTags of a docker-archive's ``manifest.json``."""
    manifest = json.loads(manifest_json)
    if not isinstance(manifest, list):
        raise ValueError("manifest.json is not a list")
    return [str(tag) for entry in manifest for tag in (entry.get("RepoTags") or [])]


# ---- cgroups -----------------------------------------------------------------------------------


def cgroup_mounts(mountinfo: str) -> tuple[str, ...]:
    """Mount points of the cgroup (v1) and cgroup2 hierarchies in ``/proc/self/mountinfo``."""
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[0]
        if fstype in ("cgroup", "cgroup2"):
            points.append(fields[4])
    return tuple(points)


def mounts_under(mountinfo: str, directory: Path) -> list[str]:
    """Mount points at or below ``directory``, deepest first (the order to unmount them)."""
    root = str(directory).rstrip("/")
    points = [
        line.split()[4]
        for line in mountinfo.splitlines()
        if len(line.split()) > 4
        and (line.split()[4] == root or line.split()[4].startswith(root + "/"))
    ]
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


CPUSET_INHERITED = ("cpuset.cpus", "cpuset.mems")


def deepest_first(paths: Iterable[str]) -> list[str]:
    """Paths ordered so that children come before their parents (rmdir order)."""
    return sorted(paths, key=lambda p: (p.count("/"), p), reverse=True)


# ---- process records and state -----------------------------------------------------------------


def proc_stat_fields(stat: str) -> tuple[str, int]:
    """``(state, starttime)`` from ``/proc/PID/stat`` (the command name may hold spaces and
    parentheses, so fields are counted after the last ')')."""
    rest = stat[stat.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


@dataclass(frozen=True)
class ProcessRecord:
    """A process the cluster started; ``start_time`` (clock ticks after boot) tells it apart
    from a later process that reuses the PID."""

    name: str
    pid: int
    start_time: int
    log: str
    node: str | None = None

    @property
    def label(self) -> str:
        return f"{self.node}/{self.name}" if self.node else self.name


@dataclass(frozen=True)
class ClusterState:
    """What ``cluster.json`` records: enough for ``status``, ``load`` and ``stop`` from another
    process. ``phase``: starting, running (start finished) or failed."""

    name: str
    nodes: int
    api_port: int
    phase: str = "starting"
    processes: tuple[ProcessRecord, ...] = ()

    def with_process(self, record: ProcessRecord) -> ClusterState:
        return replace(self, processes=(*self.processes, record))

    def holder(self, node: str) -> ProcessRecord | None:
        """The record of ``node``'s namespace holder."""
        for record in self.processes:
            if record.node == node and record.name == "holder":
                return record
        return None

    def to_json(self) -> str:
        doc = {
            "name": self.name,
            "nodes": self.nodes,
            "api_port": self.api_port,
            "phase": self.phase,
            "processes": [
                {
                    "name": p.name,
                    "node": p.node,
                    "pid": p.pid,
                    "start_time": p.start_time,
                    "log": p.log,
                }
                for p in self.processes
            ],
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        doc = json.loads(text)
        return cls(
            name=str(doc["name"]),
            nodes=int(doc["nodes"]),
            api_port=int(doc["api_port"]),
            phase=str(doc.get("phase", "starting")),
            processes=tuple(
                ProcessRecord(
                    name=str(p["name"]),
                    pid=int(p["pid"]),
                    start_time=int(p["start_time"]),
                    log=str(p["log"]),
                    node=p.get("node"),
                )
                for p in doc.get("processes", [])
            ),
        )
