"""Failure tests: enforcement must survive dying agents, operators and API servers.

Tests 1-5 keep a ``Monitor`` probing a fixed matrix with real TCP connections, back to back,
for the whole test, and judge every probe round against the expectation in force when the
round started (test 6 follows long-lived connections instead):

* before a change (and during a failure that changes nothing) every round must equal the
  expected matrix exactly: an enforced policy stays enforced and nothing allowed is cut;
* in the ``bound`` seconds after a change a probe may show its old or its new verdict, but once
  it has shown the new one it must not fall back (no flapping); a probe whose verdict the change
  does not touch must keep it throughout, so a probe that should be denied never succeeds;
* from ``since + bound`` on, every round must equal the new matrix.

``bound`` is the convergence bound of the situation: ``CONVERGENCE`` from an API write while
everything runs, otherwise the bounds below, counted from the moment the component is back.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, cast

import pytest

from controller.agent.kernel import Kernel
from controller.resources import ADDRESS_GROUPS, GROUP, NODE_RULES, VERSION
from controller.testing.apiserver import TestControlPlane
from controller.testing.netns import NetnsCluster, Probe
from tests.integration.live import Live, two_nodes, wait_log

pytestmark = pytest.mark.integration

A, B, C = "10.101.0.10", "10.102.0.11", "10.101.0.12"
PROBE_TIMEOUT = 0.5  # a denied TCP probe is a dropped SYN: no answer within this
CONVERGENCE = 5.0  # API write -> enforced on every node, everything running
DRIFT_BOUND = 2.0 + 1.5  # the agent's drift check period plus margin
AGENT_START_BOUND = 10.0  # agent process started -> its node enforces the current state
OPERATOR_START_BOUND = 15.0  # operator process started -> changes made meanwhile enforced
LEASE_DURATION = 15.0
TAKEOVER_BOUND = LEASE_DURATION + 5.0  # leader killed -9 -> standby publishes
HANDOVER_BOUND = 4.0  # leader stopped (SIGTERM, releases the lease) -> standby publishes
# API server back -> a change written then is enforced. Informers retry with capped
# exponential backoff (controller/kube/informer.py), so a watch may resume only after one more
# retry interval.
API_RESUME_BOUND = 10.0
ECHO_PORT = 8080  # socat echo server for long-lived connections (podagent closes at once)


# ---- probing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    start: float
    end: float
    got: tuple[bool, ...]


@dataclass
class Phase:
    label: str
    since: float
    expected: tuple[bool, ...]
    bound: float
    tolerated: tuple[frozenset[bool], ...]  # acceptable verdicts before since + bound
    previous: tuple[bool, ...]
    monotonic: bool  # once a probe shows its new verdict it must keep it


class Monitor:
    """Probes back to back in a thread; ``violations()`` judges every round (module doc)."""

    def __init__(self, live: Live, probes: Sequence[Probe], expected: Sequence[bool]) -> None:
        self.live = live
        self.probes = list(probes)
        self.t0 = time.monotonic()
        exp = tuple(expected)
        self.phases = [
            Phase("start", -math.inf, exp, 0.0, tuple(frozenset([e]) for e in exp), exp, False)
        ]
        self.rounds: list[Round] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                got = tuple(self.live.net.probe_many(self.probes, PROBE_TIMEOUT))
            except Exception as e:  # reported by violations()
                self.errors.append(f"{start - self.t0:.2f}: {e!r}")
                time.sleep(0.1)
                continue
            with self._lock:
                self.rounds.append(Round(start, time.monotonic(), got))

    def expect(
        self,
        expected: Sequence[bool],
        bound: float,
        label: str,
        since: float | None = None,
        transient: Sequence[frozenset[bool]] | None = None,
    ) -> Phase:
        """From ``since`` (default: now; call it *before* causing the change) the matrix moves
        to ``expected`` within ``bound`` seconds. ``transient`` replaces the default "old or
        new" tolerance (and the no-flapping rule) inside the bound."""
        previous = self.phases[-1].expected
        exp = tuple(expected)
        tolerated = (
            tuple(transient)
            if transient is not None
            else tuple(frozenset([p, e]) for p, e in zip(previous, exp, strict=True))
        )
        phase = Phase(
            label,
            time.monotonic() if since is None else since,
            exp,
            bound,
            tolerated,
            previous,
            transient is None,
        )
        with self._lock:
            self.phases.append(phase)
        return phase

    def wait(self, phase: Phase, slack: float = 2.0) -> float:
        """Wait for the first round started after ``phase.since`` that equals its matrix;
        returns its start, in seconds after ``since`` (the measured convergence time)."""
        deadline = phase.since + phase.bound + slack
        seen = 0
        while time.monotonic() < deadline:
            with self._lock:
                rounds = self.rounds[seen:]
                seen = len(self.rounds)
            for r in rounds:
                if r.start >= phase.since and r.got == phase.expected:
                    return r.start - phase.since
            time.sleep(0.05)
        raise AssertionError(f"{phase.label}: not converged\n{self.report()}")

    def hold(self, seconds: float) -> None:
        """Let the monitor watch for ``seconds`` (failing early on a violation)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.1)
        assert not self.violations(), self.report()

    def rounds_after_bound(self) -> int:
        last = self.phases[-1]
        with self._lock:
            return sum(r.start >= last.since + last.bound for r in self.rounds)

    def settle(self, rounds: int = 3) -> None:
        """Wait until ``rounds`` rounds started after the last phase's bound."""
        last = self.phases[-1]
        deadline = max(time.monotonic(), last.since + last.bound) + rounds * 3 + 5
        while self.rounds_after_bound() < rounds and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.rounds_after_bound() >= rounds, "the monitor stopped probing"

    def _phase_at(self, t: float) -> int:
        return max(i for i, p in enumerate(self.phases) if p.since <= t)

    def _judge(
        self, i: int, r: Round, shown: dict[int, set[int]], strict_only: bool = False
    ) -> list[str]:
        p = self.phases[i]
        if r.start >= p.since + p.bound:
            if r.got != p.expected:
                wrong = [
                    k for k, (g, e) in enumerate(zip(r.got, p.expected, strict=True)) if g != e
                ]
                return [f"{p.label}: after the bound probes {wrong} got {r.got}, want {p.expected}"]
            return []
        if strict_only:
            return ["not after the bound"]
        issues = []
        for k, got in enumerate(r.got):
            if got not in p.tolerated[k]:
                issues.append(f"{p.label}: probe {k} {self.probes[k]} got {got}")
            elif p.monotonic and p.expected[k] != p.previous[k]:
                if got == p.expected[k]:
                    shown.setdefault(i, set()).add(k)
                elif k in shown.get(i, set()):
                    issues.append(f"{p.label}: probe {k} {self.probes[k]} flapped back to {got}")
        return issues

    def violations(self) -> list[str]:
        with self._lock:
            rounds = list(self.rounds)
        out = [f"probe error at {e}" for e in self.errors]
        shown: dict[int, set[int]] = {}
        for r in rounds:
            i = self._phase_at(r.start)
            issues = self._judge(i, r, shown)
            # A round that straddles the start of the next phase may already see its effect.
            if issues and i + 1 < len(self.phases) and self.phases[i + 1].since < r.end:
                issues = self._judge(i + 1, r, {})
            out += [f"t={r.start - self.t0:6.2f}s {issue}" for issue in issues]
        return out

    def report(self) -> str:
        lines = [f"probes: {self.probes}"]
        for p in self.phases[1:]:
            lines.append(
                f"phase {p.label!r} at t={p.since - self.t0:.2f}s bound {p.bound}s: {p.expected}"
            )
        with self._lock:
            lines += [
                f"  t={r.start - self.t0:6.2f}..{r.end - self.t0:6.2f} {r.got}" for r in self.rounds
            ]
        lines += self.violations()[:40]
        lines += [f"--- {n}\n{self.live.log(n)[-4000:]}" for n in self.live.processes]
        return "\n".join(lines)

    def assert_ok(self, rounds_after_bound: int = 3) -> None:
        self.settle(rounds_after_bound)
        assert not self.violations(), self.report()


