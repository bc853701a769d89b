"""A real N-node Kubernetes cluster on this machine, without Docker: start, inspect, tear down.

``cluster_config.py`` describes the layout (namespaces, addresses, configs); this module makes
it real: certificates, network namespaces, cgroups, the node mount namespaces, the processes
(etcd, kube-apiserver, kube-controller-manager, kube-scheduler in the control-plane namespace;
containerd, kubelet, kube-proxy per node) and a loopback forwarder so host tools reach the API
server. The host's network, mounts and firewall are not touched: every interface, route, rule
and mount is inside a namespace created here, and every name starts with the cluster's name.

Command line (``python -m controller.testing.cluster``, as root)::

    start [--nodes 3] [--bin DIR]... [--image TAR]...   # kubeconfig path on the last stdout line
    status | load TAR... | kubeconfig | stop            # stop also cleans up after crashed runs

Global options ``--name`` (default ``nftp``) and ``--state-dir`` (default
``/var/tmp/NAME-cluster``). Binaries (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubelet, kube-proxy) are looked up by name in the ``--bin`` directories, then
``$NFTPOLICY_TESTENV_BIN``, then ``PATH``; containerd, runc, the CNI plugins and socat come from
Debian packages. Images are docker-archive tars, imported into every node's containerd (there
is no registry): one of them must be the pause image ``registry.k8s.io/pause:3.10.1``.

Tested on a cgroup v1 (hybrid) host, where root lacks CAP_SYS_RESOURCE; IPv4 only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import yaml

from controller.testing import cluster_config as cfg
from controller.testing.cluster_config import (
    ClusterPlan,
    ClusterState,
    NodePlan,
    ProcessRecord,
)
from controller.testing.support import (
    CertificateAuthority,
    PkiError,
    free_port,
    kubeconfig,
    probe_readyz,
    tail,
)

__all__ = ["Cluster", "ClusterError", "main"]

BIN_ENV = "NFTPOLICY_TESTENV_BIN"
API_READY_TIMEOUT = 120.0
CONTAINERD_READY_TIMEOUT = 60.0
NODES_READY_TIMEOUT = 300.0
STOP_TIMEOUT = 30.0
_POLL = 0.5
_MARKER = ".nftpolicy-cluster"  # in every state directory this module made


class ClusterError(RuntimeError):
    """The cluster could not be started, inspected, loaded or stopped; the message says what
    failed and which log to read."""


def _progress(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """Print ``what`` with its duration once it is done."""
    started = time.monotonic()
    yield
    _progress(f"{what} ({time.monotonic() - started:.1f} s)")


def _run(argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0) -> str:
    """Run a short command; its standard output, or ClusterError with its standard error."""
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise ClusterError(f"{' '.join(argv)} failed ({proc.returncode}): {detail}")
    return proc.stdout


def _proc_state(pid: int) -> tuple[str, int] | None:
    """``(state, starttime)`` of a process, None if it does not exist."""
    try:
        return cfg.proc_stat_fields(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def _alive(record: ProcessRecord) -> bool:
    """Whether the recorded process still runs (same PID and start time, not a zombie)."""
    state = _proc_state(record.pid)
    return state is not None and state[1] == record.start_time and state[0] != "Z"


def _ns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _cgroup_mounts() -> tuple[str, ...]:
    return cfg.cgroup_mounts(Path("/proc/self/mountinfo").read_text())


def _image_refs(tar: Path) -> list[str]:
    """The image references a docker-archive tar holds (its manifest.json's RepoTags)."""
    try:
        with tarfile.open(tar) as archive:
            member = archive.extractfile("manifest.json")
            if member is None:
                raise ClusterError(f"{tar}: manifest.json is not a file")
            return cfg.image_refs(member.read())
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise ClusterError(f"{tar} is not a docker-archive image tar: {exc}") from exc


class _Interrupted(BaseException):
    """SIGTERM or SIGHUP during ``start``: tear down like on Ctrl-C."""


class Cluster:
    """One named cluster and its state directory; a context manager (start on enter, stop on
    exit). Every method works from a fresh process: what runs is recorded in the state file."""

    def __init__(
        self,
        name: str = cfg.DEFAULT_NAME,
        state_dir: Path | None = None,
        *,
        nodes: int = cfg.DEFAULT_NODES,
        bin_dirs: Sequence[Path] = (),
        images: Sequence[Path] = (),
        nodes_ready_timeout: float = NODES_READY_TIMEOUT,
    ) -> None:
        self.name = name
        self.state_dir = Path(state_dir or cfg.default_state_dir(name)).absolute()
        self._node_count = nodes
        self._bin_dirs = list(bin_dirs)
        self._images = list(images)
        self._nodes_ready_timeout = nodes_ready_timeout
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._state: ClusterState | None = None
        self._save_lock = threading.Lock()
        self._lock_depth = 0

    # ---- paths and state ------------------------------------------------------------------

    @property
    def plan(self) -> ClusterPlan:
        """The layout: for a recorded cluster its node count, else the requested one."""
        state = self._read_state()
        count = state.nodes if state is not None else self._node_count
        try:
            return cfg.plan_cluster(self.name, count, self.state_dir)
        except cfg.PlanError as exc:
            raise ClusterError(str(exc)) from exc

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig for host tools (exists once the cluster started)."""
        return self.state_dir / "kubeconfig"

    def _read_state(self) -> ClusterState | None:
        try:
            return ClusterState.from_json((self.state_dir / "cluster.json").read_text())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ClusterError(f"{self.state_dir / 'cluster.json'} is unreadable: {exc}") from exc

    def _save(self, state: ClusterState) -> None:
        with self._save_lock:
            self._state = state
            target = self.state_dir / "cluster.json"
            tmp = target.with_suffix(".tmp")
            tmp.write_text(state.to_json())
            tmp.replace(target)

    def _record(self, record: ProcessRecord) -> None:
        assert self._state is not None
        self._save(self._state.with_process(record))

    # ---- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Path:
        """Start the cluster; returns the kubeconfig once every node is Ready and the images
        are imported on every node. On any failure or interruption everything started is torn
        down and the exception says what failed and which log to read."""
        started = time.monotonic()
        plan = self._fresh_plan()
        self._clear_state_dir(dry_run=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / _MARKER).touch()
        with self._exclusive(wait=False):
            previous = self._read_state()
            if previous is not None and previous.phase == "running" and self._any_alive(previous):
                raise ClusterError(
                    f"cluster {self.name} is already running (state in {self.state_dir}); "
                    "run `stop` first"
                )
            bins = self._check_host()
            if self._leftovers():
                with _step("removed the leftovers of a previous run"):
                    self.stop(quiet=True)
            handlers = self._trap_signals()
            try:
                self._start(plan, bins)
            except BaseException as exc:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                how = (
                    "interrupted" if isinstance(exc, KeyboardInterrupt | _Interrupted) else "failed"
                )
                _progress(f"start {how}; tearing down what was started (logs in {plan.logs_dir})")
                self.stop(quiet=True)
                raise
            finally:
                for signum, handler in handlers.items():
                    signal.signal(signum, handler)
        _progress(f"cluster {self.name} ready: {len(plan.nodes)} nodes in "
                  f"{time.monotonic() - started:.1f} s")  # fmt: skip
        return self.kubeconfig

    def _fresh_plan(self) -> ClusterPlan:
        try:
            return cfg.plan_cluster(self.name, self._node_count, self.state_dir)
        except cfg.PlanError as exc:
            raise ClusterError(str(exc)) from exc

    @staticmethod
    def _trap_signals() -> dict[int, Any]:
        """Make SIGTERM and SIGHUP interrupt ``start`` like Ctrl-C (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise _Interrupted(f"signal {signal.Signals(signum).name}")

        return {
            signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)
        }

    def _clear_state_dir(self, keep: Collection[str] = (), *, dry_run: bool = False) -> None:
        """Empty the state directory but for ``keep`` and the marker; refuse a non-empty
        directory without the marker (a mistyped --state-dir must not lose anything).
        ``dry_run``: only check that it may be emptied."""
        if not self.state_dir.exists():
            return
        children = list(self.state_dir.iterdir())
        if children and not (self.state_dir / _MARKER).exists():
            raise ClusterError(
                f"{self.state_dir} is not empty and was not made by this tool (no {_MARKER} "
                "in it); choose another --state-dir"
            )
        if dry_run:
            return
        for child in children:
            if child.name in keep or child.name == _MARKER:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    @contextlib.contextmanager
    def _exclusive(self, *, wait: bool) -> Iterator[None]:
        """One start or stop of a cluster at a time (a script's exit trap may run `stop` while
        its interrupted `start` tears down): an flock on the state directory's marker,
        reentrant for ``start``'s own calls of ``stop``."""
        marker = self.state_dir / _MARKER
        if self._lock_depth or not marker.exists():  # held already, or nothing to protect
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        fd = os.open(marker, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                raise ClusterError(
                    f"another start or stop of cluster {self.name} is running"
                ) from exc
            self._lock_depth = 1
            yield
        finally:
            self._lock_depth = 0
            os.close(fd)

    def _start(self, plan: ClusterPlan, bins: dict[str, Path]) -> None:
        self._clear_state_dir()
        plan.logs_dir.mkdir()
        port = free_port()
        self._save(ClusterState(name=self.name, nodes=len(plan.nodes), api_port=port))
        with _step(f"certificates and configs in {self.state_dir}"):
            self._write_pki(plan)
            self._write_configs(plan, port)
        with _step(f"network namespaces {', '.join(plan.netns_names)}"):
            self._make_network(plan)
        with _step("node cgroups"):
            self._make_cgroups(plan)
        self._start_control_plane(plan, bins, port)
        self._start_nodes(plan, bins)
        assert self._state is not None
        self._save(ClusterState(self.name, len(plan.nodes), port, "running", self._state.processes))

    # ---- preparation ----------------------------------------------------------------------

    def _check_host(self) -> dict[str, Path]:
        """Fail early, with what to do, on anything missing."""
        if os.geteuid() != 0:
            raise ClusterError("the cluster needs root (network namespaces, mounts, cgroups)")
        missing_tools = [t for t in cfg.HOST_TOOLS if shutil.which(t) is None]
        if missing_tools:
            packages = sorted({cfg.HOST_TOOLS[t] for t in missing_tools})
            raise ClusterError(
                f"missing commands: {', '.join(missing_tools)} "
                f"(apt-get install {' '.join(packages)})"
            )
        missing_cni = [p for p in cfg.CNI_PLUGINS if not Path(cfg.CNI_BIN_DIR, p).is_file()]
        if missing_cni:
            raise ClusterError(
                f"missing CNI plugins in {cfg.CNI_BIN_DIR}: {', '.join(missing_cni)} "
                "(apt-get install containernetworking-plugins)"
            )
        if not any(Path(m, "cpuset.cpus").exists() for m in _cgroup_mounts()):
            raise ClusterError(
                "no cgroup v1 hierarchies under /sys/fs/cgroup: this cluster is only "
                "tested on cgroup v1 (hybrid) hosts"
            )
        given = [*self._bin_dirs]
        if os.environ.get(BIN_ENV):
            given.append(Path(os.environ[BIN_ENV]))
        path = [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
        bins, missing = cfg.resolve_binaries(
            cfg.K8S_BINARIES, given + path, lambda p: os.access(p, os.X_OK) and p.is_file()
        )
        if missing:
            where = ", ".join(map(str, given)) or f"no --bin directory, no ${BIN_ENV}"
            raise ClusterError(
                f"Kubernetes binaries not found: {', '.join(missing)} (looked in {where} and "
                "PATH); build them with `scripts/testenv.sh --e2e` and pass its bin directory "
                "with --bin"
            )
        refs = [ref for tar in self._images for ref in _image_refs(tar)]
        if cfg.PAUSE_IMAGE not in refs:
            _progress(
                f"warning: no --image holds {cfg.PAUSE_IMAGE} (containerd's sandbox image): "
                "nodes get Ready but no pod can start until it is loaded"
            )
        return bins

    def _write_pki(self, plan: ClusterPlan) -> None:
        ca = CertificateAuthority(plan.pki_dir, f"{plan.name}-ca")
        try:
            ca.create()
            for spec in cfg.certificates(plan):
                ca.issue(spec)
            ca.service_account_keys("sa")
        except PkiError as exc:
            raise ClusterError(f"making certificates in {plan.pki_dir}: {exc}") from exc

    def _write_kubeconfig(
        self, plan: ClusterPlan, path: Path, server: str, user: str, cert: str
    ) -> None:
        pki = plan.pki
        doc = kubeconfig(
            server,
            pki("ca.crt").read_bytes(),
            pki(f"{cert}.crt").read_bytes(),
            pki(f"{cert}.key").read_bytes(),
            cluster=self.name,
            user=user,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        path.chmod(0o600)

    def _write_configs(self, plan: ClusterPlan, port: int) -> None:
        lan = cfg.api_url_lan()
        self._write_kubeconfig(plan, plan.kubeconfig, cfg.api_url_host(port), "admin", "admin")
        for name in ("kube-controller-manager", "kube-scheduler", "kube-proxy"):
            self._write_kubeconfig(plan, plan.component_kubeconfig(name), lan, name, name)
        for node in plan.nodes:
            kubelet_kubeconfig = plan.component_kubeconfig(node.name)
            self._write_kubeconfig(plan, kubelet_kubeconfig, lan, node.name, node.name)
            node_dir = plan.node_dir(node)
            for private in cfg.PRIVATE_DIRS:
                cfg.node_private_dir(plan, node, private).mkdir(parents=True)
            for key, value in cfg.KUBELET_SYSCTLS.items():
                sysctl = cfg.node_sysctl_file(plan, node, key)
                sysctl.parent.mkdir(parents=True, exist_ok=True)
                sysctl.write_text(value + "\n")
            conf_dir = cfg.cni_conf_dir(plan, node)
            conf_dir.mkdir()
            (conf_dir / f"10-{plan.name}.conflist").write_text(
                json.dumps(cfg.cni_config(plan, node), indent=2)
            )
            (node_dir / "containerd.toml").write_text(
                cfg.to_toml(cfg.containerd_config(plan, node))
            )
            (node_dir / "kubelet.yaml").write_text(
                yaml.safe_dump(cfg.kubelet_config(plan, node), sort_keys=False)
            )
            (node_dir / "kube-proxy.yaml").write_text(
                yaml.safe_dump(cfg.kube_proxy_config(plan, node), sort_keys=False)
            )
            (plan.logs_dir / node.name).mkdir()

    def _make_network(self, plan: ClusterPlan) -> None:
        for netns in plan.netns_names:
            _run(["ip", "netns", "add", netns])
        _run(["ip", "-n", plan.cp_netns, "-batch", "-"], input="\n".join(cfg.cp_ip_batch(plan)))
        for node in plan.nodes:
            batch = "\n".join(cfg.node_ip_batch(plan, node))
            _run(["ip", "-n", node.netns, "-batch", "-"], input=batch)
            for key, value in cfg.NODE_SYSCTLS.items():
                _run(["nsenter", f"--net={cfg.netns_path(node.netns)}", "--",
                      "sysctl", "-qw", f"{key}={value}"])  # fmt: skip

    def _make_cgroups(self, plan: ClusterPlan) -> None:
        """kubelet's cgroupRoot in every hierarchy; cpuset's cpus/mems copied from the root
        (a v1 cpuset cgroup starts empty and no task could join it)."""
        for mount in _cgroup_mounts():
            for node in plan.nodes:
                directory = Path(mount) / node.name
                directory.mkdir(exist_ok=True)
                for name in cfg.CPUSET_INHERITED:
                    parent = Path(mount) / name
                    if parent.exists():
                        (directory / name).write_text(parent.read_text())

    # ---- processes ------------------------------------------------------------------------

    def _spawn(
        self, name: str, argv: Sequence[str], log: Path, node: NodePlan | None = None
    ) -> ProcessRecord:
        with log.open("ab") as out:
            out.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,  # a Ctrl-C in the terminal reaches only this process
            )
        self._children[proc.pid] = proc
        state = _proc_state(proc.pid)
        record = ProcessRecord(
            name, proc.pid, state[1] if state else 0, str(log), node.name if node else None
        )
        self._record(record)
        return record

    def _wait(
        self,
        what: str,
        probe: Callable[[], str | None],
        timeout: float,
        watch: Sequence[ProcessRecord],
    ) -> None:
        """Poll ``probe`` (None when done, else why not) until done; fail when a watched
        process exits or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for record in watch:
                child = self._children.get(record.pid)
                if child is not None:
                    child.poll()
                if not _alive(record):
                    raise ClusterError(
                        f"{record.label} exited while waiting for {what}; its log {record.log} "
                        f"ends with:\n{tail(Path(record.log))}"
                    )
            why = probe()
            if why is None:
                return
            if time.monotonic() > deadline:
                logs = ", ".join(sorted({r.log for r in watch}))
                raise ClusterError(f"{what}: not done after {timeout:.0f} s ({why}); read {logs}")
            time.sleep(_POLL)

    def _probe_readyz(self, port: int) -> str | None:
        pki = self._fresh_plan().pki
        return probe_readyz(port, pki("ca.crt"), pki("admin.crt"), pki("admin.key"))

    def _api(self) -> Any:
        """A kubernetes ``CoreV1Api`` with the admin kubeconfig (imported late: the CLI's
        ``stop`` must work without the client library's import time)."""
        from kubernetes import client

        state = self._read_state()
        if state is None:
            raise ClusterError(f"no cluster {self.name} in {self.state_dir}")
        pki = self._fresh_plan().pki
        conf = client.Configuration()
        conf.host = cfg.api_url_host(state.api_port)
        conf.ssl_ca_cert = str(pki("ca.crt"))
        conf.cert_file = str(pki("admin.crt"))
        conf.key_file = str(pki("admin.key"))
        return client.CoreV1Api(client.ApiClient(conf))

    def _start_control_plane(self, plan: ClusterPlan, bins: dict[str, Path], port: int) -> None:
        with _step("control plane up (etcd, kube-apiserver /readyz through the forwarder)"):
            components = cfg.control_plane_components(plan, bins)
            enter = cfg.cp_enter_argv(plan)
            records = {}
            for component in components[:2]:
                records[component.name] = self._spawn(
                    component.name, [*enter, *component.argv], plan.log(component.name)
                )
            socat, nsenter = shutil.which("socat"), shutil.which("nsenter")
            assert socat is not None and nsenter is not None  # _check_host
            forwarder = self._spawn(
                "forwarder",
                cfg.forwarder_argv(plan, port, socat, nsenter),
                plan.log("forwarder"),
            )
            self._wait(
                "kube-apiserver /readyz",
                lambda: self._probe_readyz(port),
                API_READY_TIMEOUT,
                [*records.values(), forwarder],
            )
        with _step("Node objects with fixed pod CIDRs; controller-manager and scheduler"):
            api = self._api()
            try:
                for node in plan.nodes:
                    api.create_node(cfg.node_manifest(node))
            finally:
                api.api_client.close()
            for component in components[2:]:
                self._spawn(component.name, [*enter, *component.argv], plan.log(component.name))

    def _start_holder(self, plan: ClusterPlan, node: NodePlan) -> ProcessRecord:
        """The node's namespace holder, its private directories and sysctl files mounted."""
        holder = self._spawn("holder", cfg.holder_argv(node), plan.log("holder", node), node)
        own_mnt = _ns_id("/proc/self/ns/mnt")

        def unshared() -> str | None:
            if _ns_id(f"/proc/{holder.pid}/ns/mnt") in (None, own_mnt):
                return "mount namespace not created yet"
            try:
                comm = Path(f"/proc/{holder.pid}/comm").read_text().strip()
            except OSError:
                return "holder gone"  # _wait reports its exit next
            return None if comm == "sleep" else f"holder is still {comm}"

        self._wait(f"{node.name}'s namespaces", unshared, 10.0, [holder])
        enter = cfg.enter_argv(holder.pid)
        for mount in cfg.node_mounts(plan, node):
            for argv in cfg.mount_argvs(mount):
                _run([*enter, *argv])
        _run([*enter, "hostname", node.name])
        return holder

    def _start_nodes(self, plan: ClusterPlan, bins: dict[str, Path]) -> None:
        holders: dict[str, ProcessRecord] = {}
        containerds: dict[str, ProcessRecord] = {}
        with _step(f"{len(plan.nodes)} node namespaces and containerds up"):
            for node in plan.nodes:
                holder = self._start_holder(plan, node)
                holders[node.name] = holder
                containerd = cfg.node_components(plan, node, bins)[0]
                containerds[node.name] = self._spawn(
                    containerd.name,
                    [*cfg.enter_argv(holder.pid), *containerd.argv],
                    plan.log(containerd.name, node),
                    node,
                )
            for node in plan.nodes:
                self._wait(
                    f"{node.name}'s containerd",
                    functools.partial(self._probe_containerd, plan, node, holders[node.name].pid),
                    CONTAINERD_READY_TIMEOUT,
                    [holders[node.name], containerds[node.name]],
                )
        watch = [*holders.values(), *containerds.values()]
        watch += [r for r in self._state.processes if r.node is None] if self._state else []
        with ThreadPoolExecutor(max_workers=len(plan.nodes)) as pool:
            imports = {
                node.name: pool.submit(self._import, node.name, holders[node.name].pid)
                for node in plan.nodes
            }
            with _step(f"kubelets and kube-proxies started, {len(plan.nodes)} nodes Ready"):
                for node in plan.nodes:
                    for component in cfg.node_components(plan, node, bins)[1:]:
                        watch.append(
                            self._spawn(
                                component.name,
                                [*cfg.enter_argv(holders[node.name].pid), *component.argv],
                                plan.log(component.name, node),
                                node,
                            )
                        )
                self._wait(
                    f"{len(plan.nodes)} nodes Ready",
                    lambda: self._probe_nodes(plan),
                    self._nodes_ready_timeout,
                    watch,
                )
                self._wait(
                    "the default ServiceAccount (kube-controller-manager working)",
                    self._probe_default_service_account,
                    60.0,
                    watch,
                )
            for name, future in imports.items():
                seconds = future.result()
                if self._images:
                    _progress(f"{name}: {len(self._images)} images imported in {seconds:.1f} s")

    def _probe_containerd(self, plan: ClusterPlan, node: NodePlan, holder_pid: int) -> str | None:
        socket = cfg.node_private_dir(plan, node, "/run") / "containerd" / "containerd.sock"
        if not socket.exists():
            return "no socket yet"
        try:
            _run([*cfg.enter_argv(holder_pid), "ctr", f"--address={cfg.CONTAINERD_SOCKET}",
                  "version"], timeout=10)  # fmt: skip
        except ClusterError as exc:
            return str(exc)
        return None

    def _probe_nodes(self, plan: ClusterPlan) -> str | None:
        api = self._api()
        try:
            items = api.api_client.sanitize_for_serialization(api.list_node())["items"]
        except Exception as exc:  # noqa: BLE001 - any API failure just means "not yet"
            return f"listing nodes: {exc}"
        finally:
            api.api_client.close()
        ready = {i["metadata"]["name"] for i in items if cfg.node_ready(i)}
        waiting = [n.name for n in plan.nodes if n.name not in ready]
        return f"not Ready: {', '.join(waiting)}" if waiting else None

    def _probe_default_service_account(self) -> str | None:
        api = self._api()
        try:
            api.read_namespaced_service_account("default", "default")
        except Exception as exc:  # noqa: BLE001
            return f"reading it: {getattr(exc, 'reason', exc)}"
        finally:
            api.api_client.close()
        return None

    # ---- images ---------------------------------------------------------------------------

    def _import(self, node: str, holder_pid: int, images: Sequence[Path] | None = None) -> float:
        """Import the images into one node's containerd; returns the seconds it took."""
        started = time.monotonic()
        for tar in self._images if images is None else images:
            with tar.open("rb") as data:
                proc = subprocess.run(
                    cfg.ctr_import_argv(holder_pid),
                    stdin=data,
                    capture_output=True,
                    text=True,
                    check=False,
                )
            if proc.returncode != 0:
                raise ClusterError(
                    f"importing {tar} into {node}'s containerd failed: "
                    f"{proc.stderr.strip()[-1000:]} (containerd log: "
                    f"{self.state_dir / 'logs' / node / 'containerd.log'})"
                )
        return time.monotonic() - started

    def load(self, images: Sequence[Path]) -> dict[str, float]:
        """Import docker-archive tars into every node's containerd (in parallel); returns the
        seconds each node took."""
        for tar in images:
            _image_refs(tar)  # fail before importing anything
        state = self._running_state()
        holders = {}
        for node in self.plan.nodes:
            holder = state.holder(node.name)
            if holder is None or not _alive(holder):
                raise ClusterError(f"{node.name} is not running (see `status`)")
            holders[node.name] = holder.pid
        with ThreadPoolExecutor(max_workers=len(holders)) as pool:
            futures = {n: pool.submit(self._import, n, pid, images) for n, pid in holders.items()}
            return {n: f.result() for n, f in futures.items()}

    # ---- inspection -----------------------------------------------------------------------

    def _running_state(self) -> ClusterState:
        state = self._read_state()
        if state is None:
            raise ClusterError(f"no cluster {self.name} in {self.state_dir} (run `start`)")
        if state.phase != "running":
            raise ClusterError(f"cluster {self.name} is not running (phase {state.phase})")
        return state

    @staticmethod
    def _any_alive(state: ClusterState) -> bool:
        return any(_alive(r) for r in state.processes)

    def status(self) -> tuple[str, bool]:
        """A report (cluster, nodes from the API, processes, logs) and whether all is well."""
        state = self._read_state()
        if state is None:
            leftovers = self._leftovers()
            extra = f"; leftovers of a crashed run: {', '.join(leftovers)}" if leftovers else ""
            return f"no cluster {self.name} in {self.state_dir}{extra}", False
        plan = self.plan
        lines = [
            f"cluster {self.name}: phase {state.phase}, {state.nodes} nodes, state {self.state_dir}",
            f"kubeconfig {self.kubeconfig} (API {cfg.api_url_host(state.api_port)}, "
            f"inside the namespaces {cfg.api_url_lan()})",
        ]
        healthy = state.phase == "running"
        if not healthy:
            lines.append("start has not finished (or was killed): `stop` cleans up")
        if self._any_alive(state):
            try:
                api = self._api()
                try:
                    nodes = api.api_client.sanitize_for_serialization(api.list_node())["items"]
                finally:
                    api.api_client.close()
                lines.append("nodes:")
                for node in nodes:
                    ready = cfg.node_ready(node)
                    healthy &= ready
                    addresses = [a["address"] for a in node["status"].get("addresses", [])]
                    lines.append(
                        f"  {node['metadata']['name']:<20} {'Ready' if ready else 'NotReady':<9}"
                        f" {' '.join(addresses):<30} pods {node['spec'].get('podCIDR', '-')}"
                    )
            except Exception as exc:  # noqa: BLE001 - report, do not crash
                healthy = False
                lines.append(f"nodes: API not reachable ({exc})")
        lines.append("processes:")
        for record in state.processes:
            alive = _alive(record)
            healthy &= alive
            lines.append(
                f"  {record.label:<28} pid {record.pid:<8} {'alive' if alive else 'DEAD':<6}"
                f" log {record.log}"
            )
        lines.append(f"pod logs: {plan.state_dir}/nodes/NODE/root/var/log/pods")
        return "\n".join(lines), healthy

    # ---- teardown -------------------------------------------------------------------------

    def _own_netns(self) -> list[str]:
        return [ns for ns in _list_netns() if cfg.is_cluster_netns(self.name, ns)]

    def _own_cgroups(self) -> list[Path]:
        return [
            directory
            for mount in _cgroup_mounts()
            for directory in Path(mount).glob(f"{self.name}-node-*")
            if directory.is_dir() and cfg.is_cluster_netns(self.name, directory.name)
        ]

    def _forwarder_pids(self) -> set[int]:
        """Forwarders of this cluster by command line (a crashed run left no record)."""
        marker = f"--net={cfg.netns_path(f'{self.name}-cp')} "
        pids = set()
        for pid in _pids():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if os.path.basename(argv[0]) == b"socat" and any(
                marker.encode() in arg for arg in argv
            ):
                pids.add(pid)
        return pids

    def _leftovers(self) -> list[str]:
        """Namespaces, cgroups or processes of this cluster that exist now."""
        found = [f"netns {ns}" for ns in self._own_netns()]
        found += [f"cgroup {d}" for d in self._own_cgroups()]
        state = self._read_state()
        if state is not None:
            found += [f"{r.label} (pid {r.pid})" for r in state.processes if _alive(r)]
        found += [f"forwarder (pid {pid})" for pid in self._forwarder_pids()]
        return found

    def _victims(self, ns_ids: set[tuple[int, int]], cgroups: Sequence[Path]) -> set[int]:
        """Live processes of this cluster: recorded, in its network namespaces (daemons,
        shims, host-network containers) or in its node cgroups (pods)."""
        state = self._read_state()
        pids = {r.pid for r in state.processes if _alive(r)} if state else set()
        pids |= self._forwarder_pids()
        for pid in _pids():
            if _ns_id(f"/proc/{pid}/ns/net") in ns_ids:
                pids.add(pid)
        for directory in _cgroup_dirs(cgroups):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        pids.discard(os.getpid())
        return {p for p in pids if (s := _proc_state(p)) is not None and s[0] != "Z"}

    def stop(self, *, quiet: bool = False) -> None:
        """Kill every process of the cluster, remove its cgroups, mounts and namespaces and
        its state (logs are kept). Idempotent; also cleans up after a crashed start."""
        with self._exclusive(wait=True):
            self._stop(quiet)

    def _stop(self, quiet: bool) -> None:
        started = time.monotonic()
        netns = self._own_netns()
        ns_ids = {i for ns in netns if (i := _ns_id(cfg.netns_path(ns))) is not None}
        cgroups = self._own_cgroups()
        deadline = time.monotonic() + STOP_TIMEOUT
        killed: set[int] = set()
        while victims := self._victims(ns_ids, cgroups):
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"processes survived SIGKILL for {STOP_TIMEOUT:.0f} s: {victims}"
                )
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed |= victims
            for child in self._children.values():
                child.poll()  # reap our own
            time.sleep(0.2)
        self._children.clear()
        self._remove_cgroups(cgroups)
        self._unmount_state()
        for ns in netns:
            if Path(cfg.netns_path(ns)).exists():
                _run(["ip", "netns", "delete", ns])
        self._clear_state_dir(keep={"logs"})
        if not quiet or killed or netns or cgroups:
            _progress(
                f"stopped {self.name}: {len(killed)} processes killed, {len(netns)} network "
                f"namespaces and {len(cgroups)} cgroups removed "
                f"({time.monotonic() - started:.1f} s); logs kept in {self.state_dir / 'logs'}"
            )

    @staticmethod
    def _remove_cgroups(cgroups: Sequence[Path]) -> None:
        """rmdir every cgroup below the node roots, deepest first (a v1 cgroup with children
        cannot be removed; a just-killed task may keep it busy for a moment)."""
        dirs = [str(d) for d in _cgroup_dirs(cgroups)]
        for directory in cfg.deepest_first(dirs):
            for attempt in range(50):
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if attempt == 49:
                        raise ClusterError(f"cannot remove cgroup {directory}: {exc}") from exc
                    time.sleep(0.1)

    def _unmount_state(self) -> None:
        """Unmount anything under the state directory in the host's mount namespace (nothing,
        normally: node mounts live and die in the node's own namespace)."""
        mountinfo = Path("/proc/self/mountinfo").read_text()
        for point in cfg.mounts_under(mountinfo, self.state_dir):
            _run(["umount", "--lazy", point])
        if cfg.mounts_under(Path("/proc/self/mountinfo").read_text(), self.state_dir):
            raise ClusterError(f"mounts remain under {self.state_dir}; not removing it")


# ---- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m controller.testing.cluster",
        description="A real multi-node Kubernetes cluster in network namespaces (root only).",
    )
    parser.add_argument(
        "--name",
        default=cfg.DEFAULT_NAME,
        help="cluster name, prefix of every object (%(default)s)",
    )
    parser.add_argument(
        "--state-dir", type=Path, help="certificates, configs, logs (/var/tmp/NAME-cluster)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start; prints the kubeconfig path last")
    start.add_argument("--nodes", type=int, default=cfg.DEFAULT_NODES)
    start.add_argument(
        "--bin", type=Path, action="append", default=[], help="directory with k8s binaries"
    )
    start.add_argument(
        "--image", type=Path, action="append", default=[], help="docker-archive tar to import"
    )
    start.add_argument(
        "--timeout", type=float, default=NODES_READY_TIMEOUT, help="seconds for nodes Ready"
    )
    sub.add_parser("status", help="nodes, processes, logs; exit 1 unless all is well")
    load = sub.add_parser("load", help="import docker-archive tars into every node")
    load.add_argument("images", type=Path, nargs="+")
    sub.add_parser("kubeconfig", help="print the admin kubeconfig path")
    sub.add_parser("stop", help="tear down (idempotent, also after a crash)")
    return parser


def _cgroup_dirs(roots: Sequence[Path]) -> list[Path]:
    """Every directory below (and including) ``roots`` that exists now. Cgroups vanish while
    they are walked (the kubelet and runc remove pods' as their tasks die): ``os.walk`` skips
    a directory gone meanwhile, where ``Path.rglob`` raised FileNotFoundError mid-teardown."""
    return [Path(d) for root in roots for d, _, _ in os.walk(root)]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "start":
            cluster = Cluster(
                args.name,
                args.state_dir,
                nodes=args.nodes,
                bin_dirs=args.bin,
                images=args.image,
                nodes_ready_timeout=args.timeout,
            )
            print(cluster.start(), flush=True)
            return 0
        cluster = Cluster(args.name, args.state_dir)
        if args.command == "status":
            report, healthy = cluster.status()
            print(report)
            return 0 if healthy else 1
        if args.command == "load":
            started = time.monotonic()
            for node, seconds in cluster.load(args.images).items():
                _progress(f"{node}: imported in {seconds:.1f} s")
            _progress(f"loaded {len(args.images)} images ({time.monotonic() - started:.1f} s)")
            return 0
        if args.command == "kubeconfig":
            cluster._running_state()
            print(cluster.kubeconfig)
            return 0
        cluster.stop()
        return 0
    except ClusterError as exc:
        _progress(f"ERROR: {exc}")
        return 1
    except (KeyboardInterrupt, _Interrupted):
        _progress("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
