"""Control-plane convergence benchmark: API write -> enforced on every node, write volume, scale.

Usage: ``python bench/convergence.py [--quick] [--nodes N] [--policies N] [--scale-nodes N]
[--scale-pods N] [--skip-live] [--skip-scale] [--keep-logs DIR] [--json FILE]`` (root; needs the control-plane
binaries of ``scripts/testenv.sh`` and a usable ``ip netns``).

Everything runs on this machine: a real etcd + kube-apiserver (``TestControlPlane``), the
operator and one agent per node as real ``python -m controller.cli`` processes (info logging,
default resync), and simulated nodes and pods made of network namespaces
(``controller/testing/netns.py``) whose Pod objects get kubelet-like status patches.

Part 1, live (default 20 nodes x 3 pods, TCP 80)
------------------------------------------------
Pods carry a label ``grp=g0..g9`` (pod k on node k // 3 in group k % 10, so every group spans
6 nodes). A baseline policy isolates every pod for ingress; then 100 policies are created one
at a time, policy i allowing ``grp=g<dst>`` from ``grp=g<src>`` on TCP 80 for a distinct
(src, dst) pair, so each one opens a path that nothing else opens.

*Enforced* means: every spanned node (the nodes hosting a pod of the dst group) has a NodeRules
object whose ``status.appliedGeneration`` is at least the first generation whose spec names the
policy. A watch on NodeRules (and AddressGroups) in this process timestamps every event; the
latency of a policy is from just before the create call to the receipt of the last status
event that completes it. It is split into: *publish* (write -> the last spanned NodeRules
naming the policy is received), *agent* (-> the agent's own ``status.appliedAt``, its wall
clock after the nftables transaction, on this same machine) and *report* (-> status received).
Every policy is cross-checked with a real probe right after it counts as enforced (the newly
allowed connection must succeed at once), and every 10th is also probed continuously from the
write (``probe`` column: when the data plane really let the connection through; the pair is
checked to be denied before the write).

Write volume: with all policies in place, a pod is added (create + status patch, as a kubelet
does), relabelled to another group, and deleted, a few times each; the operator's writes of
AddressGroup/NodeRules objects (a change of their labels or spec, seen by the watch; agents'
status updates are not counted) are counted until nothing changes for a while, with the bytes
the operator sends for them (the request bodies ``controller.kube.publisher.perform`` builds),
cross-checked with the operator's own ``writes_total``/``write_bytes_total`` from its /metrics
(``--metrics-port``, scraped on 127.0.0.1).

Narrowing: a few allow policies are deleted, first with the few flows the bench left, then
after every pod connected to every other pod ``--flow-rounds`` times. A change that narrows
what is allowed is enforced on established flows by the kernel as the rules go in (the
conntrack mark epoch, see render.py), so the agents report it then; their conntrack sweep for
flows the new rules deny follows on its own thread and is timed apart (apply -> sweep done, from
the agents' /metrics), with the conntrack entry count of the busiest node.

CPU and memory of every process (operator, agents, kube-apiserver, etcd, pod/node probe
helpers) are sampled from /proc during the run.

Part 2, scale (objects only, default 1,000 nodes / 30,000 pods)
---------------------------------------------------------------
A fresh control plane with only the operator running (no agents, no namespaces): Nodes,
100 Namespaces, Pods (created, then status-patched) and 3 NetworkPolicies per namespace (plus
one whose peer is every pod in the cluster) are written with parallel API calls (aiohttp).
Reported: the operator's peak RSS (VmHWM) and CPU, how long after the last object write its
published state (AddressGroups/NodeRules) stops changing, the time from one more policy's
create until the NodeRules of all nodes it spans are written (a 30-node span and a 300-node
span), the largest AddressGroup and NodeRules objects in bytes, and an operator restart
(start -> "leading", i.e. initial listing compiled) over the full cluster, waited for at most
``--restart-timeout`` seconds.

The machine is shared: other processes' CPU use during each part is reported next to ours.
Exit status 0 when the bench ran (targets met or not), 1 when it could not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kubernetes import client, config  # noqa: E402

from controller.kube.informer import Informer  # noqa: E402
from controller.kube.publisher import label_patch  # noqa: E402
from controller.resources import ADDRESS_GROUPS, GROUP, NODE_RULES, VERSION  # noqa: E402
from controller.testing.apiserver import TestControlPlane, find_binaries  # noqa: E402
from controller.testing.netns import (  # noqa: E402
    NetnsCluster,
    Probe,
    cleanup_dead_runs,
    unavailable_reason,
)
from tests.integration.live import install_crds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET_P99 = 1.0  # seconds, 20 nodes: API write -> enforced on every spanned node
ETCD_OBJECT_LIMIT = 1_572_864  # etcd's default --max-request-bytes (1.5 MiB)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
NS = "bench"
GROUPS = 10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def fmt_s(x: float) -> str:
    return f"{x * 1000:7.0f} ms" if x == x else "    n/a"


# ---- processes --------------------------------------------------------------------------------


@dataclass
class ProcSample:
    cpu: float  # seconds of user + system time
    rss: int  # bytes
    hwm: int  # bytes, peak RSS


def proc_sample(pid: int) -> ProcSample | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    kb = {
        line.split(":")[0]: int(line.split()[1])
        for line in status.splitlines()
        if line.startswith(("VmRSS", "VmHWM"))
    }
    return ProcSample(cpu, kb.get("VmRSS", 0) * 1024, kb.get("VmHWM", 0) * 1024)


def total_cpu_seconds() -> float:
    """All CPUs' busy time (user+nice+system+irq+softirq+steal) from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    v = [int(x) for x in parts]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


