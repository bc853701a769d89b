"""The pure layout of the local real-node cluster (``controller/testing/cluster_config.py``)
and the certificate specs of ``controller/testing/support.py``; the runtime is exercised by
``python -m controller.testing.cluster start`` (root, binaries), not here."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

import pytest

from controller.testing import cluster_config as cfg
from controller.testing.support import CertSpec

STATE = Path("/var/tmp/test-cluster")
BINS = {name: Path("/bin") / name for name in cfg.K8S_BINARIES}


@pytest.fixture
def plan() -> cfg.ClusterPlan:
    return cfg.plan_cluster("nftp", 3, STATE)


# ---- plan ------------------------------------------------------------------------------------


def test_plan_names_addresses_and_pod_cidrs(plan: cfg.ClusterPlan) -> None:
    assert [n.name for n in plan.nodes] == ["nftp-node-1", "nftp-node-2", "nftp-node-3"]
    assert [n.ip for n in plan.nodes] == ["10.250.0.11", "10.250.0.12", "10.250.0.13"]
    assert [n.pod_cidr for n in plan.nodes] == ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
    assert [n.pod_gateway for n in plan.nodes] == ["10.244.1.1", "10.244.2.1", "10.244.3.1"]
    assert plan.netns_names == ("nftp-cp", "nftp-node-1", "nftp-node-2", "nftp-node-3")
    assert plan.nodes[0].cgroup == "/nftp-node-1"
    lan = ipaddress.IPv4Network(f"{cfg.CP_IP}/{cfg.LAN_PREFIX}", strict=False)
    cluster_cidr = ipaddress.IPv4Network(cfg.CLUSTER_CIDR)
    for node in plan.nodes:
        assert ipaddress.IPv4Address(node.ip) in lan
        assert ipaddress.IPv4Network(node.pod_cidr).subnet_of(cluster_cidr)


def test_plan_largest_cluster_stays_in_its_networks() -> None:
    plan = cfg.plan_cluster("x", cfg.MAX_NODES, STATE)
    last = plan.nodes[-1]
    assert ipaddress.IPv4Address(last.ip) < ipaddress.IPv4Address("10.250.0.255")
    assert len({n.cp_veth for n in plan.nodes}) == cfg.MAX_NODES
    assert all(len(n.cp_veth) <= 15 for n in plan.nodes)  # IFNAMSIZ


@pytest.mark.parametrize(
    ("name", "nodes", "state_dir", "message"),
    [
        ("NFTP", 3, STATE, "cluster name"),
        ("-x", 3, STATE, "cluster name"),
        ("a" * 33, 3, STATE, "cluster name"),
        ("nftp", 0, STATE, "--nodes 0"),
        ("nftp", cfg.MAX_NODES + 1, STATE, "choose 1.."),
        ("nftp", 3, Path("relative"), "absolute"),
        ("nftp", 3, Path("/var/lib/cluster"), "under /var/lib"),
        ("nftp", 3, Path("/run/cluster"), "under /run"),
        ("nftp", 3, Path("/var/run/x"), "under /var/run"),
        ("nftp", 3, Path("/var/log"), "under /var/log"),
    ],
)
def test_plan_rejects(name: str, nodes: int, state_dir: Path, message: str) -> None:
    with pytest.raises(cfg.PlanError, match=message):
        cfg.plan_cluster(name, nodes, state_dir)


def test_plan_accepts_neighbours_of_private_dirs() -> None:
    cfg.plan_cluster("nftp", 1, Path("/var/library/x"))
    cfg.plan_cluster("nftp", 1, Path("/runs/x"))


@pytest.mark.parametrize(
    ("netns", "ours"),
    [
        ("nftp-cp", True),
        ("nftp-node-1", True),
        ("nftp-node-12", True),
        ("nftp-node-", False),
        ("nftp-node-1x", False),
        ("nftp-x-cp", False),  # cluster "nftp-x"
        ("nftp-x-node-1", False),
        ("nftp2-node-1", False),
        ("npt-abc", False),  # the netns simulation's names
    ],
)
def test_only_own_namespaces_match(netns: str, ours: bool) -> None:
    assert cfg.is_cluster_netns("nftp", netns) is ours


def test_resolve_binaries_first_directory_wins() -> None:
    present = {Path("/a/kubelet"), Path("/b/kubelet"), Path("/b/etcd")}
    found, missing = cfg.resolve_binaries(
        ["kubelet", "etcd", "kube-proxy"], [Path("/a"), Path("/b")], present.__contains__
    )
    assert found == {"kubelet": Path("/a/kubelet"), "etcd": Path("/b/etcd")}
    assert missing == ["kube-proxy"]


# ---- PKI -------------------------------------------------------------------------------------


def test_certificates_identities_and_sans(plan: cfg.ClusterPlan) -> None:
    specs = {s.name: s for s in cfg.certificates(plan)}
    apiserver = specs["apiserver"]
    assert apiserver.server and not apiserver.client
    # the host forwarder, the LAN and the `kubernetes` Service address
    assert {"127.0.0.1", cfg.CP_IP, cfg.KUBERNETES_SERVICE_IP} <= set(apiserver.ips)
    assert "kubernetes.default.svc" in apiserver.dns_names
    node = specs["nftp-node-2"]
    assert node.subject() == "/O=system:nodes/CN=system:node:nftp-node-2"
    assert node.server and node.client and node.ips == ("10.250.0.12",)
    assert specs["kube-proxy"].subject() == "/CN=system:kube-proxy"
    assert specs["admin"].organization == "system:masters"
    assert specs["apiserver-kubelet-client"].client


def test_cert_extensions() -> None:
    ext = CertSpec("x", "x", server=True, client=True, dns_names=("a",), ips=("1.2.3.4",))
    text = ext.extensions()
    assert "extendedKeyUsage = serverAuth,clientAuth" in text
    assert "subjectAltName = DNS:a,IP:1.2.3.4" in text
    assert "subjectAltName" not in CertSpec("c", "c", client=True).extensions()
    with pytest.raises(ValueError, match="neither"):
        CertSpec("n", "n").extensions()


# ---- network ---------------------------------------------------------------------------------


def test_cp_batch_creates_node_ends_inside_node_namespaces(plan: cfg.ClusterPlan) -> None:
    batch = cfg.cp_ip_batch(plan)
    veths = [line for line in batch if "type veth" in line]
    assert veths == [
        f"link add veth{i} type veth peer name eth0 netns nftp-node-{i}" for i in (1, 2, 3)
    ]
    for node in plan.nodes:
        assert f"route add {node.pod_cidr} via {node.ip}" in batch


def test_node_batch_routes_other_nodes_and_defaults_to_cp(plan: cfg.ClusterPlan) -> None:
    node = plan.nodes[1]
    batch = cfg.node_ip_batch(plan, node)
    assert f"addr add {node.ip}/24 dev eth0" in batch
    assert f"route add default via {cfg.CP_IP}" in batch
    routes = [line for line in batch if line.startswith("route add 10.244.")]
    assert routes == [
        "route add 10.244.1.0/24 via 10.250.0.11",
        "route add 10.244.3.0/24 via 10.250.0.13",
    ]


def test_cni_is_routed_ptp_without_masquerade(plan: cfg.ClusterPlan) -> None:
    conf = json.loads(json.dumps(cfg.cni_config(plan, plan.nodes[0])))
    types = [p["type"] for p in conf["plugins"]]
    assert types == ["ptp", "portmap"]  # no bridge: same-node traffic must be routed
    ptp = conf["plugins"][0]
    assert ptp["ipMasq"] is False
    assert ptp["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]]
    assert set(types) <= set(cfg.CNI_PLUGINS)


def test_forwarder_binds_loopback_and_enters_the_cp_namespace(plan: cfg.ClusterPlan) -> None:
    argv = cfg.forwarder_argv(plan, 41234, "/usr/bin/socat", "/usr/bin/nsenter")
    assert argv[1] == "TCP-LISTEN:41234,bind=127.0.0.1,reuseaddr,fork"
    assert argv[2] == (
        "EXEC:/usr/bin/nsenter --net=/run/netns/nftp-cp /usr/bin/socat STDIO "
        "TCP\\:10.250.0.1\\:6443"  # socat splits EXEC's argument at unescaped colons
    )


# ---- node mount namespace --------------------------------------------------------------------


def test_holder_keeps_sys_and_isolates_mounts(plan: cfg.ClusterPlan) -> None:
    argv = cfg.holder_argv(plan.nodes[0])
    assert argv[:2] == ["nsenter", "--net=/run/netns/nftp-node-1"]
    assert "unshare" in argv and argv[argv.index("--propagation") + 1] == "slave"
    assert "netns" not in argv  # not `ip netns exec`: it remounts /sys without the cgroups
    assert cfg.enter_argv(42)[:2] == ["nsenter", "--target=42"]


def test_node_mounts(plan: cfg.ClusterPlan) -> None:
    node = plan.nodes[0]
    mounts = cfg.node_mounts(plan, node)
    targets = {m.target: m for m in mounts}
    for private in cfg.PRIVATE_DIRS:
        assert targets[private].source == STATE / "nodes/nftp-node-1/root" / private.strip("/")
        assert not targets[private].read_only
    overcommit = targets["/proc/sys/vm/overcommit_memory"]
    assert overcommit.read_only
    assert overcommit.source == STATE / "nodes/nftp-node-1/sysctl/vm.overcommit_memory"
    assert cfg.mount_argvs(overcommit) == [
        ["mount", "--bind", str(overcommit.source), "/proc/sys/vm/overcommit_memory"],
        ["mount", "-o", "remount,bind,ro", "/proc/sys/vm/overcommit_memory"],
    ]
    assert len(mounts) == len(cfg.PRIVATE_DIRS) + len(cfg.KUBELET_SYSCTLS)


def test_kubelet_sysctls_are_what_protect_kernel_defaults_expects() -> None:
    # pkg/kubelet/cm/container_manager_linux.go setupKernelTunables, v1.34
    assert cfg.KUBELET_SYSCTLS == {
        "vm/overcommit_memory": "1",
        "vm/panic_on_oom": "0",
        "kernel/panic": "10",
        "kernel/panic_on_oops": "1",
        "kernel/keys/root_maxkeys": "1000000",
        "kernel/keys/root_maxbytes": "25000000",
    }


# ---- component configs -----------------------------------------------------------------------


def test_containerd_config_is_valid_toml(plan: cfg.ClusterPlan) -> None:
    doc = tomllib.loads(cfg.to_toml(cfg.containerd_config(plan, plan.nodes[2])))
    assert doc["version"] == 2
    assert doc["grpc"]["address"] == cfg.CONTAINERD_SOCKET
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == cfg.PAUSE_IMAGE
    assert cri["restrict_oom_score_adj"] is True
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["cni"] == {
        "bin_dir": "/usr/lib/cni",
        "conf_dir": str(STATE / "nodes/nftp-node-3/cni"),
    }
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is False


def test_to_toml_quotes_dotted_table_names() -> None:
    text = cfg.to_toml({"a": 1, "t": {"x.y": {"b": [True, "s"]}}})
    assert tomllib.loads(text) == {"a": 1, "t": {"x.y": {"b": [True, "s"]}}}
    with pytest.raises(TypeError):
        cfg.to_toml({"bad": 1.5})


def test_kubelet_config(plan: cfg.ClusterPlan) -> None:
    node = plan.nodes[0]
    conf = cfg.kubelet_config(plan, node)
    assert conf["cgroupRoot"] == "/nftp-node-1"
    assert conf["cgroupDriver"] == "cgroupfs"
    assert conf["protectKernelDefaults"] is True
    assert conf["oomScoreAdj"] == 0
    assert conf["failCgroupV1"] is False
    assert conf["imageGCHighThresholdPercent"] == 100
    assert conf["imageGCLowThresholdPercent"] < 100
    assert conf["address"] == node.ip
    assert conf["readOnlyPort"] == 0
    assert conf["authentication"]["anonymous"]["enabled"] is False
    assert conf["tlsCertFile"] == str(STATE / "pki/nftp-node-1.crt")
    assert set(conf["evictionHard"]) == {
        "memory.available",
        "nodefs.available",
        "nodefs.inodesFree",
        "imagefs.available",
        "imagefs.inodesFree",
    }


def test_kube_proxy_leaves_host_wide_conntrack_alone(plan: cfg.ClusterPlan) -> None:
    conf = cfg.kube_proxy_config(plan, plan.nodes[1])
    assert conf["mode"] == "iptables"
    assert conf["conntrack"]["maxPerCore"] == 0 and conf["conntrack"]["min"] == 0
    assert conf["hostnameOverride"] == "nftp-node-2"
    assert conf["clusterCIDR"] == cfg.CLUSTER_CIDR


def test_component_command_lines(plan: cfg.ClusterPlan) -> None:
    cp = {c.name: c for c in cfg.control_plane_components(plan, BINS)}
    assert list(cp) == ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    apiserver = cp["kube-apiserver"].argv
    assert f"--advertise-address={cfg.CP_IP}" in apiserver
    assert "--authorization-mode=Node,RBAC" in apiserver
    assert "--enable-admission-plugins=NodeRestriction" in apiserver
    assert f"--service-cluster-ip-range={cfg.SERVICE_CIDR}" in apiserver
    assert "--allocate-node-cidrs=false" in cp["kube-controller-manager"].argv
    node = {c.name: c for c in cfg.node_components(plan, plan.nodes[0], BINS)}
    assert list(node) == ["containerd", "kubelet", "kube-proxy"]
    assert "--node-ip=10.250.0.11" in node["kubelet"].argv
    assert "--hostname-override=nftp-node-1" in node["kubelet"].argv
    assert all(c.node == "nftp-node-1" for c in node.values())


def test_node_manifest_and_readiness(plan: cfg.ClusterPlan) -> None:
    manifest = cfg.node_manifest(plan.nodes[2])
    assert manifest["spec"] == {"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24"]}
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    not_ready = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    assert cfg.node_ready(ready)
    assert not cfg.node_ready(not_ready)
    assert not cfg.node_ready({"metadata": {}})


# ---- images, cgroups, processes, state -------------------------------------------------------


def test_image_refs() -> None:
    manifest = [{"Config": "c.json", "RepoTags": ["a:1", "b:2"], "Layers": []}, {"Config": "d"}]
    assert cfg.image_refs(json.dumps(manifest).encode()) == ["a:1", "b:2"]
    with pytest.raises(ValueError):
        cfg.image_refs(b"{}")
    argv = cfg.ctr_import_argv(7)
    assert argv[-3:] == ["images", "import", "-"] and "--namespace=k8s.io" in argv


MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup rw shared:5 - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpuset rw shared:6 - cgroup cgroup rw,cpuset
32 30 0:28 / /sys/fs/cgroup/unified rw shared:7 - cgroup2 cgroup2 rw
40 22 0:4 net:[4026532] /run/netns/nftp-cp rw shared:9 - nsfs nsfs rw
41 22 0:50 / /var/tmp/c/x rw - tmpfs tmpfs rw
42 41 0:51 / /var/tmp/c/x/y rw - tmpfs tmpfs rw
43 22 0:52 / /var/tmp/cc rw - tmpfs tmpfs rw
"""


