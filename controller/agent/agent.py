"""The node agent: watch this node's NodeRules and groups, keep the kernel in step.

Start-up leaves any existing table untouched until both watches have listed and its NodeRules
is there; then it swaps the table in one transaction. A group the rules refer to that has not
arrived is waited for ``missing_group_grace`` seconds, then enforced as empty (fail closed,
``progress.py``) so that one lost group never stalls the node. When the API is unreachable the
informers retry while the kernel keeps enforcing the last applied state. A periodic check
repairs drift (e.g. someone deleting the table) and every apply is followed by removing
established flows the new rules no longer allow.

Health (``/healthz``, liveness): a watch that heard nothing from the API server for
``stale_after`` seconds, applies that have kept failing for ``apply_failure_grace`` seconds, a
NodeRules generation waiting more than ``generation_lag_bound`` seconds to be applied, or a dead
apply thread. ``/readyz`` also waits for the first apply after start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.agent import conntrack
from controller.agent.kernel import Kernel, KernelError
from controller.agent.progress import GenerationLag, MissingGroups, stand_ins
from controller.agent.render import RenderOptions, render
from controller.agent.verdict import Ruleset
from controller.agent.view import AgentView
from controller.kube import timeouts
from controller.kube.informer import Informer
from controller.metrics import Metrics
from controller.resources import (
    ADDRESS_GROUPS,
    GROUP,
    NODE_RULES,
    VERSION,
    group_from_body,
    node_rules_from_body,
    span_label,
)

log = logging.getLogger(__name__)

CONNTRACK_ATTEMPTS = 3  # clean-up passes after an apply that narrowed what is allowed
STATUS_RETRY = 5.0  # seconds between attempts to write a status the API server refused


@dataclass(frozen=True)
class AgentConfig:
    node: str
    netns: str | None = None  # apply in this network namespace (tests); None: our own
    resync_period: float = 30.0  # full re-apply, repairing any drift
    drift_check_period: float = 2.0  # cheap check that our table is still there
    conntrack_cleanup: bool = True
    render: RenderOptions = RenderOptions()
    debounce: float = 0.02  # batch events that arrive together into one transaction
    # A group the rules need is waited for this long, then enforced as empty (fail closed).
    missing_group_grace: float = 5.0
    # Liveness fails when a watch heard nothing for this long: it gives up a silent watch
    # after WATCH_READ and lists again, so by then that did not help either.
    stale_after: float = 2 * timeouts.WATCH_READ
    # ... when applies have kept failing this long (they are retried at each resync) ...
    apply_failure_grace: float = 60.0
    # ... or when a NodeRules generation has waited this long to be applied.
    generation_lag_bound: float = 30.0


class Agent:
    def __init__(self, api: client.ApiClient, config: AgentConfig) -> None:
        self.config = config
        self.kernel = Kernel(config.netns)
        self.custom = client.CustomObjectsApi(api)
        self.view = AgentView(config.node)
        self._lock = threading.Lock()  # guards view, _lag (informer threads vs apply thread)
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._applied: dict[str, Any] | None = None
        self._applied_chains: frozenset[str] = frozenset()
        self._applied_at = 0.0
        self._reported: tuple[int | None, str | None] = (None, None)
        self._waiting_logged = False
        self._missing = MissingGroups(config.missing_group_grace)
        self._stood_in: frozenset[str] = frozenset()  # groups enforced as empty right now
        self._lag = GenerationLag()
        self._failing: tuple[float, str] | None = None  # applies failing since, last error
        self._ready = False  # the first apply after start is done
        self.informers = [
            Informer(
                f"noderules/{config.node}",
                self.custom.list_cluster_custom_object,
                self._rules_synced,
                self._rules_event,
                plural=NODE_RULES,
                field_selector=f"metadata.name={config.node}",
                group=GROUP,
                version=VERSION,
            ),
            Informer(
                "addressgroups",
                self.custom.list_cluster_custom_object,
                self._groups_synced,
                self._group_event,
                plural=ADDRESS_GROUPS,
                label_selector=span_label(config.node),
                group=GROUP,
                version=VERSION,
            ),
        ]
        self._worker = threading.Thread(target=self._loop, name="agent-apply", daemon=True)
        self._status = _StatusWriter(config.node, self._write_status)
        self.metrics = Metrics("nftpolicy_agent")
        for name, kind, text in (
            ("applies_total", "counter", "nftables transactions committed"),
            ("apply_errors_total", "counter", "nftables transactions refused"),
            ("apply_seconds", "gauge", "duration of the last render + transaction"),
            ("applied_generation", "gauge", "NodeRules generation in force"),
            ("pods", "gauge", "isolated local pods in force"),
            ("policies", "gauge", "policies in force on this node"),
            ("drift_repairs_total", "counter", "tables restored after a change behind our back"),
            ("conntrack_removed_total", "counter", "established flows removed after a change"),
            ("missing_groups", "gauge", "groups the rules need that are missing, enforced empty"),
            (
                "fail_closed_applies_total",
                "counter",
                "transactions committed with missing groups enforced as empty",
            ),
        ):
            self.metrics.describe(name, kind, text)
        self.metrics.add_check(
            "apply-thread", lambda: None if self._worker.is_alive() else "the apply thread died"
        )
        self.metrics.add_check("watch", self._watch_problem)
        self.metrics.add_check("apply", self._apply_problem)
        self.metrics.add_check("generation", self._lag_problem)
        self.metrics.add_check("initial-sync", self._sync_problem, liveness=False)

    # ---- watch callbacks (informer threads) -----------------------------------------------

    def _rules_synced(self, objects: dict[str, Mapping[str, Any]]) -> None:
        with self._lock:
            body = objects.get(self.config.node)
            self._set_rules(body)
        self._dirty.set()

    def _rules_event(self, kind: str, body: Mapping[str, Any]) -> None:
        with self._lock:
            self._set_rules(None if kind == "DELETED" else body)
        self._dirty.set()

    def _set_rules(self, body: Mapping[str, Any] | None) -> None:
        if body is None:
            self.view.rules, self.view.generation = None, None
        else:
            self.view.rules = node_rules_from_body(body)
            self.view.generation = body["metadata"].get("generation")
        self._lag.seen(self.view.generation, time.monotonic())

    def _groups_synced(self, objects: dict[str, Mapping[str, Any]]) -> None:
        with self._lock:
            self.view.groups = {name: group_from_body(b) for name, b in objects.items()}
        self._dirty.set()

    def _group_event(self, kind: str, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                self.view.groups.pop(name, None)
            else:
                self.view.groups[name] = group_from_body(body)
        self._dirty.set()

    # ---- health checks (HTTP threads): None or one line saying what is wrong -------------------

    def _watch_problem(self) -> str | None:
        problems = [i.health(self.config.stale_after) for i in self.informers]
        return "; ".join(p for p in problems if p) or None

    def _apply_problem(self) -> str | None:
        failing = self._failing
        if failing is None or time.monotonic() - failing[0] <= self.config.apply_failure_grace:
            return None
        return f"applies have failed for {time.monotonic() - failing[0]:.0f} s: {failing[1]}"

    def _lag_problem(self) -> str | None:
        with self._lock:
            behind = self._lag.behind(time.monotonic())
        if behind is None or behind[1] <= self.config.generation_lag_bound:
            return None
        generation, seconds, applied = behind
        return (
            f"NodeRules generation {generation} arrived {seconds:.0f} s ago and is not applied "
            f"(in force: {'none' if applied is None else applied})"
        )

    def _sync_problem(self) -> str | None:
        if self._ready:
            return None
        unlisted = [i.name for i in self.informers if not i.synced.is_set()]
        if unlisted:
            return f"initial sync: {', '.join(unlisted)} not listed yet"
        with self._lock:
            rules = self.view.rules
        if rules is None:
            return f"initial sync: no NodeRules for node {self.config.node} yet"
        failing = self._failing
        return "initial sync: " + (f"the apply failed: {failing[1]}" if failing else "applying")

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Agent:
        missing = self.kernel.missing_features()
        if missing:
            raise KernelError("this kernel lacks: " + "; ".join(missing))
        for informer in self.informers:
            informer.start()
        self._status.start()
        self._worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        for informer in self.informers:
            informer.stop()
        self._status.stop()
        self._worker.join(timeout=5)

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(3600):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # ---- the apply loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        last_check = time.monotonic()
        while not self._stop.is_set():
            grace_ends = self._missing.deadline()
            wait = self.config.drift_check_period
            if grace_ends is not None:
                wait = max(0.0, min(wait, grace_ends - time.monotonic()))
            self._dirty.wait(timeout=wait)
            if self._stop.is_set():
                return
            if self._dirty.is_set():
                time.sleep(self.config.debounce)
                self._dirty.clear()
                self._sync(force=False)
            elif grace_ends is not None and time.monotonic() >= grace_ends:
                self._sync(force=False)
            elif time.monotonic() - self._applied_at >= self.config.resync_period:
                self._sync(force=True)
            elif time.monotonic() - last_check >= self.config.drift_check_period:
                last_check = time.monotonic()
                self._check_drift()

    def _sync(self, force: bool, cleanup: bool = False) -> None:
        if not all(i.synced.is_set() for i in self.informers):
            return
        with self._lock:
            rules, generation = self.view.rules, self.view.generation
            if rules is None:
                self._reported = (None, None)  # a re-created NodeRules has no status yet
                self._log_waiting(
                    logging.WARNING, "no NodeRules for this node; keeping the current kernel state"
                )
                return
            missing = self.view.missing_groups()
            if not self._missing.update(missing, time.monotonic()):
                self._log_waiting(logging.INFO, f"waiting for groups {', '.join(sorted(missing))}")
                return
            if missing:
                groups = {**self.view.groups, **stand_ins(rules, missing)}
                ruleset = render(rules, groups, self.config.render)
            else:
                ruleset = self.view.ruleset(self.config.render)
        problem = self._fail_closed(missing)
        if not force and ruleset == self._applied:  # a new generation that renders the same
            with self._lock:
                self._lag.applied(generation)
            self._report(generation, problem, rules.pods, rules.policies)
            return
        started = time.monotonic()
        try:
            self.kernel.apply(ruleset)
        except (KernelError, OSError) as e:
            self.metrics.inc("apply_errors_total")
            log.error("node %s: applying rules failed: %s", self.config.node, e)
            self._failing = (self._failing[0] if self._failing else started, str(e)[:300])
            self._report(generation, str(e)[:1000], rules.pods, rules.policies)
            self._applied_at = time.monotonic()  # retry at the next resync, not in a hot loop
            return
        # Established flows the new rules deny are removed after every change of rules, after
        # the first apply of this process (the table it found may be an older, wider one, e.g.
        # rules changed while the agent was down) and after repairing drift (while the table
        # was missing or damaged, anything could connect).
        narrowed = cleanup or ruleset != self._applied
        self.metrics.inc("applies_total")
        if missing:
            self.metrics.inc("fail_closed_applies_total")
        self.metrics.set("apply_seconds", time.monotonic() - started)
        self.metrics.set("applied_generation", float(generation or 0))
        self.metrics.set("pods", len(rules.pods))
        self.metrics.set("policies", len(rules.policies))
        self._applied = ruleset
        self._applied_chains = _chains(ruleset)
        self._applied_at = time.monotonic()
        self._waiting_logged = False
        self._failing = None
        self._ready = True
        with self._lock:
            self._lag.applied(generation)
        log.info(
            "node %s: applied generation %s (%d pods, %d policies)",
            self.config.node,
            generation,
            len(rules.pods),
            len(rules.policies),
        )
        if self.config.conntrack_cleanup and narrowed:
            ips = [ip for pod in rules.pods for ip in pod.ips]
            # A flow can end between the dump and its deletion: pyroute2 then raises
            # NetlinkError(ENOENT), which is not an OSError and used to end this thread (no
            # apply and no status report any more). A fresh pass no longer sees that flow.
            for attempt in range(1, CONNTRACK_ATTEMPTS + 1):
                try:
                    removed = conntrack.remove_disallowed(self.config.netns, Ruleset(ruleset), ips)
                    self.metrics.inc("conntrack_removed_total", removed)
                    break
                except Exception as e:  # noqa: BLE001 - never let clean-up stop the agent
                    if attempt == CONNTRACK_ATTEMPTS:
                        log.warning("node %s: conntrack clean-up failed: %s", self.config.node, e)
        self._report(generation, problem, rules.pods, rules.policies)

    def _fail_closed(self, missing: frozenset[str]) -> str | None:
        """Log (once per change of the set), count and describe groups enforced as empty."""
        if missing != self._stood_in:
            if missing:
                log.error(
                    "node %s: groups %s missing for %.0f s or more; enforcing them as empty "
                    "(what needs them allows nothing from them) until they arrive",
                    self.config.node,
                    ", ".join(sorted(missing)),
                    self.config.missing_group_grace,
                )
            else:
                log.warning("node %s: the missing groups arrived", self.config.node)
            self._stood_in = missing
            self.metrics.set("missing_groups", len(missing))
        if not missing:
            return None
        names = sorted(missing)
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        return f"missing groups enforced as empty (fail closed): {shown}"

    def _log_waiting(self, level: int, what: str) -> None:
        if not self._waiting_logged:
            self._waiting_logged = True
            log.log(level, "node %s: %s", self.config.node, what)

    def _check_drift(self) -> None:
        if self._applied is None:
            return
        try:
            current = self.kernel.read()
        except (KernelError, OSError) as e:
            log.warning("node %s: cannot read the kernel table: %s", self.config.node, e)
            return
        if current is None or _chains(current) != self._applied_chains:
            log.warning(
                "node %s: kernel table changed behind our back; restoring it", self.config.node
            )
            self.metrics.inc("drift_repairs_total")
            self._sync(force=True, cleanup=True)

    def _report(
        self,
        generation: int | None,
        error: str | None,
        pods: tuple[Any, ...],
        policies: tuple[Any, ...],
    ) -> None:
        if (generation, error) == self._reported:
            return
        self._reported = (generation, error)
        self._status.submit(
            {
                "appliedGeneration": generation,
                "appliedAt": datetime.now(UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "pods": len(pods),
                "policies": len(policies),
                "error": error or "",
            }
        )

    def _write_status(self, status: dict[str, Any]) -> None:
        self.custom.patch_cluster_custom_object_status(
            GROUP,
            VERSION,
            NODE_RULES,
            self.config.node,
            {"status": status},
            _request_timeout=timeouts.REQUEST,
        )


class _StatusWriter:
    """Writes the NodeRules status from its own thread, the newest status first, so a slow
    or hung API call never holds up the next apply; a failed write is retried until a newer
    status replaces it (a missing NodeRules has no status to write: that one is dropped)."""

    def __init__(self, node: str, write: Callable[[dict[str, Any]], None]) -> None:
        self._node = node
        self._write = write
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def submit(self, status: dict[str, Any]) -> None:
        with self._lock:
            self._pending = status
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                status, self._pending = self._pending, None
            if status is None or self._stop.is_set():
                continue
            try:
                self._write(status)
            except Exception as e:  # noqa: BLE001 - the API may be away; retried below
                if isinstance(e, ApiException) and e.status == 404:
                    continue
                log.warning("node %s: cannot write status: %s", self._node, e)
                with self._lock:
                    if self._pending is None:
                        self._pending = status
                if self._stop.wait(STATUS_RETRY):
                    return
                self._wake.set()


def _chains(ruleset: Mapping[str, Any]) -> frozenset[str]:
    names = set()
    for item in ruleset["nftables"]:
        obj = item.get("add", item)
        if "chain" in obj:
            names.add(obj["chain"]["name"])
    return frozenset(names)