# ---- kernel, API objects, logs, long-lived connections ----------------------------------------


def _normalize(value: Any) -> Any:
    """A listed table without handles, counter values and metainfo (which change by themselves)."""
    if isinstance(value, dict):
        return {
            k: (None if k == "counter" else _normalize(v))
            for k, v in value.items()
            if k != "handle"
        }
    if isinstance(value, list):
        return [_normalize(v) for v in value if not (isinstance(v, dict) and "metainfo" in v)]
    return value


def table_state(netns: str) -> str | None:
    state = Kernel(netns).read()
    return None if state is None else repr(_normalize(state))


class TableSampler:
    """Reads our table in one namespace every few milliseconds, recording each distinct state:
    an agent that flushed or replaced the table with something else, however briefly, shows
    up here even when no probe happened to be in flight."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.states: list[tuple[float, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="table-sampler", daemon=True)

    def __enter__(self) -> TableSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            state = table_state(self.netns)
            if not self.states or self.states[-1][1] != state:
                self.states.append((time.monotonic(), state))
            time.sleep(0.005)


Snapshot = dict[tuple[str, str], tuple[str, str, int]]  # (plural, name) -> uid, rv, generation


def published(live: Live) -> Snapshot:
    out: Snapshot = {}
    for plural in (ADDRESS_GROUPS, NODE_RULES):
        result = cast(
            dict[str, Any], live.custom.list_cluster_custom_object(GROUP, VERSION, plural)
        )
        for item in result["items"]:
            meta = item["metadata"]
            out[(plural, meta["name"])] = (
                meta["uid"],
                meta["resourceVersion"],
                int(meta.get("generation", 0)),
            )
    return out


def settled(live: Live, quiet: float = 1.0, timeout: float = 30.0) -> Snapshot:
    """The published objects once nothing has written them for ``quiet`` seconds (agents
    report status after their applies; on a busy machine that can take a while)."""
    deadline = time.monotonic() + timeout
    snap = published(live)
    while True:
        time.sleep(quiet)
        again = published(live)
        if again == snap:
            return snap
        assert time.monotonic() < deadline, "published objects kept changing"
        snap = again


def compare(before: Snapshot, after: Snapshot, max_bumps: int) -> list[str]:
    """Objects deleted (or deleted and re-created) or written more than ``max_bumps`` times."""
    problems = []
    for key, (uid, _rv, gen) in before.items():
        if key not in after:
            problems.append(f"{key} deleted")
        elif after[key][0] != uid:
            problems.append(f"{key} deleted and re-created")
        elif not 0 <= after[key][2] - gen <= max_bumps:
            problems.append(f"{key} generation {gen} -> {after[key][2]}")
    return problems


def logged_at(live: Live, name: str, needle: str, offset: int = 0) -> float:
    """The wall-clock time (``time.time()``) of the first log line containing ``needle``."""
    for line in live.log(name)[offset:].splitlines():
        if needle in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise AssertionError(f"{name} did not log {needle!r}")


def log_size(live: Live, name: str) -> int:
    return len(live.log(name))


class EchoServer:
    """``socat`` echoing every TCP connection on ``port`` inside a pod's namespace."""

    def __init__(self, netns: str, port: int = ECHO_PORT) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "socat", f"TCP-LISTEN:{port},reuseaddr,fork", "PIPE"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the forked children go with it
        )

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class EchoClient:
    """One long-lived TCP connection (``socat`` in a pod's namespace); ``ping`` round-trips a
    line through it."""

    def __init__(self, netns: str, dst: str, port: int = ECHO_PORT) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "socat", "-", f"TCP:{dst}:{port},connect-timeout=2"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.count = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def ping(self, timeout: float = 1.0) -> bool:
        self.count += 1
        message = f"ping {self.count}\n".encode()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(message)
            self.proc.stdin.flush()
        except BrokenPipeError:
            return False
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                if self.lines.get(timeout=left) == message:
                    return True
            except queue.Empty:
                break
        return False

    def close(self) -> None:
        stdin: IO[bytes] | None = self.proc.stdin
        if stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
        self.proc.kill()
        self.proc.wait()


