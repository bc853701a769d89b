"""Benchmark of the incremental compiler on synthetic clusters.

Usage: ``python bench/compile.py [--quick] [--seed N] [--events N] [--publish-samples N]
[--profile]``

For each cluster size (10k pods / 1k policies / 100 nodes and 100k pods / 10k policies /
1k nodes; ``--quick`` makes both 10x smaller) and each event order (pods before policies, and
policies before pods) a fresh subprocess generates the cluster (see ``bench/synthetic.py``),
feeds it into a new ``Compiler``, materializes every group and every node's rules, and reports
times, peak RSS and output sizes, and whether both orders give the same output.

The big cluster then gets single events (pod add, pod label change, pod delete, namespace
label change, policy add and delete). Each is timed as the compiler call plus
``take_changes()``; a spread-out subset is also timed with materializing what
``take_changes()`` reported (what the operator publishes), with a tally of which groups that
time went to. Finally the incrementally updated output is checked against a fresh compile of
the resulting objects.

``--profile`` runs only the big cluster (pods first) in-process under cProfile and prints the
top functions of the load and of the materialization.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import math
import os
import platform
import pstats
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synthetic import BIG, SMALL, ClusterShape, SyntheticCluster  # noqa: E402
from controller.compiler import Compiler  # noqa: E402
from controller.compiler.ir import AddressGroup, Group, NodeRules  # noqa: E402
from controller.gc_tuning import tune_for_large_heaps  # noqa: E402
from controller.model import Namespace, NetworkPolicy, Node, Pod  # noqa: E402

COMPILE_TARGET_S = 10.0  # full compile of 100k pods
EVENT_TARGET_MS = 5.0  # one incremental event
TOP_COSTS = 8  # publishing costs listed in the report
ORDERS = ("pods-first", "policies-first")
ORDER_TEXT = {
    "pods-first": "namespaces, nodes, pods, policies",
    "policies-first": "namespaces, nodes, policies, pods",
}


# ---- measurements (inside a worker subprocess) ---------------------------------------------


@dataclass
class LoadResult:
    """What one worker measured for one cluster size and one feed order."""

    shape: dict[str, Any]
    order: str
    generate_s: float
    feed_s: float
    groups_s: float
    node_rules_s: float
    input_rss_mib: float  # peak RSS once the objects exist, before any compiling
    peak_rss_mib: float
    pods_with_ipv6: int
    pods_without_address: int
    groups: int
    port_groups: int
    group_members: int
    nodes: int
    local_pods: int
    compiled_policies: int
    digest: str  # equal digests: both orders produced the same output
    events: list[dict[str, Any]] = field(default_factory=list)
    publish_costs: list[dict[str, Any]] = field(default_factory=list)
    matches_fresh_compile: bool | None = None


@dataclass
class EventStats:
    """Cost of one kind of event, in milliseconds, with and without materialization."""

    name: str
    samples: int
    mean_ms: float
    p99_ms: float
    max_ms: float
    publish_samples: int  # events also timed with materialization
    mean_total_ms: float  # including materialization of the reported changes
    p99_total_ms: float
    max_total_ms: float
    mean_groups: float  # changed groups per event
    mean_nodes: float  # changed nodes per event


def max_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def feed(
    compiler: Compiler,
    namespaces: Iterable[Namespace],
    nodes: Iterable[Node],
    pods: Iterable[Pod],
    policies: Iterable[NetworkPolicy],
    order: str,
) -> None:
    """Load every object into ``compiler``: namespaces, nodes, then pods and policies in ``order``."""
    for ns in namespaces:
        compiler.upsert_namespace(ns)
    for node in nodes:
        compiler.upsert_node(node)
    if order == "pods-first":
        for pod in pods:
            compiler.upsert_pod(pod)
    for policy in policies:
        compiler.upsert_policy(policy)
    if order == "policies-first":
        for pod in pods:
            compiler.upsert_pod(pod)
    compiler.take_changes()


def feed_cluster(compiler: Compiler, cluster: SyntheticCluster, order: str) -> None:
    """Load the initial objects of ``cluster``."""
    feed(compiler, cluster.namespaces, cluster.nodes, cluster.pods, cluster.policies, order)


def materialize_groups(compiler: Compiler) -> list[Group]:
    """Every group, as the operator would publish it after a full load."""
    out = []
    for name in compiler.group_names():
        group = compiler.group(name)
        assert group is not None
        out.append(group)
    return out


def materialize_nodes(compiler: Compiler) -> list[NodeRules]:
    """Every node's rules, as the operator would publish them after a full load."""
    return [compiler.node_rules(node) for node in compiler.node_names()]