class Monitor:
    """Samples CPU time and RSS of named process groups every ``period`` seconds."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]], period: float = 1.0) -> None:
        self._groups = groups
        self.period = period
        self.peak_rss: dict[str, int] = {}  # group -> peak of the summed RSS
        self.peak_one: dict[str, int] = {}  # group -> largest single-process RSS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="monitor")

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def snapshot(self) -> dict[str, tuple[float, int, int, int]]:
        """group -> (cpu seconds, summed RSS, max single RSS, processes)."""
        out = {}
        for name, pids in self._groups().items():
            samples = [s for s in map(proc_sample, pids) if s is not None]
            out[name] = (
                sum(s.cpu for s in samples),
                sum(s.rss for s in samples),
                max((s.rss for s in samples), default=0),
                len(samples),
            )
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            for name, (_cpu, rss, one, _n) in self.snapshot().items():
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
                self.peak_one[name] = max(self.peak_one.get(name, 0), one)


@dataclass
class Window:
    """CPU use per group between ``open`` and ``close``."""

    label: str
    t0: float
    cpu0: dict[str, float]
    all0: float
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    other: float = 0.0

    @classmethod
    def open(cls, label: str, monitor: Monitor) -> Window:
        snap = monitor.snapshot()
        return cls(label, time.monotonic(), {k: v[0] for k, v in snap.items()}, total_cpu_seconds())

    def close(self, monitor: Monitor) -> Window:
        snap = monitor.snapshot()
        self.seconds = time.monotonic() - self.t0
        self.cpu = {k: v[0] - self.cpu0.get(k, 0.0) for k, v in snap.items()}
        busy = total_cpu_seconds() - self.all0
        self.other = busy - sum(self.cpu.values())  # this bench process and everything else
        return self

    def lines(self) -> list[str]:
        s = max(self.seconds, 1e-9)
        parts = [f"{k} {v / s * 100:.0f}%" for k, v in self.cpu.items()]
        return [
            f"  CPU during {self.label} ({self.seconds:.0f} s; 100% = one core of 2): "
            + ", ".join(parts)
            + f", everything else (this bench, other users) {self.other / s * 100:.0f}%"
        ]


# ---- watching published objects ---------------------------------------------------------------


def _comparable(body: Mapping[str, Any]) -> tuple[Any, Any]:
    return (dict(body.get("metadata", {}).get("labels") or {}), body.get("spec"))


@dataclass
class OpWrite:
    t: float  # monotonic receive time
    plural: str
    name: str
    verb: str
    nbytes: int


class Recorder:
    """Watches NodeRules and AddressGroups; timestamps operator writes and agent reports."""

    def __init__(self, api: client.ApiClient, light: bool = False) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.light = light  # scale run: skip per-policy bookkeeping
        self.cond = threading.Condition()
        self.current: dict[tuple[str, str], tuple[Any, Any]] = {}  # key -> comparable
        self.generation: dict[str, int] = {}
        self.policies: dict[str, frozenset[str]] = {}  # node -> policy keys in spec
        self.first_gen: dict[tuple[str, str], tuple[int, float]] = {}  # (node, policy)
        self.applied: dict[str, list[tuple[int, float, float | None]]] = {}  # node -> reports
        self.writes: list[OpWrite] = []
        self.sizes: dict[tuple[str, str], int] = {}  # last seen full object size
        self.events = 0
        common = {"group": GROUP, "version": VERSION}
        self.informers = [
            Informer(
                f"bench-{plural}",
                self.custom.list_cluster_custom_object,
                lambda objs, p=plural: self._synced(p, objs),
                lambda kind, obj, p=plural: self._event(p, kind, obj),
                plural=plural,
                **common,
            )
            for plural in (ADDRESS_GROUPS, NODE_RULES)
        ]

    def start(self) -> Recorder:
        for informer in self.informers:
            informer.start()
        for informer in self.informers:
            if not informer.synced.wait(60):
                raise RuntimeError("bench watch did not sync")
        return self

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()

    def _synced(self, plural: str, objects: Mapping[str, Mapping[str, Any]]) -> None:
        for obj in objects.values():
            self._event(plural, "ADDED", obj, listing=True)

    def _event(self, plural: str, kind: str, obj: Mapping[str, Any], listing: bool = False) -> None:
        now = time.monotonic()
        meta = obj.get("metadata", {})
        name = meta["name"]
        key = (plural, name)
        with self.cond:
            self.events += 1
            old = self.current.get(key)
            if kind == "DELETED":
                self.current.pop(key, None)
                self.sizes.pop(key, None)
                if not listing:
                    self.writes.append(OpWrite(now, plural, name, "delete", 2))
                if plural == NODE_RULES:
                    self.policies.pop(name, None)
                self.cond.notify_all()
                return
            new = _comparable(obj)
            if not self.light or plural == NODE_RULES:
                self.sizes[key] = len(json.dumps(obj))
            if old != new:
                self.current[key] = new
                if not listing:
                    if old is None:
                        body = {
                            "apiVersion": obj.get("apiVersion"),
                            "kind": obj.get("kind"),
                            "metadata": {"name": name, "labels": new[0]},
                            "spec": new[1],
                        }
                        self.writes.append(
                            OpWrite(now, plural, name, "create", len(json.dumps(body)))
                        )
                    else:
                        patch = {
                            "metadata": {
                                "labels": label_patch({"metadata": {"labels": old[0]}}, obj)
                            },
                            "spec": new[1],
                        }
                        self.writes.append(
                            OpWrite(now, plural, name, "replace", len(json.dumps(patch)))
                        )
            if plural == NODE_RULES:
                gen = int(meta.get("generation", 0))
                self.generation[name] = gen
                keys = frozenset(p["key"] for p in (new[1] or {}).get("policies", ()))
                if not self.light:
                    for k in keys - self.policies.get(name, frozenset()):
                        self.first_gen.setdefault((name, k), (gen, now))
                self.policies[name] = keys
                status = obj.get("status") or {}
                applied = status.get("appliedGeneration")
                if applied is not None:
                    reports = self.applied.setdefault(name, [])
                    if not reports or reports[-1][0] != int(applied):
                        reports.append((int(applied), now, _wall(status.get("appliedAt"))))
            self.cond.notify_all()

    # -- queries (callers hold no lock) --------------------------------------------------------

    def wait(self, predicate: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    return result
                self.cond.wait(min(left, 0.5))

    def all_applied(self, nodes: Iterable[str]) -> bool:
        """Every node has NodeRules and reported its current generation (hold ``cond``)."""
        for node in nodes:
            gen = self.generation.get(node)
            reports = self.applied.get(node)
            if gen is None or not reports or reports[-1][0] < gen:
                return False
        return True

    def enforcement(self, policy: str, span: Iterable[str]) -> Enforcement | None:
        """Timing of ``policy`` on ``span`` once every node enforces it (hold ``cond``)."""
        published = applied_wall = status = 0.0
        per_node_agent = []
        for node in span:
            first = self.first_gen.get((node, policy))
            if first is None:
                return None
            gen, seen = first
            report = next((r for r in self.applied.get(node, ()) if r[0] >= gen), None)
            if report is None:
                return None
            published = max(published, seen)
            status = max(status, report[1])
            if report[2] is not None:
                applied_wall = max(applied_wall, report[2])
                per_node_agent.append(report[2])
        return Enforcement(published, applied_wall, status, len(per_node_agent))

    def writes_since(self, t: float) -> list[OpWrite]:
        with self.cond:
            return [w for w in self.writes if w.t >= t]

    def last_write(self) -> float:
        with self.cond:
            return self.writes[-1].t if self.writes else 0.0


@dataclass
class Enforcement:
    published: float  # monotonic: last spanned NodeRules naming the policy received
    applied_wall: float  # wall clock (time.time): latest agent appliedAt
    status: float  # monotonic: last status report received
    nodes: int


def _wall(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# ---- the live cluster --------------------------------------------------------------------------


class Processes:
    def __init__(self, kubeconfig: Path, logs: Path) -> None:
        self.kubeconfig = kubeconfig
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.cli",
                *args,
                "--kubeconfig",
                str(self.kubeconfig),
                "--log-level",
                "info",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.procs[name] = proc
        return proc

    def pids(self, prefix: str) -> list[int]:
        return [p.pid for n, p in self.procs.items() if n.startswith(prefix) and p.poll() is None]

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name in list(self.procs):
            self.stop(name)

    def dead(self) -> list[str]:
        return [f"{n} (exit {p.returncode})" for n, p in self.procs.items() if p.poll() is not None]


def control_plane_pids(plane: TestControlPlane) -> dict[str, list[int]]:
    out = {}
    for name, attr in (("kube-apiserver", "_apiserver"), ("etcd", "_etcd")):
        proc = getattr(plane, attr, None)
        out[name] = [proc.pid] if proc is not None else []
    return out


@dataclass
class LiveLayout:
    nodes: int
    pods_per_node: int

    def node(self, i: int) -> str:
        return f"n{i:02d}"

    def pod(self, k: int) -> str:
        return f"p{k:03d}"

    def pod_node(self, k: int) -> int:
        return k // self.pods_per_node

    def pod_ip(self, k: int) -> str:
        return f"10.{101 + self.pod_node(k)}.0.{10 + k % self.pods_per_node}"

    @property
    def pod_count(self) -> int:
        return self.nodes * self.pods_per_node

    def group_pods(self, g: int) -> list[int]:
        return [k for k in range(self.pod_count) if k % GROUPS == g]

    def span(self, g: int) -> frozenset[str]:
        return frozenset(self.node(self.pod_node(k)) for k in self.group_pods(g))


def pairs(count: int) -> list[tuple[int, int]]:
    """``count`` distinct (src, dst) group pairs, dst changing fastest, src != dst first."""
    out = [(s, d) for s in range(GROUPS) for d in range(GROUPS) if s != d]
    out += [(g, g) for g in range(GROUPS)]
    return out[:count]


def allow_policy(name: str, src: int, dst: int) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "podSelector": {"matchLabels": {"grp": f"g{dst}"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"grp": f"g{src}"}}}],
                    "ports": [{"protocol": "TCP", "port": 80}],
                }
            ],
        },
    }


@dataclass
class PolicyResult:
    index: int
    total: float  # write -> enforced (status received), seconds
    publish: float
    agent: float | None
    report: float | None
    span: int
    probe: float | None = None  # write -> first successful probe (sampled)
    check_ok: bool = True
    first_write: float = float("nan")  # write -> the operator's first write received
    writes: int = 0  # operator writes up to the last spanned NodeRules


def run_live(args: argparse.Namespace, bin_dir: Path, logs: Path) -> dict[str, Any]:
    layout = LiveLayout(args.nodes, args.pods_per_node)
    result: dict[str, Any] = {"layout": layout}
    t_setup = time.monotonic()
    with TestControlPlane(bin_dir) as plane, NetnsCluster() as net:
        install_crds(plane)
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        core = client.CoreV1Api(api)
        networking = client.NetworkingV1Api(api)
        procs = Processes(plane.kubeconfig, logs)
        try:
            log(f"live: creating {layout.nodes} nodes and {layout.pod_count} pods")
            for i in range(layout.nodes):
                cidr = f"10.{101 + i}.0.0/24"
                node = net.add_node(layout.node(i), cidr)
                core.create_node(
                    {"metadata": {"name": node.name}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}
                )
                core.patch_node_status(
                    node.name,
                    {"status": {"addresses": [{"type": "InternalIP", "address": node.ipv4}]}},
                )
            core.create_namespace({"metadata": {"name": NS, "labels": {"team": "bench"}}})
            for k in range(layout.pod_count):
                node_name = layout.node(layout.pod_node(k))
                net.add_pod(
                    NS, layout.pod(k), node_name, layout.pod_ip(k), tcp_ports=(80,), udp_ports=()
                )
                create_pod(
                    core, layout.pod(k), node_name, layout.pod_ip(k), {"grp": f"g{k % GROUPS}"}
                )
            net.wait_ready()

            recorder = Recorder(api).start()
            monitor = Monitor(
                lambda: {
                    "operator": procs.pids("operator"),
                    "agents": procs.pids("agent-"),
                    **control_plane_pids(plane),
                    "probe helpers": net.agent_pids(),
                }
            ).start()
            metrics_port = free_port() if args.operator_metrics else None
            procs.spawn(
                "operator",
                ["operator", "--lease-namespace", "default", "--identity", "bench"]
                + (["--metrics-port", str(metrics_port)] if metrics_port else []),
            )
            agent_ports: dict[str, int] = {}
            for i in range(layout.nodes):
                n = layout.node(i)
                agent_ports[n] = free_port()
                procs.spawn(
                    f"agent-{n}",
                    ["agent", "--node", n, "--netns", net.node_netns(n)]
                    + ["--metrics-port", str(agent_ports[n]), "--metrics-address", "127.0.0.1"],
                )
            all_nodes = [layout.node(i) for i in range(layout.nodes)]
            t_start = time.monotonic()
            if not recorder.wait(lambda: recorder.all_applied(all_nodes), 120):
                raise RuntimeError(f"agents did not report in 120 s; dead: {procs.dead()}")
            result["startup"] = time.monotonic() - t_start
            result["setup"] = time.monotonic() - t_setup
            log(
                f"live: operator + {layout.nodes} agents up, all nodes applied ({result['startup']:.1f} s)"
            )

            idle = Window.open("idle (10 s, nothing changing)", monitor)
            time.sleep(10)
            result["idle"] = idle.close(monitor)

            # Baseline: isolate every pod for ingress (spans every node).
            t0 = time.monotonic()
            networking.create_namespaced_network_policy(
                NS,
                {
                    "metadata": {"name": "isolate"},
                    "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
                },
            )
            done = recorder.wait(lambda: recorder.enforcement(f"{NS}/isolate", all_nodes), 30)
            if not done:
                raise RuntimeError("baseline policy not enforced in 30 s")
            result["baseline"] = done.status - t0

            results: list[PolicyResult] = []
            window = Window.open(f"{args.policies} policies", monitor)
            for i, (src, dst) in enumerate(pairs(args.policies)):
                results.append(
                    one_policy(i, src, dst, layout, net, networking, recorder, sample=i % 10 == 0)
                )
                r = results[-1]
                if args.verbose:
                    log(f"policy {i}: {r.total * 1000:.0f} ms (publish {r.publish * 1000:.0f})")
            result["window"] = window.close(monitor)
            result["policies"] = results
            log("live: policies done; measuring write volume per pod event")
            result["pod_events"] = pod_events(args, layout, core, recorder, metrics_port)
            if args.flow_rounds:
                log("live: policy deletions (narrowing) without and with many conntrack entries")
                result["narrowing"] = narrowing(
                    args, layout, net, networking, recorder, agent_ports
                )
            result["monitor"] = (dict(monitor.peak_rss), dict(monitor.peak_one))
            result["final"] = monitor.snapshot()
            result["dead"] = procs.dead()
            result["enforced_events"] = enforced_events(
                core, [f"allow-{i}" for i in range(len(results))]
            )
            monitor.stop()
            recorder.stop()
        finally:
            procs.stop_all()
    return result


def create_pod(
    core: client.CoreV1Api, name: str, node: str, ip: str | None, labels: dict[str, str]
) -> None:
    core.create_namespaced_pod(
        NS,
        {
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [
                    {
                        "name": "c",
                        "image": "agnhost",
                        "ports": [{"containerPort": 80, "name": "http"}],
                    }
                ],
            },
        },
    )
    if ip is not None:
        core.patch_namespaced_pod_status(
            name, NS, {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
        )


def one_policy(
    i: int,
    src: int,
    dst: int,
    layout: LiveLayout,
    net: NetnsCluster,
    networking: client.NetworkingV1Api,
    recorder: Recorder,
    sample: bool,
) -> PolicyResult:
    name = f"allow-{i}"
    key = f"{NS}/{name}"
    span = layout.span(dst)
    # a src pod and a dst pod on different nodes when possible
    srcs, dsts = layout.group_pods(src), layout.group_pods(dst)
    s, d = next(
        ((a, b) for a in srcs for b in dsts if layout.pod_node(a) != layout.pod_node(b)),
        (srcs[0], dsts[-1]),
    )
    probe = Probe(f"{NS}/{layout.pod(s)}", layout.pod_ip(d), 80)
    if sample and net.probe_many([probe], 0.3)[0]:
        raise RuntimeError(f"{probe} succeeds before policy {name} allows it")
    body = allow_policy(name, src, dst)
    t0 = time.monotonic()
    w0 = time.time()
    networking.create_namespaced_network_policy(NS, body)
    probe_at = None
    if sample:  # poll the data plane from the write on, in this thread
        deadline = t0 + 30
        while time.monotonic() < deadline:
            if net.probe_many([probe], 0.05)[0]:
                probe_at = time.monotonic() - t0
                break
    done = recorder.wait(lambda: recorder.enforcement(key, span), 30)
    if not done:
        raise RuntimeError(f"policy {name} not enforced on {sorted(span)} within 30 s")
    ok = net.probe_many([probe], 1.0)[0]
    with recorder.cond:
        mentioned = {n for n, keys in recorder.policies.items() if key in keys}
    if mentioned != span:
        log(f"warning: {key} is in the NodeRules of {sorted(mentioned)}, expected {sorted(span)}")
    agent = report = None
    if done.applied_wall:
        agent = (done.applied_wall - w0) - (done.published - t0)
        report = (done.status - t0) - (done.applied_wall - w0)
    writes = [w for w in recorder.writes_since(t0) if w.t <= done.published]
    return PolicyResult(
        i,
        done.status - t0,
        done.published - t0,
        agent,
        report,
        len(span),
        probe_at,
        ok,
        writes[0].t - t0 if writes else float("nan"),
        len(writes),
    )


def enforced_events(core: client.CoreV1Api, names: list[str]) -> list[float]:
    """The operator's own "Enforced ... N ms after the change" figures (from its Events)."""
    out = []
    for ev in core.list_namespaced_event(NS).items:
        if ev.reason == "Enforced" and ev.involved_object.name in names:
            m = re.search(r"(\d+) ms after", ev.message or "")
            if m:
                out.append(int(m.group(1)) / 1000)
    return out