def connect(netns: str, dst: str, attempts: int = 20) -> EchoClient:
    """A connection that has answered a first ping (the server may still be starting; on a
    busy machine starting ``socat`` in a namespace alone can take seconds)."""
    for _ in range(attempts):
        client = EchoClient(netns, dst)
        if client.ping(10.0):
            return client
        client.close()
        time.sleep(0.2)
    raise AssertionError(f"no echo connection from {netns} to {dst}:{ECHO_PORT}")


# ---- the cluster ------------------------------------------------------------------------------


@pytest.fixture
def live(
    control_plane: TestControlPlane, netns_cluster: NetnsCluster, tmp_path: Path
) -> Iterator[Live]:
    """Nodes n1 (pods a, c) and n2 (pod b); no operator or agent is started yet."""
    pods = [("a", 1, A, {"app": "a"}), ("b", 2, B, {"app": "b"}), ("c", 1, C, {"app": "c"})]
    try:
        with two_nodes(control_plane, netns_cluster, tmp_path, pods, {"team": "a"}) as live:
            yield live
    finally:
        if not control_plane.readyz():  # a test failed while the API server was down
            control_plane.restart_apiserver()


def node_names(live: Live) -> tuple[str, str]:
    return f"{live.ns}-n1", f"{live.ns}-n2"


def ingress_only_from(name: str, target: str, source: str, ns: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": {"app": target}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": source}}}]}],
        },
    }