def group_size(group: Group) -> int:
    """Members of a group: addresses and ranges, or (address, port) pairs."""
    if isinstance(group, AddressGroup):
        return len(group.addresses) + len(group.ranges)
    return len(group.members)


def output_digest(groups: list[Group], node_rules: list[NodeRules]) -> str:
    """A hash of the compiled output that does not depend on set iteration order."""
    h = hashlib.sha256()
    for group in groups:
        if isinstance(group, AddressGroup):
            members: list[Any] = sorted((ip.version, int(ip)) for ip in group.addresses)
            members.append([str(a) + "-" + str(b) for a, b in group.ranges])
        else:
            members = sorted((ip.version, int(ip), port) for ip, port in group.members)
        h.update(repr((group.name, group.peer, members)).encode())
    for rules in node_rules:
        h.update(json.dumps(rules.to_json(), sort_keys=True).encode())
    return h.hexdigest()[:16]


@dataclass
class PublishCost:
    """Materialization time spent on one group (or on node rules) over the sampled events."""

    what: str
    size: int = 0  # members at the last materialization (pods, for node rules)
    calls: int = 0
    seconds: float = 0.0


class EventRunner:
    """Times single events against a loaded compiler and tallies what publishing costs."""

    def __init__(self, compiler: Compiler) -> None:
        self.compiler = compiler
        self.costs: dict[str, PublishCost] = {}

    def measure(self, op: Callable[[], object], publish: bool) -> tuple[float, float, int, int]:
        """Seconds for ``op`` + ``take_changes()``, and with materialization of the changes."""
        compiler = self.compiler
        compiler.take_changes()
        start = time.perf_counter()
        op()
        changes = compiler.take_changes()
        compiled = time.perf_counter()
        if not publish:
            return compiled - start, compiled - start, len(changes.groups), len(changes.nodes)
        for name in changes.groups:
            t0 = time.perf_counter()
            group = compiler.group(name)
            self._tally(name, group, time.perf_counter() - t0)
        for node in changes.nodes:
            t0 = time.perf_counter()
            rules = compiler.node_rules(node)
            self._tally("node_rules", rules, time.perf_counter() - t0)
        done = time.perf_counter()
        return compiled - start, done - start, len(changes.groups), len(changes.nodes)

    def _tally(self, key: str, output: Group | NodeRules | None, seconds: float) -> None:
        cost = self.costs.get(key)
        if cost is None:
            if output is None:
                what = f"deleted group {key}"
            elif isinstance(output, NodeRules):
                what = "node_rules(node) (all nodes)"
            else:
                kind = "address" if isinstance(output, AddressGroup) else f"port {output.port_name}"
                what = f"{kind} group: {output.peer}"
            cost = self.costs[key] = PublishCost(what)
        cost.calls += 1
        cost.seconds += seconds
        if isinstance(output, NodeRules):
            cost.size = len(output.pods)
        elif output is not None:
            cost.size = group_size(output)

    def stats(self, name: str, ops: list[Callable[[], object]], publish_samples: int) -> EventStats:
        """Run each op as one event and summarize the costs.

        Every op is timed without materialization; an evenly spread subset of
        ``publish_samples`` of them is also timed with it (materializing only reads, so
        skipping it elsewhere does not change the compiler's state).
        """
        every = max(1, len(ops) // max(1, publish_samples))
        plain: list[float] = []
        total: list[float] = []
        groups = nodes = 0
        for i, op in enumerate(ops):
            a, b, g, n = self.measure(op, publish=i % every == 0)
            plain.append(a * 1e3)
            if i % every == 0:
                total.append(b * 1e3)
            groups += g
            nodes += n
        count = len(plain)
        return EventStats(
            name=name,
            samples=count,
            mean_ms=sum(plain) / count,
            p99_ms=percentile(plain, 99),
            max_ms=max(plain),
            publish_samples=len(total),
            mean_total_ms=sum(total) / len(total),
            p99_total_ms=percentile(total, 99),
            max_total_ms=max(total),
            mean_groups=groups / count,
            mean_nodes=nodes / count,
        )


@dataclass
class EventsResult:
    """Event costs, where publishing time went, and whether the end state is right."""

    stats: list[EventStats]
    costs: list[PublishCost]
    matches_fresh_compile: bool


def run_events(
    compiler: Compiler, cluster: SyntheticCluster, pod_events: int, publish_samples: int
) -> EventsResult:
    """Single events against the loaded cluster; objects are built outside the timed part.

    Afterwards the incrementally updated output is compared with a fresh compile of the
    resulting objects.
    """
    rng = cluster.events_rng
    new_pods = [cluster.new_pod() for _ in range(pod_events)]
    live = [p for p in cluster.pods if p.addresses and p.labels.get("tier") != "infra"]
    picked = rng.sample(live, 2 * pod_events)
    relabeled = [cluster.relabel_pod(p) for p in picked[:pod_events]]
    deleted = [p.key for p in picked[pod_events:]]
    namespaces = rng.sample(cluster.namespaces[2:], min(50, len(cluster.namespaces) - 2))
    ns_changes = [cluster.relabel_namespace(ns) for ns in namespaces]
    new_policies = [cluster.new_policy() for _ in range(max(20, pod_events // 10))]

    runner = EventRunner(compiler)
    plan: list[tuple[str, list[Callable[[], object]]]] = [
        ("pod add", [_bind(compiler.upsert_pod, p) for p in new_pods]),
        ("pod label change", [_bind(compiler.upsert_pod, p) for p in relabeled]),
        ("pod delete", [_bind(compiler.delete_pod, k) for k in deleted]),
        ("namespace label change", [_bind(compiler.upsert_namespace, n) for n in ns_changes]),
        ("policy add", [_bind(compiler.upsert_policy, p) for p in new_policies]),
        ("policy delete", [_bind(compiler.delete_policy, p.key) for p in new_policies]),
    ]
    stats = [runner.stats(name, ops, publish_samples) for name, ops in plan]

    pods = {p.key: p for p in cluster.pods}
    pods.update((p.key, p) for p in [*new_pods, *relabeled])
    for key in deleted:
        del pods[key]
    final_ns = {ns.name: ns for ns in cluster.namespaces}
    final_ns.update((ns.name, ns) for ns in ns_changes)
    fresh = Compiler()
    feed(fresh, final_ns.values(), cluster.nodes, pods.values(), cluster.policies, "pods-first")
    same = output_digest(materialize_groups(compiler), materialize_nodes(compiler)) == (
        output_digest(materialize_groups(fresh), materialize_nodes(fresh))
    )
    costs = sorted(runner.costs.values(), key=lambda c: -c.seconds)
    return EventsResult(stats, costs, same)


def _bind(fn: Callable[[Any], object], arg: object) -> Callable[[], object]:
    return lambda: fn(arg)


def run_worker(
    shape: ClusterShape, order: str, seed: int, pod_events: int, publish_samples: int
) -> LoadResult:
    """Generate, load and materialize one cluster; optionally measure single events."""
    start = time.perf_counter()
    cluster = SyntheticCluster(shape, seed)
    generate_s = time.perf_counter() - start
    gc.collect()
    input_rss = max_rss_mib()
    tune_for_large_heaps()  # the same GC settings as the operator process

    compiler = Compiler()
    start = time.perf_counter()
    feed_cluster(compiler, cluster, order)
    feed_s = time.perf_counter() - start

    start = time.perf_counter()
    groups = materialize_groups(compiler)
    groups_s = time.perf_counter() - start
    start = time.perf_counter()
    node_rules = materialize_nodes(compiler)
    node_rules_s = time.perf_counter() - start
    peak_rss = max_rss_mib()

    result = LoadResult(
        shape=asdict(shape),
        order=order,
        generate_s=generate_s,
        feed_s=feed_s,
        groups_s=groups_s,
        node_rules_s=node_rules_s,
        input_rss_mib=input_rss,
        peak_rss_mib=peak_rss,
        pods_with_ipv6=sum(1 for p in cluster.pods if any(ip.version == 6 for ip in p.addresses)),
        pods_without_address=sum(1 for p in cluster.pods if not p.addresses),
        groups=len(groups),
        port_groups=sum(1 for g in groups if not isinstance(g, AddressGroup)),
        group_members=sum(group_size(g) for g in groups),
        nodes=len(node_rules),
        local_pods=sum(len(r.pods) for r in node_rules),
        compiled_policies=sum(len(r.policies) for r in node_rules),
        digest=output_digest(groups, node_rules),
    )
    del groups, node_rules
    if pod_events:
        events = run_events(compiler, cluster, pod_events, publish_samples)
        result.events = [asdict(s) for s in events.stats]
        result.publish_costs = [asdict(c) for c in events.costs[:TOP_COSTS]]
        result.matches_fresh_compile = events.matches_fresh_compile
    return result


def run_profile(shape: ClusterShape, seed: int, top: int = 25) -> None:
    """Profile the load and the materialization of ``shape`` and print the top functions."""
    cluster = SyntheticCluster(shape, seed)
    compiler = Compiler()
    for title, fn in (
        ("feed (pods first)", lambda: feed_cluster(compiler, cluster, "pods-first")),
        ("materialize groups", lambda: materialize_groups(compiler)),
        ("materialize node rules", lambda: materialize_nodes(compiler)),
    ):
        profiler = cProfile.Profile()
        profiler.runcall(fn)
        print(f"\n==== cProfile: {title}, {shape.pods} pods / {shape.policies} policies ====")
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(top)


# ---- driver (parent process) ---------------------------------------------------------------


def spawn_worker(
    shape: ClusterShape, order: str, seed: int, pod_events: int, publish_samples: int
) -> LoadResult:
    """Run one measurement in a fresh interpreter so its peak RSS is its own."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        json.dumps(asdict(shape)),
        "--order",
        order,
        "--seed",
        str(seed),
        "--events",
        str(pod_events),
        "--publish-samples",
        str(publish_samples),
    ]
    # A fixed hash seed makes set iteration, and so the digest, identical across workers.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {shape.name}/{order} failed with exit code {proc.returncode}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return LoadResult(**raw)


def fmt_ratio(measured: float, target: float) -> str:
    verdict = "ok" if measured <= target else "MISSED"
    return f"{measured / target:5.2f}x {verdict}"


def print_report(
    results: dict[tuple[str, str], LoadResult], shapes: list[ClusterShape], quick: bool
) -> None:
    """The human-readable report of every worker's results."""
    col = 24
    names = [s.name for s in shapes]

    def row(label: str, values: Iterable[str]) -> None:
        print(f"  {label:<36}" + "".join(f"{v:>{col}}" for v in values))

    print("\n== Full compile (fresh Compiler, every object fed once) ==")
    row("cluster", names)
    first = [results[(n, ORDERS[0])] for n in names]
    row("namespaces / nodes", (f"{r.shape['namespaces']} / {r.shape['nodes']}" for r in first))
    row("pods / policies", (f"{r.shape['pods']} / {r.shape['policies']}" for r in first))
    row(
        "pods dual-stack / without address",
        (f"{r.pods_with_ipv6} / {r.pods_without_address}" for r in first),
    )
    row("generate + parse objects (not timed)", (f"{r.generate_s:.1f} s" for r in first))
    for order in ORDERS:
        rs = [results[(n, order)] for n in names]
        print(f" order: {ORDER_TEXT[order]}")
        row("feed objects", (f"{r.feed_s:.2f} s" for r in rs))
        row("materialize all groups", (f"{r.groups_s:.2f} s" for r in rs))
        row("materialize all node rules", (f"{r.node_rules_s:.2f} s" for r in rs))
        row("total", (f"{r.feed_s + r.groups_s + r.node_rules_s:.2f} s" for r in rs))
        row(
            "peak RSS (objects alone)",
            (f"{r.peak_rss_mib:.0f} ({r.input_rss_mib:.0f}) MiB" for r in rs),
        )
    print(" output")
    row("groups (of which port groups)", (f"{r.groups} ({r.port_groups})" for r in first))
    row("group members (addresses, ranges, pairs)", (str(r.group_members) for r in first))
    row("nodes with rules", (str(r.nodes) for r in first))
    row("isolated local pods", (str(r.local_pods) for r in first))
    row("compiled-policy entries over all nodes", (str(r.compiled_policies) for r in first))
    same = [
        "yes" if results[(n, ORDERS[0])].digest == results[(n, ORDERS[1])].digest else "NO"
        for n in names
    ]
    row("same output in both orders", same)

    big = shapes[-1]
    scale = big.pods / BIG.pods
    target = COMPILE_TARGET_S * scale
    print(
        f"\n target: compile {big.pods} pods <= {target:g} s"
        + (" (10 s scaled by --quick)" if quick else "")
    )
    for order in ORDERS:
        r = results[(big.name, order)]
        total = r.feed_s + r.groups_s + r.node_rules_s
        print(
            f"  {order:<16} feed {r.feed_s:6.2f} s  {fmt_ratio(r.feed_s, target)}   "
            f"feed + materialize {total:6.2f} s  {fmt_ratio(total, target)}"
        )

    events = results[(big.name, ORDERS[0])].events
    if not events:
        return
    stats = [EventStats(**raw) for raw in events]
    print(f"\n== Single events on the loaded {big.name} cluster ({big.pods} pods) ==")
    print(f"  times in ms; target <= {EVENT_TARGET_MS:g} ms per event; /T = measured / target")
    print_event_table(
        "compiler: the call + take_changes()",
        [(e.name, e.samples, e.mean_ms, e.p99_ms, e.max_ms, e) for e in stats],
    )
    print_event_table(
        "+ publish: also materialize every group and node that take_changes() reported",
        [
            (e.name, e.publish_samples, e.mean_total_ms, e.p99_total_ms, e.max_total_ms, e)
            for e in stats
        ],
    )
    r = results[(big.name, ORDERS[0])]
    print(f" where publishing time went (publish-sampled events, top {len(r.publish_costs)})")
    print(f"  {'total s':>8}{'calls':>7}{'ms/call':>9}{'size':>8}  what")
    for raw in r.publish_costs:
        c = PublishCost(**raw)
        print(
            f"  {c.seconds:>8.2f}{c.calls:>7}{c.seconds / c.calls * 1e3:>9.2f}{c.size:>8}  {c.what}"
        )
    verdict = {True: "yes", False: "NO (incremental state diverged)", None: "not checked"}
    print(f" output after all events equals a fresh compile: {verdict[r.matches_fresh_compile]}")


def print_event_table(
    title: str, rows: list[tuple[str, int, float, float, float, EventStats]]
) -> None:
    """One table of event costs: samples, mean, p99, max, ratios to the target, changes."""
    t = EVENT_TARGET_MS
    print(f" {title}")
    print(
        f"  {'event':<24}{'n':>6}{'mean':>10}{'p99':>10}{'max':>10}{'mean/T':>8}{'p99/T':>8}"
        f"{'groups':>8}{'nodes':>7}"
    )
    for name, n, mean, p99, worst, e in rows:
        flag = "" if p99 <= t else "  MISSED"
        print(
            f"  {name:<24}{n:>6}{mean:>10.3f}{p99:>10.3f}{worst:>10.3f}{mean / t:>8.2f}"
            f"{p99 / t:>8.2f}{e.mean_groups:>8.1f}{e.mean_nodes:>7.1f}{flag}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller clusters (smoke test)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic clusters")
    parser.add_argument("--events", type=int, default=None, help="samples per pod event")
    parser.add_argument(
        "--publish-samples",
        type=int,
        default=None,
        help="events per kind also timed with materialization",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the big load instead")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON shape: run one measurement
    parser.add_argument("--order", default=ORDERS[0], choices=ORDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    factor = 0.1 if args.quick else 1.0
    shapes = [SMALL.scaled(factor), BIG.scaled(factor)]
    pod_events = args.events if args.events is not None else (100 if args.quick else 2000)
    publish = args.publish_samples
    if publish is None:
        publish = 20 if args.quick else 100

    if args.worker:
        shape = ClusterShape(**json.loads(args.worker))
        result = run_worker(shape, args.order, args.seed, pod_events, publish)
        print(json.dumps(asdict(result)))
        return
    if args.profile:
        run_profile(shapes[-1], args.seed)
        return

    started = time.perf_counter()
    print(
        f"nftpolicy compiler benchmark{' (--quick)' if args.quick else ''}: seed {args.seed}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}"
    )
    print(
        "Wall-clock timings on a possibly shared machine: expect run-to-run noise of 10-30%.",
        flush=True,
    )
    results: dict[tuple[str, str], LoadResult] = {}
    for shape in shapes:
        for order in ORDERS:
            events = pod_events if shape is shapes[-1] and order == ORDERS[0] else 0
            t0 = time.perf_counter()
            results[(shape.name, order)] = spawn_worker(shape, order, args.seed, events, publish)
            print(
                f"  ran {shape.name:<6} {order:<15} in {time.perf_counter() - t0:6.1f} s",
                file=sys.stderr,
                flush=True,
            )
    print_report(results, shapes, args.quick)
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
