"""Local sandbox demo: build examples/ (or -f DIR) as network namespaces, print reachability
before and after applying the compiled rulesets to every node.

Each Node object becomes a node namespace (its podCIDRs routed between nodes); each Pod with
an IP becomes a pod namespace serving its containerPorts over TCP. Probes are real TCP
connects. Everything is torn down at exit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.agent.kernel import Kernel  # noqa: E402
from controller.agent.render import render  # noqa: E402
from controller.compiler import compile_objects, groups_for  # noqa: E402
from controller.manifests import ManifestError, load_objects  # noqa: E402
from controller.model import Node, ParseError, Pod  # noqa: E402
from tests.integration.netns_cluster import NetnsCluster, Probe, unavailable_reason  # noqa: E402


def matrix(cluster: NetnsCluster, pods: list[Pod]) -> str:
    targets = [(p, port.port) for p in pods for port in p.ports if port.protocol == "TCP"]
    probes = [Probe(s.key, str(d.addresses[0]), port) for s in pods for d, port in targets if s != d]
    results = iter(cluster.probe_many(probes, 0.5))
    width = max(len(p.key) for p in pods)
    cols = [f"{d.name}:{port}" for d, port in targets]
    lines = [" " * width + "  " + " ".join(cols)]
    for s in pods:
        # a pod talking to itself never leaves its namespace: no policy applies
        cells = [
            ("self" if s == d else "ok" if next(results) else "--").center(len(c))
            for c, (d, _) in zip(cols, targets, strict=True)
        ]
        lines.append(f"{s.key:<{width}}  " + " ".join(cells))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-f", dest="paths", action="append", help="manifests (default: examples/)")
    args = parser.parse_args()
    paths = args.paths or [str(Path(__file__).resolve().parents[1] / "examples")]
    reason = unavailable_reason()
    if reason:
        print(f"error: cannot build network namespaces: {reason}", file=sys.stderr)
        return 1
    try:
        objects = load_objects(paths)
    except (ManifestError, ParseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    nodes = [o for o in objects if isinstance(o, Node)]
    pods = [o for o in objects if isinstance(o, Pod) and o.addresses and o.node]
    if not nodes or not pods:
        print("error: the manifests need Node objects (with podCIDRs) and Pods with IPs", file=sys.stderr)
        return 2
    compiler = compile_objects(objects)
    with NetnsCluster() as cluster:
        print(f"building {len(nodes)} nodes and {len(pods)} pods as network namespaces ...", flush=True)
        for node in nodes:
            v4 = next(str(c) for c in node.pod_cidrs if c.version == 4)
            v6 = next((str(c) for c in node.pod_cidrs if c.version == 6), None)
            cluster.add_node(node.name, v4, v6)
        for p in pods:
            ports = sorted({cp.port for cp in p.ports if cp.protocol == "TCP"})
            v4 = next(str(ip) for ip in p.addresses if ip.version == 4)
            v6 = next((str(ip) for ip in p.addresses if ip.version == 6), None)
            cluster.add_pod(p.namespace, p.name, p.node or "", v4, v6, tcp_ports=ports, udp_ports=())
        cluster.wait_ready()
        print("\nbefore (no policies enforced):\n" + matrix(cluster, pods))
        for node in nodes:
            rules = compiler.node_rules(node.name)
            Kernel(cluster.node_netns(node.name)).apply(render(rules, groups_for(compiler, rules)))
            print(f"applied {len(rules.policies)} policies for {len(rules.pods)} isolated pods on {node.name}")
        print("\nafter:\n" + matrix(cluster, pods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
