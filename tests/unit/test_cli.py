"""The command line: outputs, and bad input -> exit 2 with one clear line, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import main

EXAMPLES = Path(__file__).parents[2] / "examples"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True, check=False
    )


def test_compile_json_is_a_libnftables_document() -> None:
    result = run("compile", "-f", str(EXAMPLES), "--node", "node-2")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    tables = [c["add"]["table"] for c in doc["nftables"] if "table" in c.get("add", {})]
    assert tables and tables[0] == {"family": "inet", "name": "nftpolicy"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}\n",
            "bad.yaml: NetworkPolicy x/p: spec.ingress[0].ports[0].port: must be 1-65535, got 0",
        ),
        (
            "kind: Pod\nmetadata: {name: a}\nstatus: {podIP: nope}\n",
            "bad.yaml: Pod default/a: status.podIP: invalid IP address 'nope'",
        ),
        ("a: [unclosed\n", "bad.yaml: not valid YAML"),
        ("- just\n- a list\n", "bad.yaml: expected a Kubernetes object, got list"),
        ("kind: Deployment\nmetadata: {name: d}\n", "unsupported kind 'Deployment'"),
        (
            "---\nkind: Namespace\nmetadata: {name: x}\n---\nkind: Namespace\nmetadata: {}\n",
            "bad.yaml (document 2): Namespace <unnamed>: metadata.name: is required",
        ),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    tmp_path: Path, content: str, expected: str
) -> None:
    (tmp_path / "bad.yaml").write_text(content)
    result = run("compile", "-f", str(tmp_path / "bad.yaml"), "--node", "n1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert expected in result.stderr, result.stderr
    assert result.stdout == ""


def test_missing_path_and_unknown_node(tmp_path: Path) -> None:
    missing = run("compile", "-f", str(tmp_path / "nope.yaml"), "--node", "n1")
    assert missing.returncode == 2 and "nope.yaml: no such file or directory" in missing.stderr
    unknown = run("compile", "-f", str(EXAMPLES), "--node", "node-9")
    assert unknown.returncode == 2
    assert (
        "node 'node-9' has no Node object" in unknown.stderr and "node-1, node-2" in unknown.stderr
    )


def test_default_deny_flag_isolates_unselected_pods(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", "-f", str(EXAMPLES), "--node", "node-2", "--format", "nft"]) == 0
    without = capsys.readouterr().out
    assert "monitoring/prometheus-0" not in without
    assert (
        main(
            [
                "compile",
                "-f",
                str(EXAMPLES),
                "--node",
                "node-2",
                "--format",
                "nft",
                "--default-deny",
                "all",
            ]
        )
        == 0
    )
    with_deny = capsys.readouterr().out
    assert 'comment "monitoring/prometheus-0"' in with_deny
    assert ". udp . 53" in with_deny  # the DNS allowance
    assert (
        main(["compile", "-f", str(EXAMPLES), "--node", "node-2", "--default-deny", "sideways"])
        == 2
    )
