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

``--large`` runs only the "largest API-valid objects" scenario (also run after the clusters):
NetworkPolicies of about 1.5 MiB of JSON (one ipBlock with as many ``except`` entries as fit,
IPv4 and IPv6; as many /32 peers as fit; peers x ports), and the same kinds at exactly the
limits of ``controller/model/limits.py`` (the larger ones exceed them and compile fail-closed).
For each: parse + compile time, the published objects' sizes, and in a fresh subprocess doing
what an agent does (decode the objects, render, apply with libnftables into a throwaway
network namespace made with ``ip netns add``, render again for the next resync) the render and
apply times, the ruleset's JSON size and the subprocess's peak RSS. It also times the ipBlock
expansion at doubling sizes: n log n doubles plus a little, quadratic quadruples.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import ipaddress
import json
import math
import os
import platform
import pstats
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synthetic import BIG, SMALL, ClusterShape, SyntheticCluster  # noqa: E402
from controller.compiler import Compiler, compile_objects, groups_for  # noqa: E402
from controller.compiler.ir import AddressGroup, Group, NodeRules  # noqa: E402
from controller.compiler.peers import BlockPeer  # noqa: E402
from controller.gc_tuning import tune_for_large_heaps  # noqa: E402
from controller.model import IPBlock, Namespace, NetworkPolicy, Node, Pod, parse_object  # noqa: E402
from controller.model import limits as policy_limits  # noqa: E402
from controller.resources import group_body, node_rules_body  # noqa: E402

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
    """Members of a group: addresses and ipBlocks, or (address, port) pairs."""
    if isinstance(group, AddressGroup):
        return len(group.addresses) + len(group.blocks)
    return len(group.members)


def output_digest(groups: list[Group], node_rules: list[NodeRules]) -> str:
    """A hash of the compiled output that does not depend on set iteration order."""
    h = hashlib.sha256()
    for group in groups:
        if isinstance(group, AddressGroup):
            members: list[Any] = sorted((ip.version, int(ip)) for ip in group.addresses)
            members.append([[str(b.cidr), *map(str, b.excepts)] for b in group.blocks])
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


# ---- largest API-valid objects ----------------------------------------------------------------

# etcd's request limit; the API server accepts policies up to about this much protobuf, which
# is somewhat more JSON (88k IPv4 excepts, 72k /32 peers, 38k long IPv6 excepts, measured).
LARGE_BYTES = 1536 * 1024
LARGE_TARGET_S = 2.0  # parse + compile, render and apply, each
AGENT_RSS_TARGET_MIB = 256.0
LARGE_SELECTED_PODS = 10  # pods on the node that the policy selects (one allowance, shared)


@dataclass
class LargeResult:
    """One large policy: what the operator and (in a subprocess) an agent spent on it."""

    name: str
    entries: str
    policy_bytes: int
    problem: str
    parse_s: float  # JSON text -> model (what the operator does with a watch event)
    compile_s: float  # compile, materialize the node's rules and groups, build their bodies
    groups: int
    largest_group_bytes: int
    node_rules_bytes: int
    agent: dict[str, Any] = field(default_factory=dict)


def _v4(i: int) -> str:
    return f"{ipaddress.IPv4Address(int(ipaddress.IPv4Address('10.128.0.0')) + 2 * i)}/32"


def _v6(i: int) -> str:
    # long spellings (no "::" shortening inside): the most bytes per entry
    base = int(ipaddress.IPv6Address("2001:db8:ffff:ffff:ffff:ffff:ffff:1"))
    return f"{ipaddress.IPv6Address(base - (i << 20))}/128"


def _fill(make: Callable[[int], str], wrap: Callable[[str], Any], budget: int) -> int:
    """How many entries ``wrap(make(i))`` fit in ``budget`` bytes of compact JSON."""
    used, n = 0, 0
    while True:
        size = len(json.dumps(wrap(make(n)), separators=(",", ":"))) + 1
        if used + size > budget:
            return n
        used, n = used + size, n + 1


def _policy_body(name: str, rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [rule]},
    }


