"""libnftables never resolves a name for the agent: a ruleset with a host name where an address
belongs is refused, and no DNS query leaves.

The check runs in a scratch network namespace and a private mount namespace whose
``/etc/resolv.conf`` names a resolver on that namespace's 127.0.0.1, where a UDP socket counts
the queries it receives (and never answers). ``localhost`` is in ``/etc/hosts``: a library left
to resolve it would enforce 127.0.0.1 without sending anything, hence both kinds of name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.testing.netns import unavailable_reason

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, socket, sys
from controller.agent.kernel import Kernel, KernelError

name = sys.argv[1]
dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dns.bind(("127.0.0.1", 53))
dns.setblocking(False)
table = {"family": "inet", "name": "nftpolicy"}
chain = {"family": "inet", "table": "nftpolicy", "name": "c"}
match = {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": name}}
ruleset = {"nftables": [
    {"add": {"table": table}},
    {"add": {"chain": chain}},
    {"add": {"rule": {**chain, "chain": "c", "expr": [match, {"accept": None}]}}},
]}
try:
    Kernel().apply(ruleset)
    outcome = "applied"
except KernelError as e:
    outcome = str(e)
queries = 0
while True:
    try:
        dns.recv(4096)
    except BlockingIOError:
        break
    queries += 1
print(json.dumps({"outcome": outcome, "queries": queries, "table": Kernel().read()}))
"""


@pytest.fixture
def scratch_netns() -> Iterator[str]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    name = f"npd-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.parametrize("name", ["localhost", "nftpolicy-probe.example"])
def test_a_host_name_is_refused_not_resolved(scratch_netns: str, tmp_path: Path, name: str) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    inner = f"ip netns exec {scratch_netns} {sys.executable} {script} {name}"
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount --bind {resolv} /etc/resolv.conf && exec {inner}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["queries"] == 0, result  # not one DNS packet
    assert result["table"] is None, result  # nothing was applied
    assert "never resolves names" in result["outcome"], result
    assert repr(name) in result["outcome"], result
