"""Helpers shared by the test-environment runners (``apiserver.py``, ``cluster.py``).

A certificate authority driven by the openssl CLI (no Python crypto dependency: openssl is on
every machine these runners need), kubeconfig documents, free loopback ports, log tails and
the API server's readiness probe.
"""

from __future__ import annotations

import base64
import http.client
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CertSpec",
    "CertificateAuthority",
    "PkiError",
    "free_port",
    "kubeconfig",
    "probe_readyz",
    "tail",
]

LOG_TAIL_LINES = 40


def probe_readyz(port: int, ca: Path, cert: Path, key: Path) -> str | None:
    """GET https://127.0.0.1:``port``/readyz with a client certificate: None when ready, else
    one line saying why not (the failing checks, or the connection error)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", "/readyz")
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return f"GET /readyz: {exc or type(exc).__name__}"
    finally:
        conn.close()
    if resp.status == 200:
        return None
    failing = [ln for ln in body.splitlines() if "failed" in ln]
    return f"GET /readyz: {resp.status} {'; '.join(failing)[:300] or body.strip()[:300]}"


class PkiError(RuntimeError):
    """openssl is missing or one of its commands failed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def kubeconfig(
    server: str,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    *,
    cluster: str,
    user: str,
) -> dict[str, Any]:
    """A single-context kubeconfig with the CA and client certificate embedded, so the file
    works from anywhere (no paths to keep in sync)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(cert_pem),
                    "client-key-data": b64(key_pem),
                },
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }


@dataclass(frozen=True)
class CertSpec:
    """One certificate to issue: files ``<name>.crt``/``<name>.key``, its subject and uses.

    Kubernetes authenticates client certificates by subject: CN is the user name, each O a
    group (``system:masters``, ``system:nodes``). Servers are verified by their SANs.
    """

    name: str
    common_name: str
    organization: str | None = None
    server: bool = False
    client: bool = False
    dns_names: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()

    def subject(self) -> str:
        """The ``-subj`` argument of ``openssl req``."""
        org = f"/O={self.organization}" if self.organization else ""
        return f"{org}/CN={self.common_name}"

    def extensions(self) -> str:
        """The openssl extension section (``[ext]``) for this certificate."""
        usages = [u for u, on in (("serverAuth", self.server), ("clientAuth", self.client)) if on]
        if not usages:
            raise ValueError(f"certificate {self.name}: neither server nor client")
        lines = [
            "[ext]",
            "basicConstraints = critical,CA:FALSE",
            "keyUsage = critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage = {','.join(usages)}",
            "subjectKeyIdentifier = hash",
            "authorityKeyIdentifier = keyid",
        ]
        sans = [f"DNS:{d}" for d in self.dns_names] + [f"IP:{ip}" for ip in self.ips]
        if sans:
            lines.append(f"subjectAltName = {','.join(sans)}")
        return "\n".join(lines) + "\n"


_REQ_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
"""


class CertificateAuthority:
    """A CA in ``directory`` (``ca.crt``/``ca.key``) that issues P-256 certificates, plus the
    RSA service-account key pair; everything made with the openssl CLI, valid ``days``."""

    def __init__(self, directory: Path, common_name: str, *, days: int = 30) -> None:
        self.dir = directory
        self.common_name = common_name
        self.days = days
        self.crt = directory / "ca.crt"
        self.key = directory / "ca.key"
        self._cnf = directory / "openssl.cnf"
        self._serial = 1

    def _openssl(self, *args: str) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise PkiError("the openssl command is needed to make test certificates")
        proc = subprocess.run(
            [openssl, *args], cwd=self.dir, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise PkiError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")

    def _ec_key(self, path: Path) -> None:
        self._openssl(
            "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
        )
        path.chmod(0o600)

    def create(self) -> None:
        """Make the self-signed CA certificate and its key."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._cnf.write_text(_REQ_CNF)
        self._ec_key(self.key)
        self._openssl(
            "req", "-new", "-x509", "-config", str(self._cnf), "-extensions", "ca",
            "-key", str(self.key), "-subj", f"/CN={self.common_name}",
            "-days", str(self.days), "-sha256", "-out", str(self.crt),
        )  # fmt: skip

    def issue(self, spec: CertSpec) -> tuple[Path, Path]:
        """Issue ``spec``'s certificate; returns the certificate and key paths."""
        crt, key = self.dir / f"{spec.name}.crt", self.dir / f"{spec.name}.key"
        csr, ext = self.dir / f"{spec.name}.csr", self.dir / f"{spec.name}.ext"
        ext.write_text(spec.extensions())
        self._ec_key(key)
        self._openssl(
            "req", "-new", "-config", str(self._cnf), "-key", str(key),
            "-subj", spec.subject(), "-out", str(csr),
        )  # fmt: skip
        self._serial += 1
        self._openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.crt), "-CAkey", str(self.key),
            "-set_serial", str(self._serial), "-days", str(self.days), "-sha256",
            "-extfile", str(ext), "-extensions", "ext", "-out", str(crt),
        )  # fmt: skip
        csr.unlink()
        ext.unlink()
        return crt, key

    def service_account_keys(self, name: str = "sa") -> tuple[Path, Path]:
        """An RSA key pair for signing service-account tokens (``<name>.key``, ``<name>.pub``).

        RS256 is what every token consumer supports; one key signs, its public half verifies.
        """
        key, pub = self.dir / f"{name}.key", self.dir / f"{name}.pub"
        self._openssl(
            "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)
        )
        key.chmod(0o600)
        self._openssl("pkey", "-in", str(key), "-pubout", "-out", str(pub))
        return key, pub
