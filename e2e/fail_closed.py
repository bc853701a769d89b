"""Fail closed on real kubelets: the pieces of the new-pod probe (issue 9).

A *sweeper* pod connects, over and over, to every address of one node's pod range, before,
while and after the pods under test exist there, and prints each address's transitions
(``[time, ip, state]``, one JSON line each, wall-clock seconds: every pod shares the host's
clock here). The state is ``open`` (handshake done), ``refused`` (the pod answered with a reset:
its server is not listening yet, but the packet reached it) or ``silent`` (no answer: dropped on
the way, or nobody there; nftpolicy drops, it never rejects). *Reached* is open or refused.
From those lines and each test pod's lifetime the test tells whether a disallowed sweeper's
packets ever reached a pod under test, and how long an allowed one waited from the pod's IP
being reported until its packets first reached it (perf-tests'
pod_creation_reachability_latency; the server's own start-up is not counted).

Pure functions here; the test module drives kubectl.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SWEEP_PORT = 80
SWEEP_CONNECT_TIMEOUT = 0.15  # seconds a round waits for handshakes; one round per this much

# Runs in the nftpolicy image (python3, no packages needed): ``python3 -c SWEEPER CIDR PORT``.
SWEEPER = r"""
import errno, ipaddress, json, selectors, socket, sys, time
hosts = [str(h) for h in ipaddress.ip_network(sys.argv[1]).hosts()]
port, wait = int(sys.argv[2]), float(sys.argv[3])
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
state = {}
def mark(ip, err):
    now = "open" if err == 0 else "refused" if err == errno.ECONNREFUSED else "silent"
    if state.get(ip) != now:
        state[ip] = now
        print(json.dumps([time.time(), ip, now]), flush=True)
print(json.dumps([time.time(), "", "started"]), flush=True)
while True:
    sel, pending = selectors.DefaultSelector(), {}
    for ip in hosts:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((ip, port))
        if err != errno.EINPROGRESS:  # settled at once (loopback, no route)
            mark(ip, err)
            s.close()
            continue
        sel.register(s, selectors.EVENT_WRITE, ip)
        pending[ip] = s
    deadline = time.monotonic() + wait
    while pending and (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(left):
            ip = key.data
            mark(ip, key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
            sel.unregister(key.fileobj)
            key.fileobj.close()
            del pending[ip]
    for ip, s in pending.items():
        mark(ip, errno.ETIMEDOUT)
        s.close()
    sel.close()
"""


REACHED = ("open", "refused")


@dataclass(frozen=True)
class Interval:
    """When one sweeper's packets reached ``ip``: from ``start`` to ``end`` (inf: still)."""

    ip: str
    start: float
    end: float


@dataclass(frozen=True)
class Lifetime:
    """A pod under test: created (request sent) at ``created``, IP ``ip`` first seen in the API
    at ``reported``, gone from the API at ``gone``."""

    name: str
    ip: str
    created: float
    reported: float
    gone: float


def parse_sweep(lines: Iterable[str]) -> list[Interval]:
    """Transition lines -> the intervals in which each address was reached."""
    opened: dict[str, float] = {}
    out: list[Interval] = []
    for line in lines:
        line = line.strip()
        if not line.startswith("["):
            continue
        at, ip, what = json.loads(line)
        if what in REACHED:
            opened.setdefault(ip, float(at))
        elif what == "silent" and ip in opened:
            out.append(Interval(ip, opened.pop(ip), float(at)))
    out += [Interval(ip, start, math.inf) for ip, start in opened.items()]
    return out


def sweep_started(lines: Iterable[str]) -> float | None:
    for line in lines:
        line = line.strip()
        if line.startswith("["):
            at, _ip, what = json.loads(line)
            if what == "started":
                return float(at)
    return None


def breaches(intervals: Sequence[Interval], pods: Sequence[Lifetime]) -> list[str]:
    """Every moment a disallowed sweeper's packets reached a pod under test while it existed."""
    out = []
    for pod in pods:
        for iv in intervals:
            if iv.ip == pod.ip and iv.start < pod.gone and iv.end > pod.created:
                out.append(
                    f"{pod.name} ({pod.ip}) reached from {iv.start - pod.created:+.3f} s to "
                    f"{iv.end - pod.created:+.3f} s after its creation"
                )
    return out


def waits(intervals: Sequence[Interval], pods: Sequence[Lifetime]) -> dict[str, float | None]:
    """Per pod: seconds from its IP being reported until the allowed sweeper first reached it
    (never negative: our watch may see the report after the agent acted on it); None when the
    allowed sweeper never reached it while the pod existed."""
    out: dict[str, float | None] = {}
    for pod in pods:
        starts = [
            iv.start
            for iv in intervals
            if iv.ip == pod.ip and iv.end > pod.created and iv.start < pod.gone
        ]
        out[pod.name] = max(0.0, min(starts) - pod.reported) if starts else None
    return out


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): with 50 samples p99 is the largest."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def sweeper_pod(
    name: str, namespace: str, node: str, image: str, cidr: str, labels: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "sweep",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "-u", "-c", SWEEPER],
                    "args": [cidr, str(SWEEP_PORT), str(SWEEP_CONNECT_TIMEOUT)],
                }
            ],
        },
    }


OPEN_LABEL = "sweeper-may-connect"  # "yes" on pods the allow policy selects


def target_pod(name: str, namespace: str, node: str, image: str, open_: bool) -> dict[str, Any]:
    """A server on port 80 (agnhost netexec), pinned to ``node``; ``open_``: the allowed
    sweeper may connect to it (the allow policy selects it), otherwise nobody may."""
    labels = {"fail-closed": "target", OPEN_LABEL: "yes" if open_ else "no"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "serve",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["netexec", f"--http-port={SWEEP_PORT}", "--udp-port=-1"],
                }
            ],
        },
    }


def allow_from_label(namespace: str, label: str, value: str) -> dict[str, Any]:
    """The pods of ``namespace`` labelled ``OPEN_LABEL=yes`` accept ingress from pods labelled
    ``label=value``, anywhere (and so are isolated for ingress)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-sweeper", "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {OPEN_LABEL: "yes"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {"namespaceSelector": {}, "podSelector": {"matchLabels": {label: value}}}
                    ]
                }
            ],
        },
    }


def deny_all_ingress(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny-all", "namespace": namespace},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