@dataclass
class EventCost:
    what: str
    writes: list[int] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)
    settle: list[float] = field(default_factory=list)  # write -> last operator write
    metric_writes: list[float] = field(default_factory=list)  # the operator's own counters
    metric_bytes: list[float] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cleanups(port: int) -> float:
    """An agent's conntrack clean-up passes so far (its /metrics)."""
    return scrape(port).get("nftpolicy_agent_conntrack_cleanups_total", 0.0)


def scrape(port: int | None) -> dict[str, float]:
    """A process's /metrics (on 127.0.0.1) as name -> value; {} if unavailable."""
    if not port:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def quiesce(
    recorder: Recorder, since: float, quiet: float = 1.0, limit: float = 15.0
) -> list[OpWrite]:
    """Operator writes from ``since`` until none for ``quiet`` seconds (or ``limit``)."""
    deadline = since + limit
    while time.monotonic() < deadline:
        last = max(recorder.last_write(), since)
        if time.monotonic() - last >= quiet and time.monotonic() - since >= quiet:
            break
        time.sleep(0.05)
    return recorder.writes_since(since)


def pod_events(
    args: argparse.Namespace,
    layout: LiveLayout,
    core: client.CoreV1Api,
    recorder: Recorder,
    metrics_port: int | None,
) -> list[EventCost]:
    costs = {k: EventCost(k) for k in ("pod add", "pod label change", "pod delete")}
    quiesce(recorder, time.monotonic())
    for r in range(args.pod_event_rounds):
        node_i = (r * 7 + 3) % layout.nodes
        node = layout.node(node_i)
        name = f"extra-{r}"
        ip = f"10.{101 + node_i}.0.{200 + r}"
        g_from, g_to = r % GROUPS, (r + 3) % GROUPS
        labels = {"grp": f"g{g_from}"}
        relabel = {"metadata": {"labels": {"grp": f"g{g_to}"}}}
        steps: list[tuple[str, Callable[[], object]]] = [
            ("pod add", partial(create_pod, core, name, node, ip, labels)),
            ("pod label change", partial(core.patch_namespaced_pod, name, NS, relabel)),
            ("pod delete", partial(core.delete_namespaced_pod, name, NS, grace_period_seconds=0)),
        ]
        for what, action in steps:
            m0 = scrape(metrics_port)
            t0 = time.monotonic()
            action()
            writes = quiesce(recorder, t0)
            m1 = scrape(metrics_port)
            cost = costs[what]
            if m0 and m1:
                for key, values in (
                    ("nftpolicy_operator_writes_total", cost.metric_writes),
                    ("nftpolicy_operator_write_bytes_total", cost.metric_bytes),
                ):
                    values.append(m1.get(key, 0.0) - m0.get(key, 0.0))
            cost.writes.append(len(writes))
            cost.nbytes.append(sum(w.nbytes for w in writes))
            for w in writes:
                kind = f"{w.verb} {'AddressGroup' if w.plural == ADDRESS_GROUPS else 'NodeRules'}"
                cost.by_kind[kind] = cost.by_kind.get(kind, 0) + 1
            if writes:
                cost.settle.append(writes[-1].t - t0)
    return list(costs.values())


