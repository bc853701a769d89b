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
    # The DNS allowance leads to the cluster's DNS only: the examples have no kube-dns pod, so
    # none (fail closed; port 53 of every address was open before issue 9).
    assert ". udp . 53" not in with_deny
    args = ["compile", "-f", str(EXAMPLES), "--node", "node-2", "--format", "nft"]
    assert main([*args, "--default-deny", "all", "--dns-address", "169.254.20.10"]) == 0
    with_resolver = capsys.readouterr().out
    assert "169.254.20.10 . udp . 53" in with_resolver
    assert "169.254.20.10 . tcp . 53" in with_resolver
    assert main([*args, "--default-deny", "all", "--dns-pod-selector", "k8s-app"]) == 2
    assert "--dns-pod-selector: 'k8s-app' is not key=value" in capsys.readouterr().err
    assert (
        main(["compile", "-f", str(EXAMPLES), "--node", "node-2", "--default-deny", "sideways"])
        == 2
    )


# ---- strict like kubectl apply: one line, exit 2, never a traceback -----------------------------

NP = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n"
POD = "kind: Pod\nmetadata: {name: a, namespace: x}\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            NP + "spec: {podSelector: {}, ingress: [{form: [{podSelector: {}}]}]}\n",
            "NetworkPolicy x/p: spec.ingress[0].form: unknown field (did you mean 'from'?)",
        ),
        (
            NP + "spec: {podSelector: {}, egress: [{Ports: [{port: 80}]}]}\n",
            "NetworkPolicy x/p: spec.egress[0].Ports: unknown field (did you mean 'ports'?)",
        ),
        (
            POD + "spec: {hostNetwork: 'false', nodeName: n1}\n",
            "Pod x/a: spec.hostNetwork: must be a boolean, got 'false'",
        ),
        (
            'kind: Pod\nmetadata: {name: a, namespace: x, labels: {app: "web\\n"}}\n',
            "Pod x/a: metadata.labels.app: invalid label value 'web\\n'",
        ),
        (NP + "spec: {podSelector: {}}\nstatus: {}\n", "NetworkPolicy x/p: status: unknown field"),
        ("kind: [NetworkPolicy]\nmetadata: {name: p}\n", "object p: kind: unsupported kind a list"),
        ("kind: {a: b}\nmetadata: {name: p}\n", "object p: kind: unsupported kind an object"),
        (
            'kind: Namespace\nmetadata: {name: "a\\ud800"}\n',
            "Namespace <invalid name>: metadata.name: contains a lone surrogate",
        ),
        (
            "kind: Namespace\nmetadata: {name: a}\nspec: " + "[" * 3000 + "]" * 3000,
            "nested too deeply",
        ),
        (
            POD + "spec: {containers: [{ports: [{containerPort: " + "9" * 5000 + "}]}]}\n",
            "not valid YAML: Exceeds the limit (4300 digits) for integer string conversion",
        ),
        (
            POD + "spec: {containers: [{ports: [{containerPort: 99999999999}]}]}\n",
            "Pod x/a: spec.containers[0].ports[0].containerPort: must be a 32-bit integer",
        ),
        ("a: [unclosed\n", "bad.yaml: not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ],
)
def test_what_kubectl_apply_refuses_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content, errors="surrogatepass")
    assert main(["compile", "-f", str(path), "--node", "n1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {path}"), err
    assert expected in err


def test_a_bad_annotation_is_a_warning_and_the_namespace_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ns.yaml"
    path.write_text(
        "kind: Namespace\n"
        "metadata: {name: x, annotations: {nftpolicy.io/default-deny: sometimes}}\n"
        "---\n"
        "kind: Pod\n"
        "metadata: {name: a, namespace: x}\n"
        "spec: {nodeName: n1}\n"
        "status: {phase: Running, podIP: 10.244.1.10}\n"
    )
    assert main(["compile", "-f", str(path), "--node", "n1"]) == 0
    _, err = capsys.readouterr()
    assert err == (
        f"warning: {path} (document 1): Namespace x: "
        "metadata.annotations[nftpolicy.io/default-deny]: unknown value 'sometimes' "
        "(want ingress, egress or all); ignored (no default deny)\n"
    )


def test_debug_logging_keeps_pyroute2_at_info() -> None:
    """Catches: pyroute2 logging every netlink message at debug (thousands of lines per
    conntrack pass). pyroute2 resets its logger level when first imported, so this runs in a
    fresh interpreter where the agent's own import order applies."""
    code = (
        "import logging\n"
        "from controller.cli import configure_logging\n"
        "configure_logging('debug')\n"
        "import pyroute2.netlink.core\n"
        "print(logging.getLogger('pyroute2.netlink.core').isEnabledFor(logging.DEBUG),"
        " logging.getLogger('controller.agent').isEnabledFor(logging.DEBUG))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "True"]
