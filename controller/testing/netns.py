"""Simulated Kubernetes pod network built from Linux network namespaces.

The layout mirrors Calico/kindnet style routed pod networking:

* a *fabric* namespace holds a Linux bridge (the underlay L2 segment);
* every node is a namespace attached to the bridge by a veth (``eth0`` inside the node,
  underlay ``172.30.0.N/24`` and ``fd00:30::N/64``), forwards IPv4 and IPv6 and routes each
  other node's pod CIDRs via that node's underlay address;
* every pod is a namespace whose ``eth0`` is a veth to its node, holding ``podIP/32`` (and
  ``podIPv6/128``) with ``default via 169.254.1.1 dev eth0 onlink`` answered by proxy ARP on
  the node side (``default via fe80::1 dev eth0`` for IPv6, ``fe80::1`` sitting on the
  node side of the veth).  The node reaches the pod through a host route via the veth.  A pod
  IP outside its node's pod CIDR (e.g. an IP reused on another node) gets host routes on all
  other nodes, like Calico's borrowed block addresses;
* ``host_network`` pods have no namespace of their own: their ports are served from the
  node namespace, on the node's addresses.

Each pod and node namespace runs one ``podagent.py`` process that serves the pod's TCP/UDP
ports and performs probes on request, so probes traverse the real kernel datapath
(routing, conntrack, nftables) of every namespace they cross.

Nothing is created in the caller's network namespace and every packet stays inside the
namespaces created here.  All names start with a per-instance prefix; ``close()`` (or the
context manager, or a finalizer at interpreter exit) removes everything, and
``cleanup_dead_runs()`` / ``cleanup_stale()`` remove leftovers of crashed runs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

AGENT_SCRIPT = Path(__file__).with_name("podagent.py")
NETNS_DIR = Path("/run/netns")
DEFAULT_PREFIX_BASE = "npt"

UNDERLAY_V4 = ipaddress.IPv4Network("172.30.0.0/24")
UNDERLAY_V6 = ipaddress.IPv6Network("fd00:30::/64")
# Nodes need *some* route to 169.254.1.1 out of a non-pod interface for proxy ARP to answer
# pods; like real nodes they get a default route to an underlay gateway (which nothing
# answers, so stray packets die on the isolated fabric).
UNDERLAY_GATEWAY_V4 = "172.30.0.254"
MAX_NODES = 253
POD_GATEWAY_V4 = "169.254.1.1"
POD_GATEWAY_V6 = "fe80::1"

AGENT_START_TIMEOUT = 15.0
AGENT_STOP_TIMEOUT = 2.0
# Extra time an agent gets beyond a probe's own timeout before it is considered hung.
AGENT_ANSWER_SLACK = 5.0

_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_PROTOS = ("tcp", "udp")


class NetnsError(RuntimeError):
    """A command or agent of the harness failed."""


@dataclass(frozen=True)
class Node:
    """A simulated node: a namespace on the underlay fabric."""

    name: str
    netns: str
    index: int
    ipv4: str
    ipv6: str
    pod_cidr_v4: str
    pod_cidr_v6: str | None


@dataclass(frozen=True)
class PodHandle:
    """A simulated pod.  For ``host_network`` pods ``netns`` and the IPs are the node's."""

    namespace: str
    name: str
    node: str
    netns: str
    ipv4: str | None
    ipv6: str | None
    tcp_ports: tuple[int, ...]
    udp_ports: tuple[int, ...]
    host_network: bool = False

    @property
    def key(self) -> str:
        """``"namespace/name"``, the form used as probe source and in agent replies."""
        return f"{self.namespace}/{self.name}"

    @property
    def ips(self) -> list[str]:
        """The pod's addresses, IPv4 first."""
        return [ip for ip in (self.ipv4, self.ipv6) if ip is not None]


@dataclass(frozen=True)
class Probe:
    """One connection attempt.

    ``src`` is ``"namespace/name"`` of a pod or ``"node:NAME"``; ``src_ip`` optionally binds
    the probe's source address (useful for nodes, which have several).
    """

    src: str
    dst_ip: str
    port: int
    proto: str = "tcp"
    src_ip: str | None = None


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of a probe; ``reply`` is the answering server's ``"namespace/name"``."""

    probe: Probe
    ok: bool
    reply: str | None
    error: str | None
    connected: bool = False  # TCP: the handshake completed (whether or not a reply came)

    @property
    def passed(self) -> bool:
        """Whether the firewall let the probe through: an answer came, or a TCP handshake
        completed and only the reply was late (a busy machine)."""
        return self.ok or self.connected