def large_policies() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, what it holds, body) of each large policy."""
    budget = LARGE_BYTES - 300  # the rest of the object
    limit = policy_limits.IPBLOCK_ENTRIES_MAX

    def excepts(cidr: str, make: Callable[[int], str], n: int) -> dict[str, Any]:
        return {"from": [{"ipBlock": {"cidr": cidr, "except": [make(i) for i in range(n)]}}]}

    def hosts(n: int) -> dict[str, Any]:
        return {"from": [{"ipBlock": {"cidr": _v4(i)}} for i in range(n)]}

    v4_fit = _fill(_v4, lambda e: e, budget)
    v6_fit = _fill(_v6, lambda e: e, budget)
    peers_fit = _fill(_v4, lambda e: {"ipBlock": {"cidr": e}}, budget)
    ports = [{"port": 1000 + i} for i in range(1000)]
    most_ports = [{"port": 1 + i} for i in range(policy_limits.PORTS_MAX)]
    cases = [
        ("a-v4-fit", f"1 ipBlock, {v4_fit:,} IPv4 excepts", excepts("10.0.0.0/8", _v4, v4_fit)),
        (
            "a-v4-limit",
            f"1 ipBlock, {limit - 1:,} IPv4 excepts",
            excepts("10.0.0.0/8", _v4, limit - 1),
        ),
        ("a-v6-fit", f"1 ipBlock, {v6_fit:,} IPv6 excepts", excepts("2001:db8::/32", _v6, v6_fit)),
        (
            "a-v6-limit",
            f"1 ipBlock, {limit // 2 - 1:,} IPv6 excepts",
            excepts("2001:db8::/32", _v6, limit // 2 - 1),
        ),
        ("b-fit", f"{peers_fit:,} /32 peers", hosts(peers_fit)),
        ("b-limit", f"{limit:,} /32 peers", hosts(limit)),
        (
            "c-1000x1000",
            "1,000 excepts x 1,000 ports",
            {**excepts("10.0.0.0/8", _v4, 1000), "ports": ports},
        ),
        (
            "c-limit",
            f"{limit - 1:,} excepts x {len(most_ports):,} ports",
            {**excepts("10.0.0.0/8", _v4, limit - 1), "ports": most_ports},
        ),
    ]
    return [(name, what, _policy_body(name, rule)) for name, what, rule in cases]


def _large_cluster() -> list[dict[str, Any]]:
    """Namespace, node and the selected server pods the large policies apply to."""
    objs: list[dict[str, Any]] = [
        {"kind": "Namespace", "metadata": {"name": "bench"}},
        {"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDR": "10.255.0.0/24"}},
    ]
    for i in range(LARGE_SELECTED_PODS):
        objs.append(
            {
                "kind": "Pod",
                "metadata": {
                    "name": f"server-{i}",
                    "namespace": "bench",
                    "labels": {"app": "server"},
                },
                "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
                "status": {
                    "phase": "Running",
                    "podIP": f"10.255.0.{10 + i}",
                    "podIPs": [{"ip": f"10.255.0.{10 + i}"}, {"ip": f"fd00:255::{10 + i:x}"}],
                },
            }
        )
    return objs


def run_large(netns: str | None) -> list[LargeResult]:
    """Compile each large policy here (the operator's side) and hand what would be
    published to a fresh agent subprocess."""
    cluster = [parse_object(o) for o in _large_cluster()]
    results = []
    for name, what, body in large_policies():
        text = json.dumps(body, separators=(",", ":"))
        gc.collect()
        start = time.perf_counter()
        policy = parse_object(json.loads(text))
        parse_s = time.perf_counter() - start
        start = time.perf_counter()
        compiler = compile_objects([*cluster, policy])
        rules = compiler.node_rules("n1")
        groups = groups_for(compiler, rules)
        rules_body = node_rules_body(rules)
        group_bodies = [group_body(g, ["n1"]) for g in groups.values()]
        compile_s = time.perf_counter() - start
        published = json.dumps({"rules": rules_body, "groups": group_bodies})
        result = LargeResult(
            name=name,
            entries=what,
            policy_bytes=len(text),
            problem=compiler.policy_problems().get(f"bench/{name}", ""),
            parse_s=parse_s,
            compile_s=compile_s,
            groups=len(compiler.group_names()),
            largest_group_bytes=max((len(json.dumps(b)) for b in group_bodies), default=0),
            node_rules_bytes=len(json.dumps(rules_body)),
        )
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            f.write(published)
            f.flush()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--agent-worker", f.name]
            if netns is not None:
                cmd += ["--netns", netns]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"agent worker for {name} failed with exit code {proc.returncode}")
        result.agent = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"  ran large {name:<12}", file=sys.stderr, flush=True)
    return results


def agent_worker(path: str, netns: str | None) -> dict[str, Any]:
    """What an agent does with the published objects: decode them (as a watch would),
    render, apply, and render again at the next resync (memoized). Imports the agent module
    so the baseline RSS is an agent's."""
    import controller.agent.agent  # noqa: F401 - the agent's imports, for its baseline RSS
    from controller.agent.kernel import Kernel
    from controller.agent.render import RenderOptions
    from controller.agent.view import AgentView
    from controller.resources import group_from_body, node_rules_from_body

    baseline = max_rss_mib()
    with open(path) as f:
        text = f.read()
    start = time.perf_counter()
    published = json.loads(text)
    view = AgentView("n1", node_rules_from_body(published["rules"]), 1)
    view.groups = {b["metadata"]["name"]: group_from_body(b) for b in published["groups"]}
    decode_s = time.perf_counter() - start
    del text, published
    start = time.perf_counter()
    ruleset = view.ruleset(RenderOptions())
    render_s = time.perf_counter() - start
    size = len(json.dumps(ruleset))
    elements = sum(
        len(c["add"][k].get("elem", ()))
        for c in ruleset["nftables"]
        for k in ("set", "map")
        if k in c.get("add", {})
    )
    apply_s = None
    if netns is not None:
        start = time.perf_counter()
        Kernel(netns).apply(ruleset)
        apply_s = time.perf_counter() - start
    start = time.perf_counter()
    assert view.ruleset(RenderOptions()) is ruleset
    resync_s = time.perf_counter() - start
    return {
        "decode_s": decode_s,
        "render_s": render_s,
        "apply_s": apply_s,
        "resync_render_s": resync_s,
        "ruleset_bytes": size,
        "elements": elements,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": max_rss_mib(),
    }


def expansion_scaling(
    sizes: tuple[int, ...] = (10_000, 20_000, 40_000, 80_000), repeats: int = 3
) -> None:
    """Time the ipBlock expansion (canonical blocks, then intervals and one lookup) at
    doubling sizes, IPv4 and IPv6; the best of ``repeats`` runs, against noise."""
    print("\n== ipBlock expansion at doubling sizes (BlockPeer.of + first contains()) ==")
    print(f"  {'excepts':>8}{'IPv4 s':>10}{'ratio':>7}{'IPv6 s':>10}{'ratio':>7}")
    previous: dict[int, float] = {}
    for n in sizes:
        row = f"  {n:>8}"
        for version, cidr, make in ((4, "10.0.0.0/8", _v4), (6, "2001:db8::/32", _v6)):
            block = IPBlock(
                ipaddress.ip_network(cidr),
                tuple(ipaddress.ip_network(make(i)) for i in range(n)),
            )
            probe = ipaddress.ip_network(make(n // 2)).network_address
            took = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                assert not BlockPeer.of([block]).contains(probe)
                took = min(took, time.perf_counter() - start)
            ratio = f"{took / previous[version]:6.2f}x" if version in previous else "       "
            previous[version] = took
            row += f"{took:>10.3f}{ratio}"
        print(row)
    print("  (n log n: a little over 2x per doubling; the old expansion was about 4x)")


def make_netns() -> str | None:
    """A throwaway network namespace for the apply measurements, or None if we cannot."""
    name = f"nftpolicy-bench-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"  (no apply measurements: cannot create a network namespace: {e})")
        return None
    return name


def print_large(results: list[LargeResult]) -> None:
    print("\n== Largest API-valid objects (one NetworkPolicy each; agent = fresh subprocess) ==")
    print(
        f"  targets: parse + compile, render and apply <= {LARGE_TARGET_S:g} s each; agent peak "
        f"RSS < {AGENT_RSS_TARGET_MIB:g} MiB. Limits: {policy_limits.IPBLOCK_ENTRIES_MAX:,} "
        f"ipBlock entries (IPv6 x2), {policy_limits.PORTS_MAX:,} ports, "
        f"{policy_limits.PEER_GROUPS_MAX:,} peer groups per policy"
    )
    columns = (
        ("case", "", 12),
        ("policy", "KiB", 8),
        ("parse", "s", 7),
        ("compile", "s", 8),
        ("groups", "", 7),
        ("group", "KiB", 7),
        ("rules", "KiB", 7),
        ("decode", "s", 7),
        ("render", "s", 7),
        ("apply", "s", 7),
        ("resync", "s", 7),
        ("ruleset", "KiB", 8),
        ("elems", "", 7),
        ("RSS", "MiB", 6),
    )
    widths = [w for _, _, w in columns]
    print(_cells([name for name, _, _ in columns], widths) + "  verdict")
    print(_cells([unit for _, unit, _ in columns], widths))
    for r in results:
        a = r.agent
        apply_s = a["apply_s"]
        # each stage against the target: operator (parse + compile), agent (decode + render)
        times = [r.parse_s + r.compile_s, a["decode_s"] + a["render_s"], apply_s or 0.0]
        ok = max(times) <= LARGE_TARGET_S and a["peak_rss_mib"] < AGENT_RSS_TARGET_MIB
        values = (
            r.name,
            f"{r.policy_bytes / 1024:.0f}",
            f"{r.parse_s:.2f}",
            f"{r.compile_s:.2f}",
            str(r.groups),
            f"{r.largest_group_bytes / 1024:.0f}",
            f"{r.node_rules_bytes / 1024:.1f}",
            f"{a['decode_s']:.2f}",
            f"{a['render_s']:.2f}",
            "n/a" if apply_s is None else f"{apply_s:.2f}",
            f"{a['resync_render_s']:.3f}",
            f"{a['ruleset_bytes'] / 1024:.0f}",
            str(a["elements"]),
            f"{a['peak_rss_mib']:.0f}",
        )
        print(_cells(values, widths) + f"  {'ok' if ok else 'MISSED'}")
    print("  what each holds, and policies over a limit (compiled fail-closed):")
    for r in results:
        print(
            f"    {r.name:<12} {r.entries}" + (f": {r.problem.split(';')[0]}" if r.problem else "")
        )
    print(f"  agent baseline RSS (imports only): {results[0].agent['baseline_rss_mib']:.0f} MiB")


def _cells(values: Iterable[str], widths: list[int]) -> str:
    """A table row: the first column left-aligned, the others right-aligned."""
    pairs = enumerate(zip(values, widths, strict=True))
    return "  " + "".join(f"{v:<{w}}" if i == 0 else f"{v:>{w}}" for i, (v, w) in pairs)


def large_scenario() -> None:
    netns = make_netns()
    try:
        results = run_large(netns)
    finally:
        if netns is not None:
            subprocess.run(["ip", "netns", "del", netns], check=False)
    print_large(results)
    expansion_scaling()


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
    row("group members (addresses, ipBlocks, pairs)", (str(r.group_members) for r in first))
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
    parser.add_argument(
        "--large", action="store_true", help="only the largest-API-valid-objects scenario"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON shape: run one measurement
    parser.add_argument("--agent-worker", help=argparse.SUPPRESS)  # published objects file
    parser.add_argument("--netns", help=argparse.SUPPRESS)  # where the agent worker applies
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
    if args.agent_worker:
        print(json.dumps(agent_worker(args.agent_worker, args.netns)))
        return
    if args.profile:
        run_profile(shapes[-1], args.seed)
        return
    if args.large:
        large_scenario()
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
    large_scenario()
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
