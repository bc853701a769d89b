"""``nftpolicy`` command line: compile and apply rulesets from manifest files.

Bad input exits with code 2 and one clear message naming the file, object and field; kernel
problems exit with code 1 and say what is missing. No tracebacks for expected failures.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from controller.agent.kernel import Kernel, KernelError, NftablesUnavailable
from controller.agent.nft_text import to_text
from controller.agent.render import CT_MARK_MASK, RenderOptions, render
from controller.agent.saved_ruleset import DEFAULT_DIR as DEFAULT_STATE_DIR
from controller.compiler import compile_objects, groups_for
from controller.gc_tuning import tune_for_large_heaps
from controller.kube.config import api_client
from controller.manifests import ManifestError, load_objects
from controller.metrics import ListenError
from controller.model import ParseError
from controller.model.config import DefaultDeny
from controller.model.direction import parse_direction_set
from controller.model.dns import cluster_dns
from controller.model.node import IPNetwork

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _add_ruleset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--filename",
        dest="paths",
        action="append",
        required=True,
        metavar="PATH",
        help="YAML/JSON file or directory of Namespace, Pod, Node and NetworkPolicy objects "
        "(repeatable; multi-document YAML and kind: List accepted)",
    )
    p.add_argument("--node", required=True, help="node whose ruleset to build")
    p.add_argument(
        "--default-deny",
        default="none",
        metavar="DIRS",
        help="cluster-wide default deny: none, ingress, egress or all (default: none)",
    )
    p.add_argument(
        "--exempt-namespace",
        action="append",
        default=None,
        metavar="NS",
        help="namespace left out of the cluster-wide default deny (default: kube-system)",
    )
    p.add_argument(
        "--no-dns-allowance",
        action="store_true",
        help="default deny also blocks egress to the cluster's DNS",
    )
    _add_dns_args(p)
    p.add_argument("--no-log", action="store_true", help="do not NFLOG dropped packets")


def _add_dns_args(p: argparse.ArgumentParser) -> None:
    """Where default deny's DNS allowance leads (``model/config.py`` ClusterDNS)."""
    p.add_argument(
        "--dns-namespace",
        default="kube-system",
        metavar="NS",
        help="namespace of the cluster DNS pods and Services (default: kube-system)",
    )
    p.add_argument(
        "--dns-pod-selector",
        default="k8s-app=kube-dns",
        metavar="K=V,...",
        help="labels of the cluster DNS pods (default: k8s-app=kube-dns)",
    )
    p.add_argument(
        "--dns-service-selector",
        default="k8s-app=kube-dns",
        metavar="K=V,...",
        help="labels of the cluster DNS Services (default: k8s-app=kube-dns)",
    )
    p.add_argument(
        "--dns-address",
        action="append",
        default=[],
        metavar="IP",
        help="a DNS server elsewhere, allowed on port 53 (repeatable; e.g. node-local DNS)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nftpolicy", description="Kubernetes NetworkPolicy enforcement on nftables"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    compile_p = sub.add_parser("compile", help="print one node's nftables ruleset")
    _add_ruleset_args(compile_p)
    compile_p.add_argument(
        "--format",
        choices=("json", "nft"),
        default="json",
        help="json: loadable with nft -j -f FILE (default); nft: readable nft syntax",
    )
    apply_p = sub.add_parser(
        "apply", help="apply one node's ruleset in the current network namespace"
    )
    _add_ruleset_args(apply_p)
    apply_p.add_argument("--netns", help="named network namespace to apply in (ip netns)")
    operator_p = sub.add_parser("operator", help="run the central operator (kopf)")
    operator_p.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)"
    )
    operator_p.add_argument(
        "--default-deny", default="none", metavar="DIRS", help="cluster-wide default deny"
    )
    operator_p.add_argument("--exempt-namespace", action="append", default=None, metavar="NS")
    operator_p.add_argument("--no-dns-allowance", action="store_true")
    _add_dns_args(operator_p)
    operator_p.add_argument("--lease-namespace", default="kube-system")
    operator_p.add_argument("--identity", help="leader-election identity (default: hostname-pid)")
    operator_p.add_argument(
        "--reconcile-period",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="re-list everything watched this often, as a backstop (default 300)",
    )
    agent_p = sub.add_parser("agent", help="run the node agent")
    agent_p.add_argument("--node", required=True, help="this node's name")
    agent_p.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)"
    )
    agent_p.add_argument("--netns", help="apply in this named network namespace (tests)")
    agent_p.add_argument("--resync-period", type=float, default=30.0, metavar="SECONDS")
    agent_p.add_argument("--no-conntrack-cleanup", action="store_true")
    agent_p.add_argument("--no-log", action="store_true", help="do not NFLOG dropped packets")
    agent_p.add_argument(
        "--unknown-endpoints",
        choices=("drop", "allow"),
        default="drop",
        help="new connections from or to an address of this node's pod ranges that no known "
        "local pod has: drop (default; a new pod waits for its node's rules) or allow",
    )
    agent_p.add_argument(
        "--pod-cidrs",
        type=_cidr_list,
        default=None,
        metavar="CIDR,...",
        help="this node's pod ranges, replacing the Node's spec.podCIDRs (for CNIs that "
        "allocate otherwise); never the whole cluster's range: other nodes' pods are unknown",
    )
    agent_p.add_argument(
        "--ct-mark-mask",
        type=_mark_mask,
        default=CT_MARK_MASK,
        metavar="MASK",
        help="conntrack mark bits (e.g. 0xffff0000, the default) that carry the ruleset's "
        "epoch, so the kernel re-checks established flows when the rules change and a flow "
        "the new rules deny is cut as they go in; 0: no re-check, only the conntrack "
        "clean-up cuts such flows (after it, not at the swap). Give bits no other component "
        "on the node uses in the conntrack mark",
    )
    agent_p.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help="keep the last applied ruleset here and load it at start when the kernel has no "
        f"table (after a reboot); empty: keep nothing (default {DEFAULT_STATE_DIR})",
    )
    agent_p.add_argument(
        "--daemonset",
        type=_namespaced_name,
        default=None,
        metavar="NAMESPACE/NAME",
        help="the agent's own DaemonSet, watched so that on SIGTERM the agent removes its table "
        "and saved ruleset if the DaemonSet was deleted (uninstall), never otherwise "
        "(default: none; a stop always keeps them)",
    )
    sandbox_p = sub.add_parser(
        "sandbox",
        help="run everything locally (API server, netns nodes and pods, operator, agents)",
    )
    sandbox_p.add_argument(
        "-f",
        "--filename",
        dest="paths",
        action="append",
        metavar="PATH",
        help="manifests with Nodes, Namespaces, Pods and NetworkPolicies (default: examples/)",
    )
    sandbox_p.add_argument(
        "--keep", action="store_true", help="keep running after printing the matrices"
    )
    for p in (operator_p, agent_p):
        p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
        p.add_argument(
            "--metrics-port",
            type=int,
            default=0,
            metavar="PORT",
            help="serve /metrics (Prometheus text) and /healthz on this port (default 0: off)",
        )
        p.add_argument(
            "--metrics-address",
            default="0.0.0.0",
            metavar="IP",
            help="listen on this IP address only (default 0.0.0.0: every IPv4 address; :: for "
            "IPv6 and IPv4)",
        )
    return parser


