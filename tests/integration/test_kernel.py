"""The kernel adapter and ``nftpolicy apply`` against real nf_tables in scratch namespaces."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.agent.kernel import Kernel, KernelError
from controller.agent.netns import NetnsError
from controller.testing.netns import unavailable_reason

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture
def scratch_netns() -> Iterator[str]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    name = f"npk-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _table(name: str, chain: str) -> dict[str, object]:
    t = {"family": "inet", "name": "nftpolicy"}
    return {
        "nftables": [
            {"add": {"table": t}},
            {"delete": {"table": t}},
            {"add": {"table": t}},
            {"add": {"chain": {"family": "inet", "table": "nftpolicy", "name": chain}}},
        ]
    }


def _chains(kernel: Kernel) -> set[str]:
    doc = kernel.read()
    assert doc is not None
    return {o["chain"]["name"] for o in doc["nftables"] if "chain" in o}


def test_apply_read_replace_remove(scratch_netns: str) -> None:
    kernel = Kernel(scratch_netns)
    assert kernel.read() is None
    assert kernel.remove() is False
    kernel.apply(_table("nftpolicy", "first"))
    assert _chains(kernel) == {"first"}
    kernel.apply(_table("nftpolicy", "second"))  # replaces, nothing of the old table is left
    assert _chains(kernel) == {"second"}
    assert Kernel().read() is None or "second" not in str(Kernel().read())  # not in our own netns
    assert kernel.remove() is True
    assert kernel.read() is None


def test_failed_transaction_leaves_the_old_table(scratch_netns: str) -> None:
    kernel = Kernel(scratch_netns)
    kernel.apply(_table("nftpolicy", "good"))
    bad = _table("nftpolicy", "bad")
    bad["nftables"].append(  # type: ignore[attr-defined]
        {
            "add": {
                "rule": {
                    "family": "inet",
                    "table": "nftpolicy",
                    "chain": "bad",
                    "expr": [{"queue": {"num": 1}}],
                }
            }
        }
    )
    with pytest.raises(KernelError) as err:
        kernel.apply(bad)
    # this kernel has no nft queue expression: the message says a feature is missing
    assert "nftables transaction failed" in str(err.value)
    assert "hint:" in str(err.value)
    assert _chains(kernel) == {"good"}


def test_feature_probe_names_what_the_kernel_lacks(scratch_netns: str) -> None:
    kernel = Kernel(scratch_netns)
    assert kernel.missing_features() == []  # everything the renderer uses is here
    queue = {
        "queue (nft_queue)": [
            {"add": {"chain": {"family": "inet", "table": "nftpolicy-feature-probe", "name": "q"}}},
            {
                "add": {
                    "rule": {
                        "family": "inet",
                        "table": "nftpolicy-feature-probe",
                        "chain": "q",
                        "expr": [{"queue": {"num": 1}}],
                    }
                }
            },
        ]
    }
    assert kernel.missing_features(queue) == ["queue (nft_queue)"]  # this kernel has no queue
    tables = subprocess.run(
        ["ip", "netns", "exec", scratch_netns, "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert tables == ""  # dry runs left nothing behind


def test_missing_netns_is_a_clear_error() -> None:
    with pytest.raises(NetnsError, match="network namespace 'npk-does-not-exist' not found"):
        Kernel("npk-does-not-exist").read()


def test_missing_bindings_is_a_clear_error() -> None:
    code = (
        "import sys; sys.modules['nftables'] = None\n"
        "from controller.agent.kernel import Kernel, NftablesUnavailable\n"
        "try:\n    Kernel().read()\nexcept NftablesUnavailable as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "python nftables bindings are not installed" in out and "pip-nftables" in out


def apply_examples(netns_name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "apply",
            "-f",
            str(EXAMPLES),
            "--node",
            "node-1",
            "--netns",
            netns_name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_apply_into_a_netns(scratch_netns: str) -> None:
    result = apply_examples(scratch_netns)
    assert result.returncode == 0, result.stderr
    listing = subprocess.run(
        ["ip", "netns", "exec", scratch_netns, "nft", "list", "table", "inet", "nftpolicy"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert 'comment "shop/web-1"' in listing and "hook forward" in listing


def test_cli_apply_reports_kernel_errors_without_traceback() -> None:
    result = apply_examples("npk-missing")
    assert result.returncode == 1
    assert (
        "Traceback" not in result.stderr
        and "network namespace 'npk-missing' not found" in result.stderr
    )