def _run(argv: Sequence[str], input: str | None = None) -> str:
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NetnsError(
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}"
        )
    return proc.stdout


def _ip_batch(netns: str | None, commands: Sequence[str], force: bool = False) -> None:
    """Run ``ip`` commands (one per line, without the leading ``ip``) in one process."""
    if commands:
        argv = ["ip", *(["-n", netns] if netns else []), *(["-force"] if force else [])]
        _run([*argv, "-batch", "-"], input="\n".join(commands) + "\n")


def _sysctl(netns: str, settings: dict[str, str | int]) -> None:
    _run(
        ["ip", "netns", "exec", netns, "sysctl", "-qw", *(f"{k}={v}" for k, v in settings.items())]
    )


def list_netns() -> list[str]:
    """Names of all named network namespaces."""
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line.strip()]


def _pids_in_netns(names: Iterable[str]) -> list[int]:
    """PIDs of all processes living in any of the named namespaces."""
    wanted = set()
    for name in names:
        try:
            st = os.stat(NETNS_DIR / name)
        except OSError:
            continue
        wanted.add((st.st_dev, st.st_ino))
    pids = []
    if wanted:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                st = os.stat(f"/proc/{entry.name}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in wanted:
                pids.append(int(entry.name))
    return pids


def _kill_netns_processes(names: Iterable[str]) -> None:
    for pid in _pids_in_netns(names):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _delete_netns(names: Sequence[str]) -> None:
    """Kill everything inside the namespaces, then delete them (ignoring missing ones)."""
    _kill_netns_processes(names)
    try:
        _ip_batch(None, [f"netns del {name}" for name in names], force=True)
    except NetnsError:
        left = set(names) & set(list_netns())
        if left:
            raise NetnsError(f"could not delete network namespaces {sorted(left)}") from None


def cleanup_stale(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with ``prefix`` (and kill its processes).

    Use for leftovers of a crashed run.  Returns the deleted names.
    """
    if not prefix:
        raise ValueError("refusing to clean up with an empty prefix")
    stale = [name for name in list_netns() if name.startswith(prefix)]
    _delete_netns(stale)
    return stale


def cleanup_dead_runs(base: str = DEFAULT_PREFIX_BASE) -> list[str]:
    """Delete namespaces of default-prefixed clusters whose owning process no longer exists.

    Default prefixes embed the owner's PID (``{base}{pid}r{hex}``), so this is safe to run
    while other test runs are alive.  Returns the deleted names.
    """
    pattern = re.compile(rf"^({re.escape(base)}(\d+)r[0-9a-f]+)-")
    prefixes = set()
    for name in list_netns():
        match = pattern.match(name)
        if match and not Path(f"/proc/{match.group(2)}").exists():
            prefixes.add(match.group(1) + "-")
    return [name for prefix in sorted(prefixes) for name in cleanup_stale(prefix)]


def unavailable_reason() -> str | None:
    """Why ``NetnsCluster`` cannot work here (not root, no usable ``ip netns``), or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    probe_name = f"{DEFAULT_PREFIX_BASE}{os.getpid()}r{secrets.token_hex(2)}-check"
    try:
        _run(["ip", "netns", "add", probe_name])
        _run(["ip", "netns", "del", probe_name])
    except (OSError, NetnsError) as exc:
        return f"'ip netns' is not usable: {exc}"
    return None


class _Agent:
    """Handle to one ``podagent.py`` process; thread-safe request submission."""

    def __init__(
        self, netns: str, name: str, tcp_ports: Sequence[int] = (), udp_ports: Sequence[int] = ()
    ) -> None:
        self.netns = netns
        # Closed in finish_stop(); read for error messages.
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                sys.executable,
                "-S",
                "-u",
                str(AGENT_SCRIPT),
                "--name",
                name,
                "--tcp",
                ",".join(map(str, tcp_ports)),
                "--udp",
                ",".join(map(str, udp_ports)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._dead = False
        self._reader = threading.Thread(target=self._read_loop, name=f"agent-{netns}", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            if message.get("event") == "ready":
                self._ready.set()
                continue
            with self._lock:
                future = self._pending.pop(message["id"], None)
            if future is not None:
                future.set_result(message)
        with self._lock:
            self._dead = True
            pending, self._pending = self._pending, {}
        self._ready.set()
        for future in pending.values():
            future.set_exception(NetnsError(f"agent in {self.netns} died: {self.stderr_tail()}"))

    def stderr_tail(self, limit: int = 2000) -> str:
        """The last ``limit`` bytes the agent wrote to stderr (safe from any thread)."""
        try:
            fd = self._stderr.fileno()
            data = os.pread(fd, limit, max(0, os.fstat(fd).st_size - limit))
        except (OSError, ValueError):  # already closed
            return ""
        return data.decode(errors="replace").strip()

    def wait_ready(self, timeout: float = AGENT_START_TIMEOUT) -> None:
        """Block until the agent serves its ports and accepts requests."""
        if not self._ready.wait(timeout):
            raise NetnsError(f"agent in {self.netns} did not start within {timeout}s")
        if self._dead:
            self.proc.wait()
            raise NetnsError(
                f"agent in {self.netns} exited with {self.proc.returncode}: {self.stderr_tail()}"
            )

    def submit(self, requests: Sequence[dict[str, Any]]) -> list[Future[dict[str, Any]]]:
        """Send all requests in one write; returns futures of their answers, in order."""
        futures: list[Future[dict[str, Any]]] = []
        lines = []
        with self._lock:
            if self._dead:
                raise NetnsError(f"agent in {self.netns} is dead: {self.stderr_tail()}")
            for request in requests:
                request_id = next(self._ids)
                future: Future[dict[str, Any]] = Future()
                self._pending[request_id] = future
                futures.append(future)
                lines.append(json.dumps({**request, "id": request_id}))
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(("\n".join(lines) + "\n").encode())
                self.proc.stdin.flush()
            except BrokenPipeError as exc:
                raise NetnsError(f"agent in {self.netns} is gone: {self.stderr_tail()}") from exc
        return futures

    def request(self, request: dict[str, Any], timeout: float = AGENT_ANSWER_SLACK) -> None:
        """Send one control request and raise if it fails."""
        answer = self.submit([request])[0].result(timeout)
        if not answer["ok"]:
            raise NetnsError(f"agent in {self.netns}: {request} failed: {answer['error']}")

    def begin_stop(self) -> None:
        """Ask the agent to exit (it exits on stdin EOF)."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def finish_stop(self, deadline: float) -> None:
        """Wait for the agent to exit until ``deadline`` (monotonic), then kill it."""
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(AGENT_STOP_TIMEOUT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()


def _stop_agents(agents: Sequence[_Agent]) -> None:
    for agent in agents:
        agent.begin_stop()
    deadline = time.monotonic() + AGENT_STOP_TIMEOUT
    for agent in agents:
        agent.finish_stop(deadline)


@dataclass
class _Resources:
    """Everything that must be torn down; shared with the finalizer (which must not hold
    a reference to the cluster itself)."""

    netns: list[str] = field(default_factory=list)
    agents: list[_Agent] = field(default_factory=list)

    def release(self) -> None:
        agents, self.agents = self.agents, []
        names, self.netns = self.netns, []
        try:
            _stop_agents(agents)
        finally:
            _delete_netns(list(reversed(names)))


@dataclass
class _PodState:
    handle: PodHandle
    agent: _Agent | None  # None for host-network pods (served by the node agent)
    host_iface: str | None = None  # node side of the veth
    borrowed: list[str] = field(default_factory=list)  # host routes on the other nodes


@dataclass
class _NodeState:
    node: Node
    agent: _Agent
    pod_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]


def _check_name(kind: str, value: str) -> None:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(f"invalid {kind} name {value!r}")


class NetnsCluster:
    """A simulated cluster network; see the module docstring for the topology.

    Not thread-safe: drive it from one thread (agents die with the thread that started
    them, see PR_SET_PDEATHSIG).
    """

    def __init__(self, prefix: str | None = None) -> None:
        """Create the fabric.  ``prefix`` defaults to ``npt{pid}r{random}``."""
        if prefix is None:
            prefix = f"{DEFAULT_PREFIX_BASE}{os.getpid()}r{secrets.token_hex(2)}"
        self.prefix = prefix
        self.fabric_netns = f"{prefix}-fabric"
        self._nodes: dict[str, _NodeState] = {}
        self._pods: dict[str, _PodState] = {}
        self._pod_index = itertools.count(1)
        self._resources = _Resources()
        self._finalizer = weakref.finalize(self, _Resources.release, self._resources)
        try:
            self._add_netns(self.fabric_netns)
            _ip_batch(
                self.fabric_netns, ["link set lo up", "link add br0 type bridge", "link set br0 up"]
            )
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop all agents and delete all namespaces.  Idempotent."""
        self._finalizer()
        self._nodes.clear()
        self._pods.clear()

    def __enter__(self) -> NetnsCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._resources.netns.append(name)

    def _remove_netns(self, name: str) -> None:
        self._resources.netns.remove(name)
        _delete_netns([name])

    def _start_agent(
        self, netns: str, name: str, tcp_ports: Sequence[int] = (), udp_ports: Sequence[int] = ()
    ) -> _Agent:
        agent = _Agent(netns, name, tcp_ports, udp_ports)
        self._resources.agents.append(agent)
        return agent

    def _stop_agent(self, agent: _Agent) -> None:
        self._resources.agents.remove(agent)
        _stop_agents([agent])

    # -- nodes -------------------------------------------------------------------------

    @property
    def nodes(self) -> list[Node]:
        """All nodes, in creation order."""
        return [state.node for state in self._nodes.values()]

    def add_node(self, name: str, pod_cidr_v4: str, pod_cidr_v6: str | None = None) -> Node:
        """Create a node namespace on the fabric and route pod CIDRs between it and all
        existing nodes (both directions)."""
        _check_name("node", name)
        if name in self._nodes:
            raise ValueError(f"node {name} already exists")
        index = len(self._nodes) + 1
        if index > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes")
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
            ipaddress.IPv4Network(pod_cidr_v4)
        ]
        if pod_cidr_v6 is not None:
            networks.append(ipaddress.IPv6Network(pod_cidr_v6))
        node = Node(
            name=name,
            netns=f"{self.prefix}-node-{name}",
            index=index,
            ipv4=str(UNDERLAY_V4[index]),
            ipv6=str(UNDERLAY_V6[index]),
            pod_cidr_v4=str(networks[0]),
            pod_cidr_v6=str(networks[1]) if pod_cidr_v6 is not None else None,
        )
        self._add_netns(node.netns)
        # Before any interface exists, so that all of them inherit accept_dad=0: with DAD a
        # fresh address stays "tentative" for ~1 s, and the kernel does not even send
        # neighbour solicitations (so does not forward IPv6) until link-local is usable.
        _sysctl(
            node.netns,
            {
                "net.ipv4.ip_forward": 1,
                "net.ipv6.conf.all.forwarding": 1,
                "net.ipv6.conf.all.accept_dad": 0,
                "net.ipv6.conf.default.accept_dad": 0,
                "net.ipv4.conf.all.rp_filter": 1,
                "net.ipv4.conf.default.rp_filter": 1,
            },
        )
        fabric_port = f"n{index}"
        _ip_batch(
            self.fabric_netns,
            [
                f"link add {fabric_port} type veth peer name eth0 netns {node.netns}",
                f"link set {fabric_port} master br0 up",
            ],
        )
        _ip_batch(
            node.netns,
            [
                "link set lo up",
                "link set eth0 up",
                f"addr add {node.ipv4}/{UNDERLAY_V4.prefixlen} dev eth0",
                f"addr add {node.ipv6}/{UNDERLAY_V6.prefixlen} dev eth0 nodad",
                f"route add default via {UNDERLAY_GATEWAY_V4} dev eth0",
            ],
        )
        state = _NodeState(node, self._start_agent(node.netns, f"node:{name}"), networks)
        for other in self._nodes.values():
            _ip_batch(node.netns, self._routes_to(other))
            _ip_batch(other.node.netns, self._routes_to(state))
        self._nodes[name] = state
        return node

    def node_netns(self, node: str) -> str:
        """Namespace name of ``node``."""
        return self._node(node).node.netns

    def _node(self, name: str) -> _NodeState:
        try:
            return self._nodes[name]
        except KeyError:
            raise KeyError(f"no node {name!r}") from None

    def _routes_to(self, target: _NodeState) -> list[str]:
        """``ip route`` commands that send ``target``'s pod traffic to it over the underlay."""
        routes = [self._route_via(str(net), target.node) for net in target.pod_networks]
        for pod in self._pods.values():
            if pod.handle.node == target.node.name:
                routes += [self._route_via(ip, target.node) for ip in pod.borrowed]
        return routes

    @staticmethod
    def _route_via(dst: str, node: Node) -> str:
        via = node.ipv6 if ":" in dst else node.ipv4
        return f"route replace {dst} via {via} dev eth0"

    # -- pods --------------------------------------------------------------------------

    @property
    def pods(self) -> list[PodHandle]:
        """All pods, in creation order."""
        return [state.handle for state in self._pods.values()]

    def add_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        ipv4: str | None,
        ipv6: str | None = None,
        tcp_ports: Sequence[int] = (80, 81),
        udp_ports: Sequence[int] = (80, 81),
        host_network: bool = False,
    ) -> PodHandle:
        """Create a pod on ``node`` serving ``tcp_ports``/``udp_ports``.

        For ``host_network`` pods ``ipv4``/``ipv6`` must be ``None`` (or the node's own
        addresses): the ports are served by the node's agent on all node addresses.

        Returns once the network is configured; the pod's agent may still be starting
        (probes wait for it; call ``wait_ready()`` before using other clients).
        """
        _check_name("namespace", namespace)
        _check_name("pod", name)
        key = f"{namespace}/{name}"
        if key in self._pods:
            raise ValueError(f"pod {key} already exists")
        node_state = self._node(node)
        for proto, ports in (("tcp", tcp_ports), ("udp", udp_ports)):
            if len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
                raise ValueError(f"invalid {proto} ports {ports!r}")
        if host_network:
            state = self._add_host_network_pod(
                namespace, name, node_state, ipv4, ipv6, tcp_ports, udp_ports
            )
        else:
            state = self._add_netns_pod(
                namespace, name, node_state, ipv4, ipv6, tcp_ports, udp_ports
            )
        self._pods[key] = state
        return state.handle

    def _add_host_network_pod(
        self,
        namespace: str,
        name: str,
        node_state: _NodeState,
        ipv4: str | None,
        ipv6: str | None,
        tcp_ports: Sequence[int],
        udp_ports: Sequence[int],
    ) -> _PodState:
        node = node_state.node
        if ipv4 not in (None, node.ipv4) or ipv6 not in (None, node.ipv6):
            raise ValueError(f"host-network pods use the node's IPs {node.ipv4}, {node.ipv6}")
        handle = PodHandle(
            namespace,
            name,
            node.name,
            node.netns,
            node.ipv4,
            node.ipv6,
            tuple(tcp_ports),
            tuple(udp_ports),
            host_network=True,
        )
        node_state.agent.wait_ready()
        served: list[tuple[str, int]] = []
        try:
            for proto, ports in (("tcp", tcp_ports), ("udp", udp_ports)):
                for port in ports:
                    node_state.agent.request(
                        {"op": "serve", "proto": proto, "port": port, "name": handle.key}
                    )
                    served.append((proto, port))
        except BaseException:
            for proto, port in served:
                node_state.agent.request({"op": "unserve", "proto": proto, "port": port})
            raise
        return _PodState(handle, agent=None)

    def _add_netns_pod(
        self,
        namespace: str,
        name: str,
        node_state: _NodeState,
        ipv4: str | None,
        ipv6: str | None,
        tcp_ports: Sequence[int],
        udp_ports: Sequence[int],
    ) -> _PodState:
        node = node_state.node
        if ipv4 is None and ipv6 is None:
            raise ValueError("a pod needs at least one IP")
        ips = [ipaddress.ip_address(ip) for ip in (ipv4, ipv6) if ip is not None]
        if ipv4 is not None and ips[0].version != 4:
            raise ValueError(f"ipv4={ipv4!r} is not an IPv4 address")
        if ipv6 is not None and ips[-1].version != 6:
            raise ValueError(f"ipv6={ipv6!r} is not an IPv6 address")
        in_use = {
            ip
            for pod in self._pods.values()
            if not pod.handle.host_network
            for ip in pod.handle.ips
        }
        if any(str(ip) in in_use for ip in ips):
            raise ValueError(f"an IP of {ips} is already used by another pod")

        index = next(self._pod_index)
        host_iface = f"cali{index}"
        handle = PodHandle(
            namespace,
            name,
            node.name,
            f"{self.prefix}-pod{index}-{name[:40]}",
            None if ipv4 is None else str(ips[0]),
            None if ipv6 is None else str(ips[-1]),
            tuple(tcp_ports),
            tuple(udp_ports),
        )
        host_prefix = {4: 32, 6: 128}
        borrowed = [
            f"{ip}/{host_prefix[ip.version]}"
            for ip in ips
            if not any(ip in net for net in node_state.pod_networks)
        ]
        state = _PodState(handle, agent=None, host_iface=host_iface, borrowed=borrowed)

        self._add_netns(handle.netns)
        try:
            _sysctl(
                handle.netns,
                {
                    "net.ipv6.conf.all.accept_dad": 0,
                    "net.ipv6.conf.default.accept_dad": 0,
                },
            )
            node_cmds = [
                f"link add {host_iface} type veth peer name eth0 netns {handle.netns}",
                f"link set {host_iface} up",
            ]
            pod_cmds = ["link set lo up", "link set eth0 up"]
            if handle.ipv4 is not None:
                node_cmds.append(f"route add {handle.ipv4}/32 dev {host_iface}")
                pod_cmds += [
                    f"addr add {handle.ipv4}/32 dev eth0",
                    f"route add default via {POD_GATEWAY_V4} dev eth0 onlink",
                ]
            if handle.ipv6 is not None:
                node_cmds += [
                    f"addr add {POD_GATEWAY_V6}/64 dev {host_iface} nodad",
                    f"route add {handle.ipv6}/128 dev {host_iface}",
                ]
                pod_cmds += [
                    f"addr add {handle.ipv6}/128 dev eth0 nodad",
                    f"route add ::/0 via {POD_GATEWAY_V6} dev eth0",
                ]
            _ip_batch(node.netns, node_cmds)
            # proxy_delay defaults to up to 0.8 s of random delay for proxied ARP replies.
            _sysctl(
                node.netns,
                {
                    f"net.ipv4.conf.{host_iface}.proxy_arp": 1,
                    f"net.ipv4.neigh.{host_iface}.proxy_delay": 0,
                },
            )
            _ip_batch(handle.netns, pod_cmds)
            for other in self._nodes.values():
                if other is not node_state:
                    _ip_batch(other.node.netns, [self._route_via(ip, node) for ip in borrowed])
            state.agent = self._start_agent(handle.netns, handle.key, tcp_ports, udp_ports)
        except BaseException:
            self._teardown_netns_pod(state, strict=False)
            raise
        return state

    def delete_pod(self, namespace: str, name: str) -> None:
        """Remove a pod: its namespace, veth, routes and agent (its IPs become reusable)."""
        key = f"{namespace}/{name}"
        try:
            state = self._pods.pop(key)
        except KeyError:
            raise KeyError(f"no pod {key!r}") from None
        if state.handle.host_network:
            agent = self._nodes[state.handle.node].agent
            for proto, ports in (("tcp", state.handle.tcp_ports), ("udp", state.handle.udp_ports)):
                for port in ports:
                    agent.request({"op": "unserve", "proto": proto, "port": port})
        else:
            self._teardown_netns_pod(state)

    def _teardown_netns_pod(self, state: _PodState, strict: bool = True) -> None:
        """Remove everything ``_add_netns_pod`` created; with ``strict=False`` (rollback
        of a partial creation) ignore whatever was not created."""
        node_state = self._nodes[state.handle.node]
        errors: list[Exception] = []
        if state.agent is not None:
            self._stop_agent(state.agent)
        # Deleting the veth synchronously removes it and its routes; namespace destruction
        # alone would do so asynchronously, racing with an immediate re-add of the IP.
        steps: list[tuple[str, list[str]]] = [
            (node_state.node.netns, [f"link del {state.host_iface}"])
        ]
        steps += [
            (other.node.netns, [f"route del {ip}" for ip in state.borrowed])
            for other in self._nodes.values()
            if other is not node_state
        ]
        for netns, commands in steps:
            try:
                _ip_batch(netns, commands, force=True)
            except NetnsError as exc:
                errors.append(exc)
        if state.handle.netns in self._resources.netns:
            self._remove_netns(state.handle.netns)
        if errors and strict:
            raise NetnsError(f"incomplete teardown of pod {state.handle.key}: {errors}")

    def pod(self, namespace: str, name: str) -> PodHandle:
        """The handle of an existing pod."""
        try:
            return self._pods[f"{namespace}/{name}"].handle
        except KeyError:
            raise KeyError(f"no pod {namespace}/{name}") from None

    # -- agents and probes -------------------------------------------------------------

    def agent_pids(self) -> list[int]:
        """PIDs of all running agent processes."""
        return [agent.proc.pid for agent in self._resources.agents]

    def agent_pid(self, src: str) -> int:
        """PID of the agent process of ``src`` (``"ns/name"`` or ``"node:NAME"``)."""
        return self._agent_for(src).proc.pid

    def wait_ready(self) -> None:
        """Block until every agent serves its ports."""
        for agent in self._resources.agents:
            agent.wait_ready()

    def _agent_for(self, src: str) -> _Agent:
        if src.startswith("node:"):
            return self._node(src.removeprefix("node:")).agent
        try:
            pod = self._pods[src]
        except KeyError:
            raise KeyError(
                f"unknown probe source {src!r} (want 'ns/name' or 'node:NAME')"
            ) from None
        if pod.agent is None:
            return self._nodes[pod.handle.node].agent
        return pod.agent

    def probe_results(self, probes: Sequence[Probe], timeout: float = 1.0) -> list[ProbeResult]:
        """Run all probes concurrently (each with ``timeout``); results in input order.

        Requests are written to every agent before any answer is awaited, so the total
        time is about one ``timeout`` however many probes there are.
        """
        for probe in probes:
            if probe.proto not in _PROTOS:
                raise ValueError(f"unknown protocol in {probe}")
        self.wait_ready()
        batches: dict[int, tuple[_Agent, list[int]]] = {}
        for position, probe in enumerate(probes):
            agent = self._agent_for(probe.src)
            batches.setdefault(id(agent), (agent, []))[1].append(position)
        futures: list[Future[dict[str, Any]] | None] = [None] * len(probes)
        for agent, positions in batches.values():
            requests = [
                {
                    "op": "probe",
                    "dst": probes[i].dst_ip,
                    "port": probes[i].port,
                    "proto": probes[i].proto,
                    "timeout": timeout,
                    "src": probes[i].src_ip,
                }
                for i in positions
            ]
            for position, future in zip(positions, agent.submit(requests), strict=True):
                futures[position] = future
        deadline = time.monotonic() + timeout + AGENT_ANSWER_SLACK
        results = []
        for probe, pending in zip(probes, futures, strict=True):
            assert pending is not None
            try:
                answer = pending.result(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise NetnsError(f"no answer from the agent of {probe.src} for {probe}") from None
            results.append(
                ProbeResult(
                    probe,
                    answer["ok"],
                    answer["reply"],
                    answer["error"],
                    answer.get("connected", False),
                )
            )
        return results

    def probe_many(self, probes: Sequence[Probe], timeout: float = 1.0) -> list[bool]:
        """Like ``probe_results`` but only whether each probe passed (``ProbeResult.passed``)."""
        return [result.passed for result in self.probe_results(probes, timeout)]

    def probe(
        self,
        src: str,
        dst_ip: str,
        port: int,
        proto: str = "tcp",
        timeout: float = 1.0,
        src_ip: str | None = None,
    ) -> bool:
        """Whether a probe from ``src`` (``"ns/name"`` or ``"node:NAME"``) to
        ``dst_ip:port`` passes (``ProbeResult.passed``)."""
        return self.probe_many([Probe(src, dst_ip, port, proto, src_ip)], timeout)[0]

    # -- misc --------------------------------------------------------------------------

    def run_in(self, netns: str, argv: Sequence[str], input: str | None = None) -> str:
        """Run a command inside one of this cluster's namespaces; returns its stdout.

        E.g. ``cluster.run_in(cluster.node_netns("n1"), ["nft", "-f", "-"], input=rules)``.
        """
        if netns not in self._resources.netns:
            raise ValueError(f"{netns!r} is not a namespace of this cluster")
        return _run(["ip", "netns", "exec", netns, *argv], input=input)