def start_everything(live: Live, operators: Sequence[str] = ("operator",)) -> None:
    for name in operators:
        live.start_operator(name)
    for node in node_names(live):
        live.start_agent(node)


def enforce_a_from_b(live: Live, probes: Sequence[Probe], expected: Sequence[bool]) -> None:
    """Wait until an operator publishes and every agent has applied its rules, then apply the
    base policy (a accepts only b) and wait until ``expected`` holds."""
    operators = [n for n in live.processes if not n.startswith("agent-")]
    deadline = time.monotonic() + 30
    while not any("leading:" in live.log(n) for n in operators):
        assert time.monotonic() < deadline, "no operator started publishing"
        time.sleep(0.1)
    for node in node_names(live):
        wait_log(live, f"agent-{node}", "applied generation", timeout=30)
    live.wait_for(probes, [True] * len(probes), timeout=10)  # nothing enforced yet
    live.apply_policy(live.ns, ingress_only_from("a-from-b", "a", "b", live.ns))
    live.wait_for(probes, expected, timeout=CONVERGENCE)


def noderules_generation(live: Live, node: str) -> int:
    body = cast(
        dict[str, Any], live.custom.get_cluster_custom_object(GROUP, VERSION, NODE_RULES, node)
    )
    return int(body["metadata"]["generation"])


def pod_netns(live: Live, name: str) -> str:
    return live.net.pod(live.ns, name).netns


# ---- 1. agent killed -9 during an apply ---------------------------------------------------------


def test_agent_killed_during_apply_keeps_enforcing_and_resumes(live: Live) -> None:
    """Catches: an agent that removes or flushes the table when it dies or restarts (the
    denied probe c->a would succeed, the sampler would see another table), a restarted agent
    that applies before it has listed everything (a partial table), and one that does not pick
    up a change it missed or later changes."""
    ns = live.ns
    n1, _ = node_names(live)
    agent = f"agent-{n1}"
    probes = [
        Probe(f"{ns}/b", A, 80),  # allowed by a-from-b
        Probe(f"{ns}/c", A, 80),  # denied by a-from-b the whole test
        Probe(f"{ns}/a", B, 80),  # b is not isolated
        Probe(f"{ns}/a", C, 80),  # denied by the policy applied as n1's agent is killed
    ]
    start_everything(live)
    enforce_a_from_b(live, probes, [True, False, True, True])
    with Monitor(live, probes, [True, False, True, True]) as mon:
        before = table_state(live.net.node_netns(n1))
        with TableSampler(live.net.node_netns(n1)) as sampler:
            # Kill n1's agent the moment the operator has published the change: the agent is
            # receiving or applying it, and may or may not have committed the new table.
            # Either way the kernel must hold a complete table, old or new, throughout.
            generation = noderules_generation(live, n1)
            pending = mon.expect([True, False, True, False], math.inf, "c-from-b, agent killed")
            live.apply_policy(ns, ingress_only_from("c-from-b", "c", "b", ns))
            deadline = time.monotonic() + CONVERGENCE
            while noderules_generation(live, n1) == generation:
                assert time.monotonic() < deadline, "the operator did not publish the change"
            killed = time.monotonic()
            live.kill(agent, signal.SIGKILL)
            mon.hold(3.0)  # dead for 3 s: the old (or new) table keeps enforcing
            offset = log_size(live, agent)
            restarted = time.monotonic()
            live.start_agent(n1)
            # old or new verdict until AGENT_START_BOUND after the restart, then the new one
            pending.bound = restarted - pending.since + AGENT_START_BOUND
            took = mon.wait(pending) - (restarted - pending.since)
            wait_log(live, agent, "applied generation", offset)
            mon.settle()
        after = table_state(live.net.node_netns(n1))
        states = [state for _, state in sampler.states]
        assert None not in states, "the table was missing at some point"
        unexpected = [
            f"t={t - mon.t0:.2f}s" for t, state in sampler.states if state not in (before, after)
        ]
        assert not unexpected, (
            f"the kernel held a table that is neither the one before the kill nor the final "
            f"one at {unexpected} (flushed or partial?)\n{mon.report()}"
        )
        committed = min(t for t, state in sampler.states if state == after)
        print(
            f"agent dead {restarted - killed:.1f} s without a gap; the new table was committed "
            f"{committed - killed:+.2f} s after the kill, enforced {took:+.2f} s after the "
            f"restart; {len(set(states))} distinct table state(s)"
        )
        # After the restart new changes are enforced within the normal bound.
        phase = mon.expect([False, False, True, False], CONVERGENCE, "b leaves app=b")
        live.label_pod(ns, "b", {"app": "x"})
        print(f"change after the restart enforced in {mon.wait(phase):.2f} s")
        mon.assert_ok()