def _namespaced_name(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME")
    return namespace, name


def _mark_mask(text: str) -> int:
    """``--ct-mark-mask``: a 32-bit number (decimal or 0x hex)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (e.g. 0xffff0000)") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text} is not a 32-bit mask (0 to 0xffffffff)")
    return value


def _cidr_list(text: str) -> tuple[IPNetwork, ...]:
    """``--pod-cidrs``: comma-separated CIDRs, host bits zero (a typo is refused, not masked)."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            out.append(ipaddress.ip_network(item))
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{item!r} is not a CIDR: {e}") from None
    if not out:
        raise argparse.ArgumentTypeError("no CIDR given (omit the option to use the Node's)")
    return tuple(out)


def _default_deny(args: argparse.Namespace) -> DefaultDeny:
    directions = parse_direction_set(args.default_deny, "--default-deny", "value")
    exempt = frozenset(args.exempt_namespace) if args.exempt_namespace is not None else None
    return DefaultDeny(
        directions=directions,
        allow_dns=not args.no_dns_allowance,
        dns=cluster_dns(
            args.dns_namespace, args.dns_pod_selector, args.dns_service_selector, args.dns_address
        ),
        **({"exempt_namespaces": exempt} if exempt is not None else {}),
    )


def configure_logging(level: str) -> None:
    """Our loggers at ``level``; pyroute2 at info at most."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # At debug, pyroute2 logs every netlink message: thousands of lines per conntrack pass,
    # which would rotate our own lines out of the container log within seconds. pyroute2
    # resets its logger's level when imported (pyroute2/config/log.py), so import it first.
    import pyroute2.config.log  # noqa: F401

    logging.getLogger("pyroute2").setLevel(max(logging.INFO, logging.getLogger().level))


def _serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    if args.command == "operator":
        from controller.operator.engine import OperatorConfig
        from controller.operator.run import run_operator

        identity = args.identity or f"{socket.gethostname()}-{os.getpid()}"
        run_operator(
            api_client(args.kubeconfig),
            args.metrics_port,
            args.metrics_address,
            OperatorConfig(
                default_deny=_default_deny(args),
                lease_namespace=args.lease_namespace,
                identity=identity,
                reconcile_period=args.reconcile_period,
            ),
        )
        return 0
    from controller.agent.agent import Agent, AgentConfig

    config = AgentConfig(
        node=args.node,
        netns=args.netns,
        resync_period=args.resync_period,
        conntrack_cleanup=not args.no_conntrack_cleanup,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        daemonset=args.daemonset,
        render=RenderOptions(
            log_group=None if args.no_log else RenderOptions.log_group,
            unknown_endpoints=args.unknown_endpoints,
            pod_cidrs=args.pod_cidrs,
            ct_mark_mask=args.ct_mark_mask,
        ),
    )
    try:
        agent = Agent(api_client(args.kubeconfig), config)
        if args.metrics_port:
            agent.metrics.serve(args.metrics_port, args.metrics_address)
        agent.run_forever()
    except KernelError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    # Stopped by SIGTERM, uninstall done or not (agent.terminate): end now. Finalizing the
    # interpreter around the watch threads (daemon threads, blocked in socket reads) once
    # ended in SIGABRT; before terminate existed, SIGTERM killed the process outright.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


def _build(args: argparse.Namespace) -> dict[str, object]:
    compiler = compile_objects(load_objects(args.paths, _warn), _default_deny(args))
    rules = compiler.node_rules(args.node)
    known = compiler.node_names()
    if args.node not in known:
        raise ManifestError(
            f"node {args.node!r} has no Node object and no pods in the input "
            f"(known nodes: {', '.join(known) or 'none'})"
        )
    options = RenderOptions(log_group=None) if args.no_log else RenderOptions()
    return render(rules, groups_for(compiler, rules), options)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tune_for_large_heaps()
    if args.command == "sandbox":
        from controller.sandbox import SandboxError, run_sandbox
        from controller.testing.apiserver import ControlPlaneError

        try:
            return run_sandbox(args.paths, args.keep)
        except (ManifestError, ParseError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except (SandboxError, ControlPlaneError, KernelError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_FAILED
    if args.command in ("operator", "agent"):
        try:
            return _serve(args)
        except ParseError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except ListenError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_FAILED
    try:
        ruleset = _build(args)
    except (ManifestError, ParseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.command == "compile":
        if args.format == "json":
            print(json.dumps(ruleset, indent=1))
        else:
            print(to_text(ruleset), end="")
        return 0
    kernel = Kernel(args.netns)
    try:
        kernel.apply(ruleset)
    except (KernelError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        if isinstance(e, KernelError) and not isinstance(e, NftablesUnavailable):
            missing = kernel.missing_features()
            if missing:
                print("error: this kernel lacks: " + "; ".join(missing), file=sys.stderr)
        return EXIT_FAILED
    print(f"applied ruleset for node {args.node}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