def conntrack_count(net: NetnsCluster, node: str) -> int:
    try:
        return int(net.run_in(net.node_netns(node), ["conntrack", "-C"]).strip() or 0)
    except Exception:  # noqa: BLE001 - conntrack tool missing: report unknown
        return -1


@dataclass
class Narrowing:
    flows: str  # "few" / "many"
    entries: int  # conntrack entries on the busiest spanned node before the write
    seconds: list[float] = field(default_factory=list)  # delete -> every span node reported
    # apply -> that apply's conntrack clean-up done, the slowest spanned node (agents' metrics)
    cleanup: list[float] = field(default_factory=list)


def narrowing(
    args: argparse.Namespace,
    layout: LiveLayout,
    net: NetnsCluster,
    networking: client.NetworkingV1Api,
    recorder: Recorder,
    agent_ports: dict[str, int],
) -> list[Narrowing]:
    """Delete allow policies (a narrowing change: the kernel re-checks established flows at
    once and the agents report the generation when the rules are in; then they sweep conntrack
    for flows the rules no longer allow, timed apart), first with the few flows left by the
    bench, then after every pod connected to every pod a few times."""
    out = []
    victims = list(range(min(args.policies, 2 * args.narrowing_deletes)))
    for flows, batch in (("few", victims[0::2]), ("many", victims[1::2])):
        if flows == "many":
            probes = [
                Probe(f"{NS}/{layout.pod(s)}", layout.pod_ip(d), 80)
                for s in range(layout.pod_count)
                for d in range(layout.pod_count)
                if s != d
            ]
            for _ in range(args.flow_rounds):
                net.probe_many(probes, 0.2)
        result = Narrowing(flows, 0)
        for i in batch:
            src, dst = pairs(args.policies)[i]
            span = layout.span(dst)
            result.entries = max([result.entries, *(conntrack_count(net, n) for n in sorted(span))])
            key = f"{NS}/allow-{i}"
            passes = {n: cleanups(agent_ports[n]) for n in span}
            t0 = time.monotonic()
            networking.delete_namespaced_network_policy(f"allow-{i}", NS)

            def gone(key: str = key, span: frozenset[str] = span) -> bool:
                for n in span:
                    reports = recorder.applied.get(n)
                    if key in recorder.policies.get(n, ()) or not reports:
                        return False
                    if reports[-1][0] < recorder.generation.get(n, 0):
                        return False
                return True

            if recorder.wait(gone, 60):
                result.seconds.append(time.monotonic() - t0)
            lags = []
            for n in span:
                deadline = time.monotonic() + 60
                while cleanups(agent_ports[n]) <= passes[n] and time.monotonic() < deadline:
                    time.sleep(0.05)
                lags.append(
                    scrape(agent_ports[n]).get("nftpolicy_agent_conntrack_cleanup_lag_seconds")
                )
            if all(lag is not None for lag in lags):
                result.cleanup.append(max(lag for lag in lags if lag is not None))
        out.append(result)
    return out