# ---- 2. operator restarts -----------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_operator_restart_changes_nothing_and_catches_up(live: Live, sig: int) -> None:
    """Catches: a restarted operator that deletes, re-creates or rewrites published objects
    (resourceVersions/generations move although nothing changed), publishes a partial view
    (agents would narrow or widen enforcement: the monitor sees it), or misses changes made
    while it was down."""
    ns = live.ns
    probes = [Probe(f"{ns}/b", A, 80), Probe(f"{ns}/c", A, 80), Probe(f"{ns}/a", B, 80)]
    start_everything(live)
    enforce_a_from_b(live, probes, [True, False, True])
    wait_log(live, "operator", "leading:")
    with Monitor(live, probes, [True, False, True]) as mon:
        snap0 = settled(live)  # agents' status writes move resourceVersions too

        # Restart with nothing changed in between: not a single write.
        offset = log_size(live, "operator")
        live.kill("operator", sig)
        mon.hold(1.0)
        started = time.monotonic()
        live.start_operator()
        leading = wait_log(live, "operator", "leading:", offset, OPERATOR_START_BOUND)
        mon.hold(3.0)  # the new leader has planned and written whatever it thought differed
        snap1 = published(live)
        changed = {k: (snap0.get(k), snap1.get(k)) for k in {*snap0, *snap1}}
        changed = {k: v for k, v in changed.items() if v[0] != v[1]}
        assert not changed, f"objects written by a restart with nothing changed: {changed}"
        print(f"restart: leading {leading - started:.1f} s after start; no object written")

        # A change while the operator is down: nothing moves until it is back, then enforced.
        offset = log_size(live, "operator")
        live.kill("operator", sig)
        live.label_pod(ns, "c", {"app": "b"})  # c joins the allowed group
        mon.hold(2.0)  # the old state stays enforced (the monitor still expects it)
        assert published(live) == snap1, "objects changed while no operator ran"
        started = time.monotonic()
        phase = mon.expect([True, True, True], OPERATOR_START_BOUND, "change made while down")
        live.start_operator()
        took = mon.wait(phase)
        wait_log(live, "operator", "leading:", offset)
        mon.assert_ok()
        snap2 = published(live)
        problems = compare(snap1, snap2, max_bumps=1)
        assert not problems, problems
        bumped = [k for k in snap2 if k in snap1 and snap2[k][2] != snap1[k][2]]
        assert bumped, "the change was enforced but no published object changed?"
        print(f"change made while down enforced {took:.2f} s after the start; written: {bumped}")


# ---- 3. API server outage ------------------------------------------------------------------------


def test_api_server_outage_keeps_enforcing_and_resumes(
    live: Live, control_plane: TestControlPlane
) -> None:
    """Catches: agents that drop or flush rules when their watches fail, an agent restarted
    during the outage that touches the table before it could list anything, missing outage
    logs, and informers/operators that do not resume after the API server is back."""
    ns = live.ns
    n1, n2 = node_names(live)
    probes = [
        Probe(f"{ns}/b", A, 80),
        Probe(f"{ns}/c", A, 80),
        Probe(f"{ns}/a", B, 80),
        Probe(f"{ns}/a", C, 80),
    ]
    start_everything(live)
    enforce_a_from_b(live, probes, [True, False, True, True])
    wait_log(live, "operator", "leading:")
    agents = [f"agent-{n1}", f"agent-{n2}"]
    offsets = {name: log_size(live, name) for name in [*agents, "operator"]}
    with Monitor(live, probes, [True, False, True, True]) as mon:
        mon.hold(1.0)
        snap = published(live)
        before = table_state(live.net.node_netns(n1))
        with TableSampler(live.net.node_netns(n1)) as sampler:
            stopping, wall = time.monotonic(), time.time()
            control_plane.stop_apiserver()  # SIGTERM; SIGKILL if still running after 10 s
            stopped = time.monotonic()
            for name in agents:
                wait_log(live, name, "cannot reach the API server", offsets[name])
                noticed = logged_at(live, name, "cannot reach the API server", offsets[name])
                print(f"{name} logged the outage {noticed - wall:.1f} s after the stop began")
            # An agent restarted now cannot list anything: it must leave the table alone.
            live.kill(agents[0], signal.SIGKILL)
            offsets[agents[0]] = log_size(live, agents[0])
            live.start_agent(n1)
            wait_log(live, agents[0], "cannot reach the API server", offsets[agents[0]], 15)
            mon.hold(3.0)
            restarting = time.monotonic()
            control_plane.restart_apiserver()
            back = time.monotonic()
            after_outage = table_state(live.net.node_netns(n1))
        assert [s for _, s in sampler.states] == [before], "the table changed during the outage"
        assert after_outage == before
        # Every informer says when it is through again (not only when its next watch ends).
        for name in agents:
            again = wait_log(live, name, "reachable again", offsets[name], API_RESUME_BOUND)
            print(f"{name} logged the API back {again - back:.1f} s after it was ready")
        wait_log(live, agents[0], "applied generation", offsets[agents[0]], API_RESUME_BOUND)
        # The first change after the restart is enforced once the watches have resumed.
        phase = mon.expect([True, False, True, False], API_RESUME_BOUND, "first change after")
        live.apply_policy(ns, ingress_only_from("c-from-b", "c", "b", ns))
        first = mon.wait(phase)
        # ... and after that, changes take the normal path again.
        phase = mon.expect([False, False, True, False], CONVERGENCE, "second change after")
        live.label_pod(ns, "b", {"app": "x"})
        second = mon.wait(phase)
        mon.assert_ok()
        # The operator lost the lease while the API was away and took it again: still nothing
        # may have been deleted, and each object written at most once per change (two).
        problems = compare(snap, published(live), max_bumps=2)
        assert not problems, problems
        print(
            f"API stop took {stopped - stopping:.1f} s, down {restarting - stopped:.1f} s, "
            f"restart {back - restarting:.1f} s, enforcing throughout; first change after it "
            f"enforced in {first:.2f} s, the next in {second:.2f} s"
        )
    for name, proc in live.processes.items():
        assert proc.poll() is None, f"{name} exited during the outage:\n{live.log(name)[-3000:]}"


