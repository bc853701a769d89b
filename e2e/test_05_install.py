"""The installed image runs with no more privilege than the chart grants.

Read from ``/proc/1/status`` inside each running container (what the kernel gives the process,
whatever the image, the chart or the runtime meant): the operator runs as a non-root user with
no capability at all; the agent runs with exactly the capabilities its DaemonSet adds, in the
bounding set too, and cannot gain more (no_new_privs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from e2e import install
from e2e.cluster import Kubectl, Model, pods, ready

# include/uapi/linux/capability.h: the capabilities a chart might grant the agent.
CAPABILITY_BITS = {"NET_ADMIN": 12, "NET_RAW": 13, "NET_BIND_SERVICE": 10, "SYS_ADMIN": 21}


def process_status(k: Kubectl, pod: Mapping[str, Any], container: str) -> dict[str, str]:
    name = pod["metadata"]["name"]
    out = k.run(
        "-n", install.NAMESPACE, "exec", name, "-c", container, "--", "cat", "/proc/1/status"
    ).stdout
    return {
        key: value.strip() for key, _, value in (line.partition(":") for line in out.splitlines())
    }


def mask(names: list[str]) -> int:
    unknown = [n for n in names if n not in CAPABILITY_BITS]
    assert not unknown, f"the chart grants capabilities this test does not know: {unknown}"
    return sum(1 << CAPABILITY_BITS[n] for n in names)


def granted(pod: Mapping[str, Any], container: str) -> list[str]:
    """The capabilities the pod's spec (the chart's DaemonSet template) adds to ``container``."""
    (c,) = [c for c in pod["spec"]["containers"] if c["name"] == container]
    caps = (c.get("securityContext") or {}).get("capabilities") or {}
    assert caps.get("drop") == ["ALL"], f"{container} does not drop ALL capabilities: {caps}"
    return list(caps.get("add") or [])


def test_operator_runs_as_non_root_without_capabilities(nftpolicy: Model, k: Kubectl) -> None:
    operators = [p for p in pods(k, install.OPERATOR_SELECTOR) if ready(p)]
    assert operators
    for pod in operators:
        status = process_status(k, pod, "operator")
        uids = status["Uid"].split()
        assert uids[0] != "0" and len(set(uids)) == 1, f"operator runs as uid {status['Uid']}"
        for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[key], 16) == 0, f"operator has {key} {status[key]}"
        assert status["NoNewPrivs"] == "1"


def test_agent_has_only_the_capabilities_the_chart_grants(nftpolicy: Model, k: Kubectl) -> None:
    agents = [p for p in pods(k, install.AGENT_SELECTOR) if ready(p)]
    assert agents
    for pod in agents:
        want = mask(granted(pod, "agent"))
        assert want, "the chart grants the agent nothing: it could not program nftables"
        status = process_status(k, pod, "agent")
        for key in ("CapPrm", "CapEff", "CapBnd"):
            got = int(status[key], 16)
            assert got == want, f"agent {key} {got:#x}, the chart grants {want:#x}"
        assert int(status["CapAmb"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        print(
            f"{pod['metadata']['name']}: uid {status['Uid'].split()[0]}, CapEff {status['CapEff']}"
        )