# ---- the object-only scale run -----------------------------------------------------------------


@dataclass
class ScaleLayout:
    nodes: int
    pods: int
    namespaces: int = 100

    def node(self, i: int) -> str:
        return f"node-{i:04d}"

    def node_cidr(self, i: int) -> str:
        return f"10.{64 + i // 256}.{i % 256}.0/24"

    def ns(self, j: int) -> str:
        return f"ns-{j:03d}"

    @property
    def per_ns(self) -> int:
        return self.pods // self.namespaces

    def pod_node(self, k: int) -> int:
        return k % self.nodes

    def pod_ns(self, k: int) -> int:
        return min(k // self.per_ns, self.namespaces - 1)

    def pod_ip(self, k: int) -> str:
        i = self.pod_node(k)
        j = k // self.nodes  # how many pods this node already has
        return f"10.{64 + i // 256}.{i % 256}.{10 + j}"

    def app(self, k: int) -> str:
        return f"a{(k % self.per_ns) % 10}"

    def span(self, j: int, app: str | None) -> frozenset[str]:
        lo, hi = j * self.per_ns, (j + 1) * self.per_ns if j < self.namespaces - 1 else self.pods
        return frozenset(
            self.node(self.pod_node(k)) for k in range(lo, hi) if app is None or self.app(k) == app
        )


def scale_policies(layout: ScaleLayout, j: int) -> list[dict[str, Any]]:
    ns = layout.ns(j)

    def pol(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }

    port80 = [{"protocol": "TCP", "port": 80}]
    out = [
        pol("default-deny", {"podSelector": {}, "policyTypes": ["Ingress"]}),
        pol(
            "a1-from-a0",
            {
                "podSelector": {"matchLabels": {"app": "a1"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "a0"}}}], "ports": port80}
                ],
            },
        ),
        pol(
            "a2-from-team",
            {
                "podSelector": {"matchLabels": {"app": "a2"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {"matchLabels": {"team": f"t{(j + 1) % 5}"}},
                                "podSelector": {"matchLabels": {"app": "a0"}},
                            }
                        ],
                        "ports": [{"protocol": "TCP", "port": "http"}],
                    }
                ],
                "egress": [
                    {"to": [{"podSelector": {"matchLabels": {"app": "a3"}}}], "ports": port80},
                    {"ports": [{"protocol": "UDP", "port": 53}]},
                ],
            },
        ),
    ]
    if j == 0:
        out.append(
            pol(
                "a3-from-everyone",
                {
                    "podSelector": {"matchLabels": {"app": "a3"}},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"namespaceSelector": {}}], "ports": port80}],
                },
            )
        )
    return out