# ---- 4. table deleted by hand ----------------------------------------------------------------------


def test_deleted_table_is_restored_within_the_drift_period(live: Live) -> None:
    """Catches: an agent that does not notice its table is gone (everything would stay
    allowed until the next resync or forever) or that does not say so."""
    ns = live.ns
    n1, n2 = node_names(live)
    probes = [Probe(f"{ns}/b", A, 80), Probe(f"{ns}/c", A, 80), Probe(f"{ns}/a", B, 80)]
    start_everything(live)
    enforce_a_from_b(live, probes, [True, False, True])
    with Monitor(live, probes, [True, False, True]) as mon:
        mon.hold(1.0)
        for node in (n1, n2):
            netns = live.net.node_netns(node)
            before = table_state(netns)
            offset = log_size(live, f"agent-{node}")
            # Without a table everything is allowed: c->a may succeed, but only until then.
            mon.expect(
                [True, False, True],
                DRIFT_BOUND,
                f"table deleted on {node}",
                transient=[frozenset([True, False])] * 3,
            )
            deleted = time.monotonic()
            live.net.run_in(netns, ["nft", "delete", "table", "inet", "nftpolicy"])
            while table_state(netns) is None and time.monotonic() - deleted < 10:
                time.sleep(0.01)
            restored = time.monotonic() - deleted
            assert table_state(netns) == before, "the restored table differs"
            assert restored <= DRIFT_BOUND, f"table restored only after {restored:.2f} s"
            wait_log(live, f"agent-{node}", "restoring it", offset, timeout=1)
            print(f"{node}: table restored {restored:.2f} s after it was deleted")
            mon.settle(2)
        mon.assert_ok()


# ---- 5. two operator replicas ---------------------------------------------------------------------


