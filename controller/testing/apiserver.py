"""A real Kubernetes control plane (etcd + kube-apiserver) for integration tests, like envtest.

The binaries come from ``scripts/testenv.sh``, which builds them once from Go modules and
caches them; ``NFTPOLICY_TESTENV_BIN`` points at an existing bin directory instead. Typical use::

    with TestControlPlane() as cp:
        core = kubernetes.client.CoreV1Api(cp.api_client())
        core.list_namespace()

Everything lives in a fresh temporary directory: a CA, the API server's serving certificate
(SAN localhost/127.0.0.1), an admin client certificate (O=system:masters), the service-account
signing key, etcd's data, both processes' logs and an admin kubeconfig. etcd and kube-apiserver
listen on free loopback ports only. Set ``NFTPOLICY_TESTENV_KEEP=1`` to keep that directory
after ``stop()`` for debugging.

Only kube-apiserver runs, no kube-controller-manager: namespaces never finish deleting, no
``default`` ServiceAccount appears (ServiceAccount admission is disabled for that reason),
no garbage collection, pods never run. See shared/notes/control-plane.md.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from controller.testing.support import (
    CertificateAuthority,
    CertSpec,
    PkiError,
    free_port,
    kubeconfig,
    probe_readyz,
    tail,
)

__all__ = [
    "ControlPlaneError",
    "GoUnavailableError",
    "TestControlPlane",
    "cleanup_dead_runs",
    "find_binaries",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTENV_SCRIPT = REPO_ROOT / "scripts" / "testenv.sh"
BIN_ENV = "NFTPOLICY_TESTENV_BIN"
KEEP_ENV = "NFTPOLICY_TESTENV_KEEP"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"

# scripts/testenv.sh exit status when no Go toolchain is installed (too old a Go is 4).
_EXIT_GO_MISSING = 3
_PR_SET_PDEATHSIG = 1
_DIR_PREFIX = "nftpolicy-cp-"
_OWNER_FILE = "owner.pid"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or used."""


class GoUnavailableError(ControlPlaneError):
    """No binaries are cached and no Go toolchain is installed to build them."""