class Bulk:
    """Parallel raw API calls with aiohttp (client certificate auth)."""

    def __init__(self, plane: TestControlPlane, concurrency: int) -> None:
        self.url = plane.url
        self.ctx = ssl.create_default_context(cafile=str(plane.ca_file))
        self.ctx.load_cert_chain(str(plane.dir / "admin.crt"), str(plane.dir / "admin.key"))
        self.concurrency = concurrency
        self.calls = 0
        self.retries = 0

    def run(self, jobs: Iterable[Sequence[tuple[str, str, Any]]]) -> float:
        """Each job is a sequence of (method, path, body) done in order; jobs run in parallel.
        Returns the monotonic time the last call completed."""
        return asyncio.run(self._run(list(jobs)))

    async def _run(self, jobs: list[Sequence[tuple[str, str, Any]]]) -> float:
        import aiohttp

        queue: asyncio.Queue[Sequence[tuple[str, str, Any]]] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        last = [0.0]
        connector = aiohttp.TCPConnector(ssl=self.ctx, limit=self.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                while True:
                    try:
                        job = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    for method, path, body in job:
                        await self._call(session, method, path, body)
                        last[0] = max(last[0], time.monotonic())

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return last[0]

    async def _call(self, session: Any, method: str, path: str, body: Any) -> None:
        headers = {"Content-Type": "application/json"}
        if method == "PATCH":
            headers["Content-Type"] = "application/merge-patch+json"
        for attempt in range(8):
            try:
                async with session.request(
                    method, self.url + path, data=json.dumps(body), headers=headers
                ) as resp:
                    await resp.read()
                    if resp.status < 300:
                        self.calls += 1
                        return
                    if resp.status not in (429, 500, 503, 504):
                        raise RuntimeError(f"{method} {path}: {resp.status} {await resp.text()}")
            except (OSError, asyncio.TimeoutError) as e:  # noqa: UP041
                if attempt == 7:
                    raise RuntimeError(f"{method} {path}: {e}") from e
            self.retries += 1
            await asyncio.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"{method} {path}: gave up after retries")


def run_scale(args: argparse.Namespace, bin_dir: Path, logs: Path) -> dict[str, Any]:
    layout = ScaleLayout(args.scale_nodes, args.scale_pods, args.scale_namespaces)
    out: dict[str, Any] = {"layout": layout}
    with TestControlPlane(bin_dir) as plane:
        install_crds(plane)
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        networking = client.NetworkingV1Api(api)
        procs = Processes(plane.kubeconfig, logs)
        bulk = Bulk(plane, args.concurrency)
        try:
            recorder = Recorder(api, light=True).start()
            monitor = Monitor(
                lambda: {"operator": procs.pids("operator"), **control_plane_pids(plane)}, 0.5
            ).start()
            procs.spawn(
                "operator", ["operator", "--lease-namespace", "default", "--identity", "scale"]
            )
            time.sleep(3)  # let it list the (empty) cluster and take the lease
            window = Window.open("object creation", monitor)
            t0 = time.monotonic()
            log(f"scale: {layout.nodes} nodes")
            bulk.run(
                [
                    (
                        "POST",
                        "/api/v1/nodes",
                        {
                            "metadata": {"name": layout.node(i)},
                            "spec": {
                                "podCIDR": layout.node_cidr(i),
                                "podCIDRs": [layout.node_cidr(i)],
                            },
                        },
                    ),
                    (
                        "PATCH",
                        f"/api/v1/nodes/{layout.node(i)}/status",
                        {
                            "status": {
                                "addresses": [
                                    {
                                        "type": "InternalIP",
                                        "address": f"172.16.{i // 256}.{i % 256}",
                                    }
                                ]
                            }
                        },
                    ),
                ]
                for i in range(layout.nodes)
            )
            bulk.run(
                [
                    (
                        "POST",
                        "/api/v1/namespaces",
                        {"metadata": {"name": layout.ns(j), "labels": {"team": f"t{j % 5}"}}},
                    )
                ]
                for j in range(layout.namespaces)
            )
            log(f"scale: {layout.pods} pods ({time.monotonic() - t0:.0f} s so far)")
            pods_start = time.monotonic()
            bulk.run(pod_job(layout, k) for k in range(layout.pods))
            out["pod_rate"] = layout.pods / (time.monotonic() - pods_start)
            log(f"scale: policies ({time.monotonic() - t0:.0f} s so far)")
            policies = [p for j in range(layout.namespaces) for p in scale_policies(layout, j)]
            last_object_write = bulk.run(
                [
                    (
                        "POST",
                        f"/apis/networking.k8s.io/v1/namespaces/{p['metadata']['namespace']}/networkpolicies",
                        p,
                    )
                ]
                for p in policies
            )
            out["policies"] = len(policies)
            out["create_seconds"] = last_object_write - t0
            out["calls"] = bulk.calls
            out["retries"] = bulk.retries
            log(
                f"scale: {bulk.calls} API calls in {out['create_seconds']:.0f} s; waiting for the operator"
            )
            settled = quiesce(
                recorder, last_object_write, quiet=args.scale_quiet, limit=args.scale_settle_limit
            )
            last = recorder.last_write()
            out["settle"] = max(0.0, last - last_object_write)
            out["settle_limited"] = time.monotonic() - last_object_write >= args.scale_settle_limit
            out["writes_after_last_object"] = len(settled)
            out["window"] = window.close(monitor)
            with recorder.cond:
                out["objects"] = {
                    "AddressGroup": sum(1 for p, _ in recorder.current if p == ADDRESS_GROUPS),
                    "NodeRules": sum(1 for p, _ in recorder.current if p == NODE_RULES),
                }
                out["writes_total"] = len(recorder.writes)
                out["bytes_total"] = sum(w.nbytes for w in recorder.writes)
            out["sizes"] = largest_objects(api)
            # one more policy at a time: create -> NodeRules written on every spanned node
            singles = []
            half, more = layout.namespaces // 2, layout.namespaces * 6 // 10
            for n, (j, app) in enumerate(
                [(half, "a7"), (half + 1, "a7"), (half + 2, "a7"), (more, None), (more + 1, None)]
            ):
                label = "app=a7 of a namespace" if app else "all pods of a namespace"
                ns = layout.ns(j)
                name = f"single-{n}"
                selector = {"matchLabels": {"app": app}} if app else {}
                span = layout.span(j, app)
                body = {
                    "metadata": {"name": name},
                    "spec": {
                        "podSelector": selector,
                        "policyTypes": ["Ingress"],
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a6"}}}]}],
                    },
                }
                key = f"{ns}/{name}"
                t = time.monotonic()
                networking.create_namespaced_network_policy(ns, body)
                ok = recorder.wait(
                    lambda key=key, span=span: all(
                        key in recorder.policies.get(n, ()) for n in span
                    ),
                    60,
                )
                took = time.monotonic() - t if ok else float("nan")
                writes = quiesce(recorder, t, quiet=1.0, limit=30)
                singles.append((label, len(span), took, len(writes), sum(w.nbytes for w in writes)))
            out["singles"] = singles
            out["operator_hwm"] = max(
                (s.hwm for s in map(proc_sample, procs.pids("operator")) if s), default=0
            )
            out["monitor"] = (dict(monitor.peak_rss), dict(monitor.peak_one))
            out["final"] = monitor.snapshot()
            # cold start over the full cluster
            procs.stop("operator")
            restart_log = logs / "operator-restart.log"
            t = time.monotonic()
            w = time.time()
            procs.spawn(
                "operator-restart",
                ["operator", "--lease-namespace", "default", "--identity", "scale2"],
            )
            before = len(recorder.writes)
            leading = wait_for_log(restart_log, "leading:", args.restart_timeout)
            out["restart_leading"] = (leading - w) if leading else float("nan")
            out["restart_timeout"] = args.restart_timeout
            if leading:
                quiesce(recorder, t, quiet=3.0, limit=60)
            out["restart_writes"] = len(recorder.writes) - before
            out["restart_hwm"] = max(
                (s.hwm for s in map(proc_sample, procs.pids("operator-restart")) if s), default=0
            )
            out["restart_wall"] = time.monotonic() - t
            out["dead"] = procs.dead()
            monitor.stop()
            recorder.stop()
        finally:
            procs.stop_all()
    return out