def test_two_operators_one_publishes_and_the_standby_takes_over(live: Live) -> None:
    """Catches: replicas that both publish (objects would be written twice or flap), a
    standby that does not take over when the leader dies (the change would never be
    enforced), or one that rewrites everything when it does (generations would move)."""
    ns = live.ns
    probes = [Probe(f"{ns}/b", A, 80), Probe(f"{ns}/c", A, 80), Probe(f"{ns}/a", B, 80)]
    acquired = "acquired leadership"
    live.start_operator("op-a")
    wait_log(live, "op-a", acquired, timeout=30)
    start_everything(live, operators=["op-b"])
    enforce_a_from_b(live, probes, [True, False, True])
    with Monitor(live, probes, [True, False, True]) as mon:
        mon.hold(1.0)
        assert acquired not in live.log("op-b"), "the standby took the lease from a live leader"
        assert "leading:" not in live.log("op-b")

        # A change while both run: written once, by the leader only.
        snap = published(live)
        phase = mon.expect([True, True, True], CONVERGENCE, "change, two replicas")
        live.label_pod(ns, "c", {"app": "b"})
        print(f"change with two replicas enforced in {mon.wait(phase):.2f} s")
        mon.hold(1.5)
        snap0 = published(live)
        problems = compare(snap, snap0, max_bumps=1)
        assert not problems, f"replicas fought: {problems}"
        assert "leading:" not in live.log("op-b")

        # Graceful hand-over: the leader releases the lease, the standby takes over at once
        # and writes nothing (it has compiled the same state all along).
        offset = log_size(live, "op-b")
        stopped = time.time()
        live.kill("op-a", signal.SIGTERM)
        wait_log(live, "op-b", "leading:", offset, timeout=LEASE_DURATION)
        handover = logged_at(live, "op-b", "leading:", offset) - stopped
        print(f"hand-over after SIGTERM: {handover:.1f} s")
        assert handover <= HANDOVER_BOUND, "the stopping leader kept the lease too long"
        mon.hold(1.5)
        assert published(live) == snap0, "the new leader rewrote objects although nothing changed"

        # The old leader comes back as a standby; then the leader is killed -9 (no release)
        # and a change is made at once: enforced after the lease expires and op-a takes over.
        offset = log_size(live, "op-a")
        live.start_operator("op-a")
        wait_log(live, "op-a", "initial listing complete", offset)  # running, a hot standby
        mon.hold(2.0)
        assert acquired not in live.log("op-a")[offset:], "op-a took a lease that was held"
        killed = time.time()
        phase = mon.expect([False, True, True], TAKEOVER_BOUND, "change, leader killed -9")
        live.kill("op-b", signal.SIGKILL)
        live.label_pod(ns, "b", {"app": "x"})
        took = mon.wait(phase)
        wait_log(live, "op-a", "leading:", offset, timeout=1)
        takeover = logged_at(live, "op-a", "leading:", offset) - killed
        assert takeover <= TAKEOVER_BOUND
        mon.assert_ok()
        problems = compare(snap0, published(live), max_bumps=1)
        assert not problems, f"objects flapped during the fail-over: {problems}"
        print(
            f"fail-over after kill -9: op-a leading {takeover:.1f} s after the kill;"
            f" the change made meanwhile enforced after {took:.1f} s"
        )


# ---- 6. conntrack ----------------------------------------------------------------------------------