def test_cgroup_mounts_and_mounts_under() -> None:
    assert cfg.cgroup_mounts(MOUNTINFO) == ("/sys/fs/cgroup/cpuset", "/sys/fs/cgroup/unified")
    assert cfg.mounts_under(MOUNTINFO, Path("/var/tmp/c")) == ["/var/tmp/c/x/y", "/var/tmp/c/x"]


def test_deepest_first() -> None:
    paths = ["/c/n", "/c/n/kubepods", "/c/n/kubepods/besteffort/pod1", "/c/n/kubepods/burstable"]
    order = cfg.deepest_first(paths)
    for path in paths:
        for other in paths:
            if other.startswith(path + "/"):
                assert order.index(other) < order.index(path)


def test_proc_stat_fields_with_odd_command_names() -> None:
    # field 3 is the state, field 22 the start time (proc(5))
    fields = ["S", *(str(n) for n in range(4, 22)), "777", "0", "0"]
    assert cfg.proc_stat_fields(f"123 (we) ird) {' '.join(fields)}") == ("S", 777)


def test_state_round_trip() -> None:
    state = cfg.ClusterState("nftp", 2, 4321).with_process(
        cfg.ProcessRecord("holder", 10, 99, "/l/h.log", "nftp-node-1")
    )
    state = state.with_process(cfg.ProcessRecord("etcd", 11, 100, "/l/etcd.log"))
    again = cfg.ClusterState.from_json(state.to_json())
    assert again == state
    assert again.holder("nftp-node-1") == state.processes[0]
    assert again.holder("nftp-node-2") is None
    assert [p.label for p in again.processes] == ["nftp-node-1/holder", "etcd"]