def pod_job(layout: ScaleLayout, k: int) -> list[tuple[str, str, Any]]:
    ns, name, ip = layout.ns(layout.pod_ns(k)), f"pod-{k:05d}", layout.pod_ip(k)
    return [
        (
            "POST",
            f"/api/v1/namespaces/{ns}/pods",
            {
                "metadata": {"name": name, "labels": {"app": layout.app(k)}},
                "spec": {
                    "nodeName": layout.node(layout.pod_node(k)),
                    "containers": [
                        {
                            "name": "c",
                            "image": "agnhost",
                            "ports": [{"containerPort": 80, "name": "http"}],
                        }
                    ],
                },
            },
        ),
        (
            "PATCH",
            f"/api/v1/namespaces/{ns}/pods/{name}/status",
            {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}},
        ),
    ]


def wait_for_log(path: Path, needle: str, timeout: float) -> float | None:
    """Wall-clock time of the first log line containing ``needle`` (asctime of the line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if needle in line:
                    stamp = line[:23]
                    with contextlib.suppress(ValueError):
                        return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        time.sleep(0.2)
    return None


def largest_objects(api: client.ApiClient) -> dict[str, tuple[str, int, int, int]]:
    """plural -> (name of the largest, its size as served, its spec size, count)."""
    custom = client.CustomObjectsApi(api)
    out = {}
    for plural in (ADDRESS_GROUPS, NODE_RULES):
        items = custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]
        best = ("", 0, 0)
        for item in items:
            full = len(json.dumps(item, separators=(",", ":")))
            if full > best[1]:
                best = (
                    item["metadata"]["name"],
                    full,
                    len(json.dumps(item.get("spec"), separators=(",", ":"))),
                )
        out[plural] = (*best, len(items))
    return out


# ---- report -------------------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def report_live(res: dict[str, Any], args: argparse.Namespace) -> list[str]:
    layout: LiveLayout = res["layout"]
    results: list[PolicyResult] = res["policies"]
    totals = [r.total for r in results]
    lines = [
        f"== Live: {layout.nodes} nodes x {layout.pods_per_node} pods, {len(results)} policies one at a time ==",
        f"  setup {res['setup']:.0f} s (operator + agents start -> every node applied: {res['startup']:.1f} s)",
        f"  baseline isolate-all policy (spans all {layout.nodes} nodes): {res['baseline'] * 1000:.0f} ms",
        "",
        "  write -> enforced on every spanned node (each policy spans "
        f"{results[0].span if results else 0} nodes):",
        f"    p50 {fmt_s(pct(totals, 50))}   p90 {fmt_s(pct(totals, 90))}   p99 {fmt_s(pct(totals, 99))}   "
        f"max {fmt_s(max(totals, default=float('nan')))}   target p99 <= {TARGET_P99 * 1000:.0f} ms: "
        + ("MET" if pct(totals, 99) <= TARGET_P99 else "MISSED"),
    ]
    parts = [
        ("publish (write -> last spanned NodeRules received)", [r.publish for r in results]),
        ("  of which write -> operator's first write received", [r.first_write for r in results]),
        (
            "  of which its first -> last write (sequential calls)",
            [r.publish - r.first_write for r in results],
        ),
        ("agent (-> last agent's appliedAt)", [r.agent for r in results if r.agent is not None]),
        ("report (-> status received)", [r.report for r in results if r.report is not None]),
    ]
    for label, vals in parts:
        lines.append(f"    {label:52s} p50 {fmt_s(pct(vals, 50))}  p99 {fmt_s(pct(vals, 99))}")
    lines.append(
        f"    operator writes per policy (AddressGroups + NodeRules): "
        f"mean {statistics.mean(r.writes for r in results):.1f}"
        if results
        else ""
    )
    probes = [(r.index, r.probe, r.total) for r in results if r.probe is not None]
    if probes:
        lines.append(
            "  data-plane cross-check (every 10th policy, probe polled from the write): "
            + ", ".join(
                f"#{i} probe {p * 1000:.0f} ms / status {t * 1000:.0f} ms" for i, p, t in probes
            )
        )
    bad = [r.index for r in results if not r.check_ok]
    lines.append(
        f"  probe right after 'enforced': {len(results) - len(bad)}/{len(results)} succeeded"
        + (f" (failed: {bad})" if bad else "")
    )
    ev = res.get("enforced_events") or []
    if ev:
        lines.append(
            f"  operator's own Enforced events ({len(ev)}): p50 {fmt_s(pct(ev, 50))}, p99 {fmt_s(pct(ev, 99))} "
            "(from kopf's delivery of the event, so without watch/batching delay)"
        )
    lines += [
        "",
        "  operator writes per pod event (mean over rounds; bytes = request bodies sent):",
    ]
    for cost in res["pod_events"]:
        if not cost.writes:
            continue
        n = len(cost.writes)
        kinds = ", ".join(f"{v / n:.1f} {k}" for k, v in sorted(cost.by_kind.items()))
        lines.append(
            f"    {cost.what:17s} {statistics.mean(cost.writes):4.1f} writes, "
            f"{statistics.mean(cost.nbytes):7.0f} bytes  ({kinds}; "
            f"last write {statistics.mean(cost.settle) * 1000 if cost.settle else float('nan'):.0f} ms after the event; n={n})"
        )
        if cost.metric_writes:
            lines.append(
                f"    {'':17s} operator's own counters: {statistics.mean(cost.metric_writes):4.1f} "
                f"writes, {statistics.mean(cost.metric_bytes):7.0f} bytes "
                "(write_bytes_total is printed with 6 significant digits)"
            )
    for n in res.get("narrowing", ()):
        if n.seconds:
            lines.append(
                f"  policy delete (narrowing), {n.flows} flows "
                f"(up to {n.entries} conntrack entries on a spanned node): delete -> reported on "
                f"every spanned node median {fmt_s(statistics.median(n.seconds))}, "
                f"max {fmt_s(max(n.seconds))} (n={len(n.seconds)})"
            )
        if n.cleanup:
            lines.append(
                f"    {'':17s} then the conntrack clean-up, apply -> done on the slowest node: "
                f"median {fmt_s(statistics.median(n.cleanup))}, max {fmt_s(max(n.cleanup))}"
            )
    peak, one = res["monitor"]
    final = res["final"]
    lines += ["", "  memory (peak of the sum over the group / largest single process):"]
    for name in final:
        lines.append(
            f"    {name:15s} {final[name][3]:3d} procs  {mib(peak.get(name, 0)):>9} / {mib(one.get(name, 0))}"
        )
    lines += res["idle"].lines() + res["window"].lines()
    if res["dead"]:
        lines.append(f"  DEAD processes: {res['dead']}")
    return lines


def report_scale(res: dict[str, Any]) -> list[str]:
    layout: ScaleLayout = res["layout"]
    peak, one = res["monitor"]
    sizes = res["sizes"]
    lines = [
        f"== Scale (objects only): {layout.nodes} nodes, {layout.pods} pods, {layout.namespaces} namespaces, "
        f"{res['policies']} policies; operator only ==",
        f"  created with {res['calls']} API calls in {res['create_seconds']:.0f} s "
        f"({res['pod_rate']:.0f} pods/s incl. status patch, {res['retries']} retries)",
        f"  published: {res['objects']['AddressGroup']} AddressGroups, {res['objects']['NodeRules']} NodeRules; "
        f"operator writes {res['writes_total']} ({mib(res['bytes_total'])} sent)",
        f"  last object write -> published state stops changing: {res['settle']:.1f} s "
        f"({res['writes_after_last_object']} writes after the last object write"
        + (", STILL WRITING at the limit" if res["settle_limited"] else "")
        + ")",
        f"  operator peak RSS (VmHWM): {mib(res['operator_hwm'])}",
        f"  kube-apiserver peak RSS {mib(peak.get('kube-apiserver', 0))}, etcd {mib(peak.get('etcd', 0))}",
    ]
    for plural, (name, full, spec, count) in sizes.items():
        kind = "AddressGroup" if plural == ADDRESS_GROUPS else "NodeRules"
        lines.append(
            f"  largest {kind}: {name} {full / 1024:.0f} KiB as served ({spec / 1024:.0f} KiB spec) "
            f"of {count}; etcd limit {ETCD_OBJECT_LIMIT / 1024:.0f} KiB"
        )
    for label, span, took, writes, nbytes in res["singles"]:
        lines.append(
            f"  one more policy ({label}, spans {span} nodes): create -> all its NodeRules written "
            f"{took * 1000:.0f} ms ({writes} writes, {nbytes / 1024:.0f} KiB)"
        )
    leading = res["restart_leading"]
    lines.append(
        "  operator restart over the full cluster: start -> leading (initial listing done) "
        + (
            f"{leading:.1f} s, {res['restart_writes']} writes after restart"
            if leading == leading
            else f"NOT within {res['restart_timeout']:.0f} s"
        )
        + f", peak RSS {mib(res['restart_hwm'])}"
    )
    lines += res["window"].lines()
    if res["dead"]:
        lines.append(f"  DEAD processes: {res['dead']}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (< 90 s)")
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--pods-per-node", type=int, default=3)
    p.add_argument("--policies", type=int, default=100)
    p.add_argument("--pod-event-rounds", type=int, default=5)
    p.add_argument(
        "--flow-rounds",
        type=int,
        default=3,
        help="all-pairs probe rounds before the 'many flows' narrowing test (0: skip it)",
    )
    p.add_argument("--narrowing-deletes", type=int, default=5)
    p.add_argument("--scale-nodes", type=int, default=1000)
    p.add_argument("--scale-pods", type=int, default=30000)
    p.add_argument("--scale-namespaces", type=int, default=100)
    p.add_argument(
        "--scale-quiet", type=float, default=5.0, help="seconds without writes = settled"
    )
    p.add_argument("--scale-settle-limit", type=float, default=900.0)
    p.add_argument("--concurrency", type=int, default=32, help="parallel API calls (scale run)")
    p.add_argument(
        "--operator-metrics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cross-check write counts with the operator's /metrics (needs --metrics-port)",
    )
    p.add_argument(
        "--restart-timeout",
        type=float,
        default=180.0,
        help="scale run: how long to wait for a restarted operator to lead",
    )
    p.add_argument("--skip-live", action="store_true")
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--keep-logs", type=Path, help="directory for process logs (default: temporary)")
    p.add_argument("--json", type=Path, help="also write the per-policy results here")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.nodes, args.pods_per_node, args.policies, args.pod_event_rounds = 5, 2, 10, 1
        args.flow_rounds, args.narrowing_deletes = 1, 2
        args.scale_nodes, args.scale_pods, args.scale_namespaces = 50, 1500, 10
        args.scale_quiet, args.scale_settle_limit = 2.0, 60.0
    if args.policies > GROUPS * GROUPS:
        p.error(f"at most {GROUPS * GROUPS} policies")
    reason = unavailable_reason()
    if reason is not None and not args.skip_live:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    cleanup_dead_runs()
    # the bench's own watches log reconnects when a control plane goes away at the end
    logging.getLogger("controller.kube.informer").setLevel(logging.ERROR)
    bin_dir = find_binaries()
    logs_ctx = (
        contextlib.nullcontext(str(args.keep_logs))
        if args.keep_logs
        else tempfile.TemporaryDirectory(prefix="nftpolicy-bench-")
    )
    started = time.monotonic()
    lines = [
        f"nftpolicy control-plane convergence ({'quick' if args.quick else 'full'}); "
        f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}"
    ]
    with logs_ctx as logs_dir:
        logs = Path(logs_dir)
        logs.mkdir(parents=True, exist_ok=True)
        try:
            if not args.skip_live:
                t = time.monotonic()
                live = run_live(args, bin_dir, logs)
                if args.json:
                    args.json.write_text(
                        json.dumps([r.__dict__ for r in live["policies"]], indent=1)
                    )
                lines += report_live(live, args) + [
                    f"  (part took {time.monotonic() - t:.0f} s)",
                    "",
                ]
                print("\n".join(lines), flush=True)
                lines = []
            if not args.skip_scale:
                t = time.monotonic()
                scale = run_scale(args, bin_dir, logs)
                lines += report_scale(scale) + [f"  (part took {time.monotonic() - t:.0f} s)", ""]
        except Exception as e:
            print("\n".join(lines), flush=True)
            print(f"bench failed: {type(e).__name__}: {e}", file=sys.stderr)
            for path in sorted(logs.glob("*.log"))[:3]:
                print(
                    f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}", file=sys.stderr
                )
            return 1
    lines.append(f"total {time.monotonic() - started:.0f} s")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