def test_established_connection_lives_while_allowed_and_is_cut_after(live: Live) -> None:
    """Catches: established flows cut by unrelated applies (conntrack clean-up too eager) and
    flows that outlive the policy change that disallows them (``ct state established`` is
    accepted before any policy, so only the agent's conntrack clean-up can end them) -- also
    when the change happened while the agent was down, or while the table was missing."""
    ns = live.ns
    n1, _ = node_names(live)
    agent = f"agent-{n1}"
    probes = [Probe(f"{ns}/b", A, 80), Probe(f"{ns}/c", A, 80), Probe(f"{ns}/a", C, 80)]
    start_everything(live)
    enforce_a_from_b(live, probes, [True, False, True])
    server = EchoServer(pod_netns(live, "a"))
    clients: list[EchoClient] = []
    try:
        conn = connect(pod_netns(live, "b"), A)
        clients.append(conn)

        def keeps_working(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                assert conn.ping(), "an allowed established connection stopped working"
                time.sleep(0.1)

        # 1. An apply that narrows n1's rules elsewhere (c isolated) keeps the flow alive.
        offset = log_size(live, agent)
        live.apply_policy(ns, ingress_only_from("c-from-b", "c", "b", ns))
        keeps_working(1.0)
        live.wait_for(probes, [True, False, False], timeout=CONVERGENCE)
        wait_log(live, agent, "applied generation", offset)
        keeps_working(6.0)  # also through a periodic resync (--resync-period 5)

        # 2. Removing the allowance cuts it.
        offset = log_size(live, agent)
        changed = time.monotonic()
        live.label_pod(ns, "b", {"app": "x"})
        while conn.ping(0.5):
            assert time.monotonic() - changed < CONVERGENCE, "the flow outlived the policy"
            time.sleep(0.05)
        cut = time.monotonic() - changed
        assert not conn.ping(2.0), "the connection came back"
        wait_log(live, agent, "established flows that policies no longer allow", offset)
        live.wait_for(probes, [False, False, False], timeout=CONVERGENCE)
        print(f"established flow cut {cut:.2f} s after the change")

        # 3. The allowance is removed while n1's agent is dead: the old table keeps the flow
        # (and must), the restarted agent cuts it.
        live.label_pod(ns, "b", {"app": "b"})
        live.wait_for(probes, [True, False, False], timeout=CONVERGENCE)
        conn = connect(pod_netns(live, "b"), A)
        clients.append(conn)
        live.kill(agent, signal.SIGKILL)
        live.label_pod(ns, "b", {"app": "x"})
        keeps_working(1.0)
        restarted = time.monotonic()
        live.start_agent(n1)
        while conn.ping(0.5):
            assert time.monotonic() - restarted < AGENT_START_BOUND, (
                "a flow the restarted agent's rules deny survived its first apply\n"
                + live.log(agent)[-3000:]
            )
            time.sleep(0.05)
        print(f"restarted agent cut the flow {time.monotonic() - restarted:.2f} s after start")

        # 4. A flow opened while the table was deleted by hand is cut when it is restored.
        # Real nodes have other conntrack users (kube-proxy); with none, deleting our table
        # would stop connection tracking in the namespace and the restored rules would see
        # the flow's next packet as new, hiding a missing clean-up. So add one.
        live.net.run_in(
            live.net.node_netns(n1),
            ["nft", "-f", "-"],
            input="table inet kube-proxy-like {\n"
            " chain forward {\n  type filter hook forward priority 0; policy accept;\n"
            "  ct state established counter\n }\n}\n",
        )
        live.wait_for(probes, [False, False, False], timeout=AGENT_START_BOUND)
        for _ in range(5):
            live.wait_for(probes, [False, False, False], timeout=DRIFT_BOUND)  # table back
            live.net.run_in(
                live.net.node_netns(n1), ["nft", "delete", "table", "inet", "nftpolicy"]
            )
            sneaky = EchoClient(pod_netns(live, "c"), A)  # c is never allowed to reach a
            clients.append(sneaky)
            if sneaky.ping(0.5):
                break
        else:
            pytest.fail("could not open a flow while the table was missing")
        deleted = time.monotonic()
        while sneaky.ping(0.5):
            assert time.monotonic() - deleted < DRIFT_BOUND + 1, (
                "a flow opened while the table was missing survived its restoration\n"
                + live.log(agent)[-3000:]
            )
            time.sleep(0.05)
        print(f"flow opened without a table cut {time.monotonic() - deleted:.2f} s later")
    finally:
        for client in clients:
            client.close()
        server.close()


def test_the_kernel_cuts_a_denied_established_flow_at_the_swap(live: Live) -> None:
    """Catches: a flow the new rules deny that keeps passing until some clean-up pass (here
    there is none: ``--no-conntrack-cleanup``), so "applied" would not mean "enforced"; and a
    flow the new rules still allow that is not stamped again (it would be re-checked on every
    packet, or cut)."""
    ns = live.ns
    n1, _ = node_names(live)
    probes = [Probe(f"{ns}/b", A, 80), Probe(f"{ns}/c", A, 80)]
    live.start_operator("operator")
    for node in node_names(live):
        live.start_agent(node, extra_args=["--no-conntrack-cleanup"])
    enforce_a_from_b(live, probes, [True, False])
    server = EchoServer(pod_netns(live, "a"))
    conn = connect(pod_netns(live, "b"), A)
    try:
        # An apply that changes n1's rules but still allows the flow: the flow's next packet is
        # re-checked and its conntrack entry stamped with the new ruleset's epoch.
        offset = log_size(live, f"agent-{n1}")
        live.apply_policy(ns, ingress_only_from("c-from-b", "c", "b", ns))
        wait_log(live, f"agent-{n1}", "applied generation", offset)
        assert conn.ping(), "an allowed established flow was cut by an unrelated change"
        forward = live.net.run_in(
            live.net.node_netns(n1), ["nft", "list", "chain", "inet", "nftpolicy", "forward"]
        )
        epoch = re.search(r"ct mark (0x[0-9a-f]+)/16 accept", forward)
        assert epoch, forward
        entries = live.net.run_in(
            live.net.node_netns(n1),
            ["conntrack", "-L", "-p", "tcp", "--orig-dst", A, "--dport", str(ECHO_PORT)],
        )
        assert f"mark={int(epoch.group(1), 16)}" in entries, (epoch.group(1), entries)

        # Removing the allowance: the kernel drops the flow's next packet.
        live.label_pod(ns, "b", {"app": "x"})
        live.wait_for(probes, [False, False], timeout=CONVERGENCE)
        assert not conn.ping(1.0), "a denied established flow still passed after the swap"
        log = live.log(f"agent-{n1}")
        assert "established flows that policies no longer allow" not in log
    finally:
        conn.close()
        server.close()