def find_binaries(*, stderr: IO[str] | None = None) -> Path:
    """Return the directory holding ``etcd`` and ``kube-apiserver`` (and ``helm``).

    Uses ``$NFTPOLICY_TESTENV_BIN`` when set; otherwise runs ``scripts/testenv.sh``, which
    builds the binaries on first use (many minutes) and reports the cached ones afterwards.
    Its progress goes to ``stderr`` (default: this process's standard error).

    Raises:
        GoUnavailableError: nothing cached and Go is not installed.
        ControlPlaneError: the build failed or the directory lacks a binary.
    """
    env_bin = os.environ.get(BIN_ENV)
    if env_bin:
        bin_dir = Path(env_bin)
    else:
        if not TESTENV_SCRIPT.is_file():
            raise ControlPlaneError(f"{TESTENV_SCRIPT} is missing and ${BIN_ENV} is not set")
        proc = subprocess.run(
            ["bash", str(TESTENV_SCRIPT)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            check=False,
        )
        if proc.returncode == _EXIT_GO_MISSING:
            raise GoUnavailableError(
                "Go is not installed, so scripts/testenv.sh cannot build etcd/kube-apiserver "
                f"(install Go >= 1.24, or set ${BIN_ENV} to a directory with the binaries)"
            )
        if proc.returncode != 0:
            raise ControlPlaneError(
                f"scripts/testenv.sh failed with exit status {proc.returncode}; "
                "its messages are on standard error above"
            )
        lines = proc.stdout.strip().splitlines()
        if not lines:
            raise ControlPlaneError("scripts/testenv.sh printed no bin directory")
        bin_dir = Path(lines[-1])
    for name in ("etcd", "kube-apiserver"):
        if not os.access(bin_dir / name, os.X_OK):
            raise ControlPlaneError(f"{bin_dir / name} is missing or not executable")
    return bin_dir


def _log_note(log: Path) -> str:
    """Where a log can be read after a failed start (the directory is removed unless kept)."""
    if os.environ.get(KEEP_ENV):
        return f" {log}"
    return f" (set {KEEP_ENV}=1 to keep {log.parent})"


def cleanup_dead_runs() -> None:
    """Remove temporary directories of control planes whose process died without ``stop()``
    (SIGKILL); their etcd and kube-apiserver died with them (PR_SET_PDEATHSIG)."""
    for run_dir in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*"):
        try:
            pid = int((run_dir / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # no owner file: kept on purpose (NFTPOLICY_TESTENV_KEEP) or not ours
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(run_dir, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def _die_with_parent() -> None:
    """preexec_fn: have the kernel SIGTERM the child when the thread that started it exits,
    so a killed test run leaves no etcd or kube-apiserver behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class _Pki:
    """The control plane's CA, serving and admin certificates and service-account keys."""

    def __init__(self, directory: Path) -> None:
        self.ca = CertificateAuthority(directory, "nftpolicy-test-ca")
        self.ca_crt = self.ca.crt
        self.serving_crt = directory / "apiserver.crt"
        self.serving_key = directory / "apiserver.key"
        self.admin_crt = directory / "admin.crt"
        self.admin_key = directory / "admin.key"
        self.sa_key = directory / "sa.key"
        self.sa_pub = directory / "sa.pub"

    def create(self) -> None:
        """Make the CA, the serving and admin certificates and the service-account key."""
        serving = CertSpec(
            "apiserver",
            "localhost",
            server=True,
            dns_names=("localhost",),
            ips=("127.0.0.1", "10.0.0.1"),
        )
        admin = CertSpec("admin", "nftpolicy-test-admin", "system:masters", client=True)
        try:
            self.ca.create()
            self.ca.issue(serving)
            self.ca.issue(admin)
            self.ca.service_account_keys("sa")
        except PkiError as exc:
            raise ControlPlaneError(str(exc)) from exc


class TestControlPlane:
    """etcd + kube-apiserver on loopback with TLS, RBAC and TokenRequest; a context manager.

    Attributes ``kubeconfig``, ``url`` and ``ca_file`` are valid once started. ``stop()`` is
    idempotent and also runs at interpreter exit.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        bin_dir: Path | str | None = None,
        *,
        startup_timeout: float = 90.0,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        """Prepare (not start) a control plane.

        Args:
            bin_dir: directory with ``etcd`` and ``kube-apiserver``; default: ``find_binaries()``
                when started.
            startup_timeout: seconds to wait for each of etcd and kube-apiserver to be ready.
            extra_apiserver_args: more kube-apiserver flags (appended, so they win).
        """
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self.startup_timeout = startup_timeout
        self._extra_args = list(extra_apiserver_args)
        self._dir: Path | None = None
        self._pki: _Pki | None = None
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._etcd_port = 0
        self._etcd_peer_port = 0
        self._port = 0
        self._lock = threading.RLock()
        self._atexit_registered = False

    # ---- properties ---------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """The directory the binaries are taken from (resolved at start)."""
        if self._bin_dir is None:
            raise ControlPlaneError("control plane not started")
        return self._bin_dir

    @property
    def dir(self) -> Path:
        """The temporary directory with certificates, etcd data, logs and the kubeconfig."""
        if self._dir is None:
            raise ControlPlaneError("control plane not started")
        return self._dir

    @property
    def kubeconfig(self) -> Path:
        """An admin (system:masters) kubeconfig with the CA and client certificate embedded."""
        return self.dir / "admin.kubeconfig"

    @property
    def url(self) -> str:
        """The API server's URL, ``https://127.0.0.1:PORT``."""
        self.dir  # noqa: B018 - raises when not started
        return f"https://127.0.0.1:{self._port}"

    @property
    def ca_file(self) -> Path:
        """The CA certificate that signed the API server's serving certificate."""
        return self.dir / "ca.crt"

    @property
    def etcd_url(self) -> str:
        """etcd's client URL (plain HTTP on loopback)."""
        self.dir  # noqa: B018 - raises when not started
        return f"http://127.0.0.1:{self._etcd_port}"

    @property
    def apiserver_log(self) -> Path:
        """kube-apiserver's log (all runs, restarts appended)."""
        return self.dir / "kube-apiserver.log"

    @property
    def etcd_log(self) -> Path:
        """etcd's log."""
        return self.dir / "etcd.log"

    @property
    def kubectl_path(self) -> str | None:
        """The kubectl built next to kube-apiserver, else the one on PATH, else None."""
        if self._bin_dir is not None and os.access(self._bin_dir / "kubectl", os.X_OK):
            return str(self._bin_dir / "kubectl")
        return shutil.which("kubectl")

    # ---- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Make certificates, start etcd and kube-apiserver, wait for /readyz, write kubeconfig.

        Raises:
            ControlPlaneError: with the tail of the failing process's log.
        """
        with self._lock:
            if self._dir is not None:
                raise ControlPlaneError("control plane already started")
            if self._bin_dir is None:
                self._bin_dir = find_binaries()
            cleanup_dead_runs()
            self._dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
            (self._dir / _OWNER_FILE).write_text(str(os.getpid()))
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
            try:
                self._pki = _Pki(self._dir)
                self._pki.create()
                self._start_etcd()
                self._port = free_port()
                self._write_kubeconfig()
                self._start_apiserver()
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """Terminate kube-apiserver, then etcd (SIGTERM, SIGKILL after 10 s); remove the
        temporary directory unless ``NFTPOLICY_TESTENV_KEEP`` is set. Safe to call twice."""
        with self._lock:
            self._terminate(self._apiserver)
            self._apiserver = None
            self._terminate(self._etcd)
            self._etcd = None
            if self._dir is not None:
                if os.environ.get(KEEP_ENV):
                    (self._dir / _OWNER_FILE).unlink(missing_ok=True)
                    print(f"[control plane] kept {self._dir}", flush=True)
                else:
                    shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
                self._pki = None

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port against the same etcd.

        Data survives (it is in etcd); clients reconnect to the same URL with the same CA.
        """
        with self._lock:
            self.dir  # noqa: B018 - raises when not started
            self._terminate(self._apiserver)
            self._apiserver = None
            self._start_apiserver()

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver only (etcd keeps running); ``restart_apiserver()`` brings it back."""
        with self._lock:
            self._terminate(self._apiserver)
            self._apiserver = None

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            out.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            preexec: Callable[[], None] | None = None
            if threading.current_thread() is threading.main_thread():
                preexec = _die_with_parent
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                preexec_fn=preexec,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest only
            )

    def _wait_ready(
        self,
        name: str,
        proc: subprocess.Popen[bytes],
        log: Path,
        probe: Callable[[], str | None],
    ) -> None:
        """Poll ``probe`` (None when ready, else why not) until ready, the process exits or
        ``startup_timeout`` passes."""
        deadline = time.monotonic() + self.startup_timeout
        why = "not probed yet"
        while True:
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with status {proc.returncode} while starting; "
                    f"last lines of its log{_log_note(log)}:\n{tail(log)}"
                )
            why_not = probe()
            if why_not is None:
                return
            why = why_not
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{name} not ready after {self.startup_timeout:.0f} s ({why}); "
                    f"last lines of its log{_log_note(log)}:\n{tail(log)}"
                )
            time.sleep(0.25)

    # ---- etcd ---------------------------------------------------------------------------

    def _start_etcd(self, attempts: int = 3) -> None:
        etcd = str(self.bin_dir / "etcd")
        help_text = subprocess.run(
            [etcd, "--help"], capture_output=True, text=True, check=False
        ).stdout
        for attempt in range(1, attempts + 1):
            self._etcd_port, self._etcd_peer_port = free_port(), free_port()
            client = f"http://127.0.0.1:{self._etcd_port}"
            peer = f"http://127.0.0.1:{self._etcd_peer_port}"
            argv = [
                etcd,
                "--name=default",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--log-level=warn",
            ]
            if "--unsafe-no-fsync" in help_text:
                argv.append("--unsafe-no-fsync=true")
            self._etcd = self._spawn(argv, self.etcd_log)
            try:
                self._wait_ready("etcd", self._etcd, self.etcd_log, self._probe_etcd)
                return
            except ControlPlaneError:
                in_use = "address already in use" in tail(self.etcd_log, 10)
                self._terminate(self._etcd)
                self._etcd = None
                if not in_use or attempt == attempts:
                    raise
                shutil.rmtree(self.dir / "etcd", ignore_errors=True)

    def _probe_etcd(self) -> str | None:
        conn = http.client.HTTPConnection("127.0.0.1", self._etcd_port, timeout=2)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
        except OSError as exc:
            return f"GET /health: {exc}"
        finally:
            conn.close()
        if resp.status == 200 and '"health":"true"' in body.replace(" ", ""):
            return None
        return f"GET /health: {resp.status} {body.strip()[:200]}"

    # ---- kube-apiserver -----------------------------------------------------------------

    def _apiserver_argv(self) -> list[str]:
        pki = self._pki
        assert pki is not None
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self._port}",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving_crt}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_crt}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            f"--service-account-issuer={self.url}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            # No kube-controller-manager makes `default` ServiceAccounts (envtest does the same).
            "--disable-admission-plugins=ServiceAccount",
            # With a loopback advertise address the default (lease) reconciler logs every 10 s
            # 'Endpoints "kubernetes" is invalid: ... may not be in the loopback range'. The
            # `kubernetes` Service (10.0.0.1) still exists, just without endpoints.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            *self._extra_args,
        ]

    def _start_apiserver(self) -> None:
        self._apiserver = self._spawn(self._apiserver_argv(), self.apiserver_log)
        self._wait_ready(
            "kube-apiserver", self._apiserver, self.apiserver_log, self._probe_apiserver
        )

    def _probe_apiserver(self) -> str | None:
        pki = self._pki
        assert pki is not None
        return probe_readyz(self._port, pki.ca_crt, pki.admin_crt, pki.admin_key)

    def _write_kubeconfig(self) -> None:
        pki = self._pki
        assert pki is not None
        config = kubeconfig(
            self.url,
            pki.ca_crt.read_bytes(),
            pki.admin_crt.read_bytes(),
            pki.admin_key.read_bytes(),
            cluster="nftpolicy-test",
            user="admin",
        )
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    # ---- clients ------------------------------------------------------------------------

    def api_client(self, token: str | None = None) -> k8s.ApiClient:
        """A ``kubernetes.client.ApiClient``: the admin (system:masters client certificate) by
        default, or one that authenticates with the bearer ``token`` and no certificate."""
        pki = self._pki
        if pki is None:
            raise ControlPlaneError("control plane not started")
        cfg = k8s.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = str(pki.ca_crt)
        if token is None:
            cfg.cert_file = str(pki.admin_crt)
            cfg.key_file = str(pki.admin_key)
        else:
            cfg.api_key = {"authorization": token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
        return k8s.ApiClient(cfg)

    def token_for(
        self,
        namespace: str,
        service_account: str,
        *,
        expiration_seconds: int = 3600,
        pod: str | None = None,
    ) -> str:
        """A bound token for ``namespace/service_account`` via the TokenRequest API.

        Creates the namespace and the ServiceAccount when they do not exist yet. The token's
        audience is the API server's own (its issuer), so it authenticates to this server.
        With ``pod`` (an existing pod of that namespace running as that ServiceAccount) the
        token is bound to the pod, as the kubelet's are: the API server then adds the pod's
        node to the token's user info (``authentication.kubernetes.io/node-name``) and stops
        accepting the token once the pod is gone.
        """
        with self.api_client() as client:
            core = k8s.CoreV1Api(client)
            try:
                core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
            except ApiException as exc:
                if exc.status != 409:  # 409: already exists
                    raise
            try:
                core.create_namespaced_service_account(
                    namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=service_account))
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
            bound = None
            if pod is not None:
                meta = core.read_namespaced_pod(pod, namespace).metadata
                uid = meta.uid if meta is not None else None
                bound = k8s.V1BoundObjectReference(api_version="v1", kind="Pod", name=pod, uid=uid)
            request = k8s.AuthenticationV1TokenRequest(
                spec=k8s.V1TokenRequestSpec(
                    audiences=[], expiration_seconds=expiration_seconds, bound_object_ref=bound
                )
            )
            resp = core.create_namespaced_service_account_token(service_account, namespace, request)
        token = resp.status.token if resp.status is not None else None
        if not token:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{service_account} gave no token")
        return token

    def kubectl(
        self, *args: str, token: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this server (admin kubeconfig, or ``--token`` with the CA only).

        Raises:
            ControlPlaneError: no kubectl is available.
        """
        kubectl = self.kubectl_path
        if kubectl is None:
            raise ControlPlaneError("no kubectl in the testenv bin directory or on PATH")
        if token is None:
            conn = [f"--kubeconfig={self.kubeconfig}"]
        else:
            # An empty kubeconfig so the admin certificate is not sent along with the token.
            empty = self.dir / "empty.kubeconfig"
            if not empty.exists():
                empty.write_text("apiVersion: v1\nkind: Config\n")
            conn = [
                f"--kubeconfig={empty}",
                f"--server={self.url}",
                f"--certificate-authority={self.ca_file}",
                f"--token={token}",
            ]
        return subprocess.run(
            [kubectl, *conn, *args], capture_output=True, text=True, check=check, timeout=60
        )

    def readyz(self) -> bool:
        """Whether kube-apiserver answers /readyz with 200 now."""
        with contextlib.suppress(ControlPlaneError):
            return self._dir is not None and self._probe_apiserver() is None
        return False


def _main() -> None:  # pragma: no cover - manual smoke test
    """``python -m controller.testing.apiserver``: start, print the kubeconfig, wait for Ctrl-C."""
    with TestControlPlane() as cp:
        print(f"KUBECONFIG={cp.kubeconfig}  url={cp.url}  (Ctrl-C stops)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":  # pragma: no cover
    _main()
