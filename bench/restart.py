"""Operator cold start and restart at scale: process start -> first publish complete, peak RSS.

Usage: ``python bench/restart.py [--stage PODS:POLICIES ...] [--nodes N] [--namespaces N]
[--tree DIR] [--concurrency N] [--timeout S] [--keep-logs DIR]`` (needs the control-plane
binaries of ``scripts/testenv.sh``; no network namespaces, no root).

A real etcd + kube-apiserver (``TestControlPlane``) holds Nodes, Namespaces, Pods (created, then
status-patched with an IP, as a kubelet would; no kubelets) and NetworkPolicies, written with
parallel API calls while no operator runs. Stages grow the same cluster (default 30,000 pods /
3,000 policies, then 100,000 / 10,000; 1,000 nodes and 1,000 namespaces throughout). For each
stage the operator (``python -m controller.cli operator`` from ``--tree``, default this
checkout, so the code before a change can be measured from an exported copy) is run twice:

- *cold start*: what is published is out of date (nothing yet, or the previous stage's state);
- *restart*: the same cluster again, everything already published: no write may happen.

Reported for each run: seconds from process start to "initial listing complete" (our own paged
listing of every kind; absent from code before it), to "leading:" (the published objects listed
and the differences planned), and to the first publish complete (``pending_writes`` 0 and
``writes_total`` unchanged for ``QUIET`` seconds, or ``NOTHING_TO_WRITE`` if nothing was
written; the time of the last change), the writes made,
the peak RSS (VmHWM) and how many log lines the operator wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.convergence import (  # noqa: E402
    Bulk,
    free_port,
    log,
    mib,
    proc_sample,
    scrape,
    wait_for_log,
)
from controller.testing.apiserver import TestControlPlane, find_binaries  # noqa: E402
from tests.integration.live import install_crds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PODS_PER_NS = 100
POLICIES_PER_NS = 10
QUIET = 3.0  # seconds without a write (and none pending): the first publish is complete
NOTHING_TO_WRITE = 15.0  # seconds after "leading:" without any write: nothing to write
M = "nftpolicy_operator_"


@dataclass(frozen=True)
class Layout:
    nodes: int
    namespaces: int

    def node(self, i: int) -> str:
        return f"node-{i:04d}"

    def node_cidr(self, i: int) -> str:
        return f"10.{64 + i // 256}.{i % 256}.0/24"

    def ns(self, j: int) -> str:
        return f"ns-{j:04d}"

    def pod_ns(self, k: int) -> int:
        return (k // PODS_PER_NS) % self.namespaces

    def pod_ip(self, k: int) -> str:
        i = k % self.nodes
        return f"10.{64 + i // 256}.{i % 256}.{10 + k // self.nodes}"

    def node_job(self, i: int) -> list[tuple[str, str, Any]]:
        address = {"type": "InternalIP", "address": f"172.16.{i // 256}.{i % 256}"}
        cidr = self.node_cidr(i)
        return [
            (
                "POST",
                "/api/v1/nodes",
                {"metadata": {"name": self.node(i)}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}},
            ),
            ("PATCH", f"/api/v1/nodes/{self.node(i)}/status", {"status": {"addresses": [address]}}),
        ]

    def pod_job(self, k: int) -> list[tuple[str, str, Any]]:
        ns, name, ip = self.ns(self.pod_ns(k)), f"pod-{k:06d}", self.pod_ip(k)
        container = {
            "name": "c",
            "image": "agnhost",
            "ports": [{"containerPort": 80, "name": "http"}],
        }
        return [
            (
                "POST",
                f"/api/v1/namespaces/{ns}/pods",
                {
                    "metadata": {"name": name, "labels": {"app": f"a{k % 10}"}},
                    "spec": {"nodeName": self.node(k % self.nodes), "containers": [container]},
                },
            ),
            (
                "PATCH",
                f"/api/v1/namespaces/{ns}/pods/{name}/status",
                {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}},
            ),
        ]

    def policy_job(self, m: int) -> list[tuple[str, str, Any]]:
        """Policy m, in namespace m // POLICIES_PER_NS: a default deny, pod-to-pod allowances,
        two cross-namespace ones (by team label) and an egress one."""
        j, r = (m // POLICIES_PER_NS) % self.namespaces, m % POLICIES_PER_NS
        ns = self.ns(j)
        spec: dict[str, Any]
        if r == 0:
            spec = {"podSelector": {}, "policyTypes": ["Ingress"]}
        elif r == 9:
            spec = {
                "podSelector": {"matchLabels": {"app": "a9"}},
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"podSelector": {"matchLabels": {"app": "a0"}}}]},
                    {"ports": [{"protocol": "UDP", "port": 53}]},
                ],
            }
        else:
            peer: dict[str, Any] = {"podSelector": {"matchLabels": {"app": f"a{(r + 1) % 10}"}}}
            if r in (3, 6):
                peer["namespaceSelector"] = {"matchLabels": {"team": f"t{(j + r) % 5}"}}
            spec = {
                "podSelector": {"matchLabels": {"app": f"a{r}"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [peer], "ports": [{"protocol": "TCP", "port": 8000 + r}]}],
            }
        body = {"metadata": {"name": f"p{r}-{m:05d}"}, "spec": spec}
        return [("POST", f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies", body)]


@dataclass
class Run:
    label: str
    listing: float | None  # seconds from start to "initial listing complete"
    leading: float | None
    published: float | None
    writes: int
    failures: int
    hwm: int
    log_lines: int

    def line(self) -> str:
        def s(x: float | None) -> str:
            return f"{x:6.1f} s" if x is not None else "     n/a"

        return (
            f"  {self.label:<11} listing {s(self.listing)}  leading {s(self.leading)}  "
            f"published {s(self.published)}  writes {self.writes:6d} "
            f"(failed {self.failures})  peak RSS {mib(self.hwm):>9}  log lines {self.log_lines}"
        )


def run_operator(label: str, tree: Path, kubeconfig: Path, logs: Path, timeout: float) -> Run:
    """Start the operator, wait for its first publish to complete, stop it."""
    port = free_port()
    path = logs / f"operator-{label.replace(' ', '-')}.log"
    started = time.time()
    with open(path, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.cli",
                "operator",
                "--lease-namespace",
                "default",
                "--identity",
                "bench",
                "--metrics-port",
                str(port),
                "--kubeconfig",
                str(kubeconfig),
                "--log-level",
                "info",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
        )
    hwm = 0
    try:
        leading = wait_for_log(path, "leading:", timeout)
        published: float | None = None
        writes = failures = 0
        if leading is not None:
            last, changed = -1.0, time.time()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                sample = proc_sample(proc.pid)
                hwm = max(hwm, sample.hwm if sample else 0)
                metrics = scrape(port)
                done = metrics.get(M + "writes_total", 0) + metrics.get(
                    M + "write_failures_total", 0
                )
                if done != last:
                    last, changed = done, time.time()
                # pending_writes reads 0 until the first cycle after "leading:" sets it: with
                # no write seen yet, only a longer silence proves there is nothing to write.
                idle = metrics.get(M + "pending_writes", 1) == 0
                quiet = QUIET if done else NOTHING_TO_WRITE
                if idle and time.time() - max(changed, leading) >= quiet:
                    published = max(changed if done else leading, leading) - started
                    writes = int(metrics.get(M + "writes_total", 0))
                    failures = int(metrics.get(M + "write_failures_total", 0))
                    break
                time.sleep(0.2)
        sample = proc_sample(proc.pid)
        hwm = max(hwm, sample.hwm if sample else 0)
        listing = wait_for_log(path, "initial listing complete", 1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = path.read_text(errors="replace")
    return Run(
        label,
        None if listing is None else listing - started,
        None if leading is None else leading - started,
        published,
        writes,
        failures,
        hwm,
        text.count("\n"),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--stage",
        action="append",
        metavar="PODS:POLICIES",
        help="cluster sizes to measure, growing (default 30000:3000 and 100000:10000)",
    )
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--namespaces", type=int, default=1000)
    p.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose operator runs")
    p.add_argument("--concurrency", type=int, default=64, help="parallel API calls")
    p.add_argument("--timeout", type=float, default=600.0, help="per operator run")
    p.add_argument("--keep-logs", type=Path, help="directory for operator logs")
    args = p.parse_args(argv)
    stages = [tuple(map(int, s.split(":"))) for s in args.stage or ("30000:3000", "100000:10000")]
    if max(pods for pods, _ in stages) > 240 * args.nodes:
        p.error("at most 240 pods per node (one /24 per node)")
    layout = Layout(args.nodes, args.namespaces)
    lines = [
        f"operator cold start / restart ({args.tree}); {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.2f}"
    ]
    logs_ctx = (
        contextlib.nullcontext(str(args.keep_logs))
        if args.keep_logs
        else tempfile.TemporaryDirectory(prefix="nftpolicy-restart-")
    )
    with logs_ctx as logs_dir, TestControlPlane(find_binaries()) as plane:
        logs = Path(logs_dir)
        logs.mkdir(parents=True, exist_ok=True)
        install_crds(plane)
        bulk = Bulk(plane, args.concurrency)
        t = time.monotonic()
        bulk.run(layout.node_job(i) for i in range(layout.nodes))
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
        lines.append(
            f"  {layout.nodes} nodes, {layout.namespaces} namespaces in {time.monotonic() - t:.0f} s"
        )
        pods = policies = 0
        for want_pods, want_policies in stages:
            t = time.monotonic()
            log(f"creating pods {pods}..{want_pods}, policies {policies}..{want_policies}")
            bulk.run(layout.pod_job(k) for k in range(pods, want_pods))
            created = time.monotonic() - t
            bulk.run(layout.policy_job(m) for m in range(policies, want_policies))
            lines.append(
                f"== {want_pods} pods, {want_policies} policies, {layout.nodes} nodes, "
                f"{layout.namespaces} namespaces: {want_pods - pods} pods created in "
                f"{created:.0f} s ({(want_pods - pods) / max(created, 1e-9):.0f}/s, create + "
                f"status patch, {args.concurrency} in parallel), policies in "
                f"{time.monotonic() - t - created:.0f} s; {bulk.retries} retries so far"
            )
            pods, policies = want_pods, want_policies
            for label in ("cold start", "restart"):
                log(f"{pods} pods: operator {label}")
                run = run_operator(label, args.tree, plane.kubeconfig, logs, args.timeout)
                lines.append(run.line())
                print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
