"""``nftpolicy sandbox``: the whole system on this machine, with real packets.

It builds (once) and starts a real etcd + kube-apiserver, turns every Node of the manifests
into a network namespace and every Pod into a namespace serving its TCP containerPorts,
creates the objects through the API as ``kubectl apply`` would, runs the real operator and one
real agent per node, and prints the reachability matrix before and after the NetworkPolicies
are applied, checked against the reference semantics. Needs root (namespaces, nftables).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from controller.manifests import ManifestError, load_parsed
from controller.model import (
    ApiObject,
    Node,
    Pod,
    Protocol,
)
from controller.semantics import Snapshot, evaluate
from controller.testing.apiserver import TestControlPlane, find_binaries
from controller.testing.netns import NetnsCluster, Probe, unavailable_reason

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CRDS = REPO / "charts" / "nftpolicy" / "crds"
CONVERGENCE_TIMEOUT = 30.0


class SandboxError(RuntimeError):
    pass


def _say(out: TextIO, step: str) -> None:
    print(f"==> {step}", file=out, flush=True)


def _targets(pods: list[Pod]) -> list[tuple[Pod, int]]:
    return [(p, cp.port) for p in pods for cp in p.ports if cp.protocol is Protocol.TCP]


def matrix(net: NetnsCluster, pods: list[Pod]) -> dict[tuple[str, str, int], bool]:
    """Probe every pod -> every TCP containerPort of every other pod."""
    cells = [(s, d, port) for s in pods for d, port in _targets(pods) if s != d]
    results = net.probe_many([Probe(s.key, str(d.addresses[0]), port) for s, d, port in cells], 0.5)
    return {(s.key, d.key, port): ok for (s, d, port), ok in zip(cells, results, strict=True)}


def expected_matrix(objects: list[ApiObject], pods: list[Pod]) -> dict[tuple[str, str, int], bool]:
    snap = Snapshot.of(objects)
    return {
        (s.key, d.key, port): evaluate(
            snap, s.addresses[0], d.addresses[0], Protocol.TCP, port
        ).allowed
        for s in pods
        for d, port in _targets(pods)
        if s != d
    }


def render_matrix(pods: list[Pod], cells: dict[tuple[str, str, int], bool]) -> str:
    targets = _targets(pods)
    width = max(len(p.key) for p in pods)
    cols = [f"{d.name}:{port}" for d, port in targets]
    lines = [" " * width + "  " + " ".join(cols)]
    for s in pods:
        row = []
        for col, (d, port) in zip(cols, targets, strict=True):
            text = "self" if s == d else "ok" if cells[(s.key, d.key, port)] else "--"
            row.append(text.center(len(col)))
        lines.append(f"{s.key:<{width}}  " + " ".join(row))
    return "\n".join(lines)


class _Processes:
    def __init__(self, logs: Path, kubeconfig: Path) -> None:
        self.logs = logs
        self.kubeconfig = kubeconfig
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: Sequence[str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        self.running[name] = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", *args, "--kubeconfig", str(self.kubeconfig)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def stop(self) -> None:
        for proc in self.running.values():
            proc.terminate()
        for proc in self.running.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_sandbox(paths: Sequence[str] | None, keep: bool, out: TextIO = sys.stdout) -> int:
    reason = unavailable_reason()
    if reason is not None:
        raise SandboxError(f"cannot build network namespaces: {reason}")
    loaded = load_parsed(list(paths) if paths else [str(EXAMPLES)])
    bodies, objects = [raw for raw, _ in loaded], [obj for _, obj in loaded]
    nodes = [o for o in objects if isinstance(o, Node)]
    pods = [o for o in objects if isinstance(o, Pod) and o.addresses and o.node]
    if not nodes or not pods:
        raise ManifestError("the manifests need Node objects with podCIDRs and Pods with IPs")
    missing = {p.node or "" for p in pods} - {n.name for n in nodes}
    if missing:
        raise ManifestError(
            f"pods refer to nodes without a Node object: {', '.join(sorted(missing))}"
        )
    _say(out, "control plane binaries (built from Go modules on the first run: ~11 min)")
    bin_dir = find_binaries(stderr=sys.stderr)
    _say(out, "starting etcd and kube-apiserver")
    with TestControlPlane(bin_dir) as plane, NetnsCluster() as net:
        logs = plane.dir / "logs"
        logs.mkdir(exist_ok=True)
        procs = _Processes(logs, plane.kubeconfig)
        try:
            _populate(plane, net, nodes, pods, bodies, out)
            _say(out, "starting the operator and one agent per node")
            procs.start("operator", ["operator", "--lease-namespace", "default"])
            for node in nodes:
                procs.start(
                    f"agent-{node.name}",
                    [
                        "agent",
                        "--node",
                        node.name,
                        "--netns",
                        net.node_netns(node.name),
                        "--state-dir",
                        str(logs / "state"),
                    ],
                )
            print(
                "\nbefore (no NetworkPolicy):\n" + render_matrix(pods, matrix(net, pods)), file=out
            )
            policies = [b for b in bodies if b.get("kind") == "NetworkPolicy"]
            _say(out, f"applying {len(policies)} NetworkPolicies")
            for body in policies:
                _create(plane, body)
            want = expected_matrix(objects, pods)
            got, took = _converge(net, pods, want)
            print(f"\nafter ({took:.1f} s to converge):\n" + render_matrix(pods, got), file=out)
            if got != want:
                wrong = [k for k in want if want[k] != got[k]]
                print(
                    f"\nMISMATCH with the reference semantics in {len(wrong)} cells: {wrong[:10]}",
                    file=out,
                )
                print(f"logs: {logs}", file=out)
                return 1
            print("\nevery cell matches controller.semantics", file=out)
            if keep:
                print(
                    f"\nrunning; kubectl --kubeconfig {plane.kubeconfig} ... ; logs in {logs}; Ctrl-C to stop",
                    file=out,
                )
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            return 0
        finally:
            procs.stop()


def _create(plane: TestControlPlane, body: dict[str, Any]) -> None:
    """``kubectl create`` of one object (through a file: the body is JSON)."""
    path = plane.dir / "manifest.json"
    path.write_text(json.dumps(body))
    plane.kubectl("create", "-f", str(path))


def _populate(
    plane: TestControlPlane,
    net: NetnsCluster,
    nodes: list[Node],
    pods: list[Pod],
    bodies: list[dict[str, Any]],
    out: TextIO,
) -> None:
    _say(out, f"building {len(nodes)} nodes and {len(pods)} pods as network namespaces")
    plane.kubectl("apply", "-f", str(CRDS))
    for node in nodes:
        v4 = next((str(c) for c in node.pod_cidrs if c.version == 4), None)
        if v4 is None:
            raise ManifestError(f"Node {node.name}: spec.podCIDRs needs an IPv4 CIDR")
        v6 = next((str(c) for c in node.pod_cidrs if c.version == 6), None)
        net.add_node(node.name, v4, v6)
    for pod in pods:
        v4 = next((str(ip) for ip in pod.addresses if ip.version == 4), None)
        v6 = next((str(ip) for ip in pod.addresses if ip.version == 6), None)
        ports = sorted({cp.port for cp in pod.ports if cp.protocol is Protocol.TCP})
        net.add_pod(pod.namespace, pod.name, pod.node or "", v4, v6, tcp_ports=ports, udp_ports=())
    for body in bodies:
        kind = body.get("kind")
        if kind in ("Namespace", "Node", "Pod"):
            clean = {k: v for k, v in body.items() if k != "status"}
            if kind == "Pod":
                spec = dict(clean.get("spec") or {})
                spec["containers"] = [
                    {"image": "sandbox", "name": f"c{i}", **c}
                    for i, c in enumerate(spec.get("containers") or [])
                ]
                clean["spec"] = spec
            _create(plane, clean)
            if kind in ("Pod", "Node") and body.get("status"):
                _patch_status(plane, body)
    net.wait_ready()


def _patch_status(plane: TestControlPlane, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    resource = "pod" if body["kind"] == "Pod" else "node"
    args = [resource, meta["name"]]
    if body["kind"] == "Pod":
        args += ["-n", meta.get("namespace", "default")]
    plane.kubectl(
        "patch",
        *args,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": body["status"]}),
    )


def _converge(
    net: NetnsCluster, pods: list[Pod], want: dict[tuple[str, str, int], bool]
) -> tuple[dict[tuple[str, str, int], bool], float]:
    start = time.monotonic()
    got = matrix(net, pods)
    while got != want and time.monotonic() - start < CONVERGENCE_TIMEOUT:
        got = matrix(net, pods)
    return got, time.monotonic() - start
