"""The node agent: watch this node's NodeRules and groups, keep the kernel in step.

Start-up leaves any existing table untouched until both watches have listed and every group
the rules refer to is present; then it swaps the table in one transaction. When the API is
unreachable the informers retry while the kernel keeps enforcing the last applied state. A
periodic check repairs drift (e.g. someone deleting the table) and every apply is followed by
removing established flows the new rules no longer allow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from controller.agent import conntrack
from controller.agent.kernel import Kernel, KernelError
from controller.agent.render import RenderOptions
from controller.agent.verdict import Ruleset
from controller.agent.view import AgentView
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


@dataclass(frozen=True)
class AgentConfig:
    node: str
    netns: str | None = None  # apply in this network namespace (tests); None: our own
    resync_period: float = 30.0  # full re-apply, repairing any drift
    drift_check_period: float = 2.0  # cheap check that our table is still there
    conntrack_cleanup: bool = True
    render: RenderOptions = RenderOptions()
    debounce: float = 0.02  # batch events that arrive together into one transaction


class Agent:
    def __init__(self, api: client.ApiClient, config: AgentConfig) -> None:
        self.config = config
        self.kernel = Kernel(config.netns)
        self.custom = client.CustomObjectsApi(api)
        self.view = AgentView(config.node)
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._applied: dict[str, Any] | None = None
        self._applied_chains: frozenset[str] = frozenset()
        self._applied_at = 0.0
        self._reported: tuple[int | None, str | None] = (None, None)
        self._waiting_logged = False
        common = {"group": GROUP, "version": VERSION}
        self.informers = [
            Informer(
                f"noderules/{config.node}",
                self.custom.list_cluster_custom_object,
                self._rules_synced,
                self._rules_event,
                plural=NODE_RULES,
                field_selector=f"metadata.name={config.node}",
                **common,
            ),
            Informer(
                "addressgroups",
                self.custom.list_cluster_custom_object,
                self._groups_synced,
                self._group_event,
                plural=ADDRESS_GROUPS,
                label_selector=span_label(config.node),
                **common,
            ),
        ]
        self._worker = threading.Thread(target=self._loop, name="agent-apply", daemon=True)
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
        ):
            self.metrics.describe(name, kind, text)
        self.metrics.healthy = self._worker.is_alive

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
            return
        self.view.rules = node_rules_from_body(body)
        self.view.generation = body["metadata"].get("generation")

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

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Agent:
        missing = self.kernel.missing_features()
        if missing:
            raise KernelError("this kernel lacks: " + "; ".join(missing))
        for informer in self.informers:
            informer.start()
        self._worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        for informer in self.informers:
            informer.stop()
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
            self._dirty.wait(timeout=self.config.drift_check_period)
            if self._stop.is_set():
                return
            if self._dirty.is_set():
                time.sleep(self.config.debounce)
                self._dirty.clear()
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
            if not self.view.complete():
                self._log_waiting()
                return
            ruleset = self.view.ruleset(self.config.render)
            generation = self.view.generation
            rules = self.view.rules
        assert rules is not None
        if not force and ruleset == self._applied:
            self._report(generation, None, rules.pods, rules.policies)
            return
        started = time.monotonic()
        try:
            self.kernel.apply(ruleset)
        except (KernelError, OSError) as e:
            self.metrics.inc("apply_errors_total")
            log.error("node %s: applying rules failed: %s", self.config.node, e)
            self._report(generation, str(e)[:1000], rules.pods, rules.policies)
            self._applied_at = time.monotonic()  # retry at the next resync, not in a hot loop
            return
        # Established flows the new rules deny are removed after every change of rules, after
        # the first apply of this process (the table it found may be an older, wider one, e.g.
        # rules changed while the agent was down) and after repairing drift (while the table
        # was missing or damaged, anything could connect).
        narrowed = cleanup or ruleset != self._applied
        self.metrics.inc("applies_total")
        self.metrics.set("apply_seconds", time.monotonic() - started)
        self.metrics.set("applied_generation", float(generation or 0))
        self.metrics.set("pods", len(rules.pods))
        self.metrics.set("policies", len(rules.policies))
        self._applied = ruleset
        self._applied_chains = _chains(ruleset)
        self._applied_at = time.monotonic()
        self._waiting_logged = False
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
        self._report(generation, None, rules.pods, rules.policies)

    def _log_waiting(self) -> None:
        if self._waiting_logged:
            return
        self._waiting_logged = True
        if self.view.rules is None:
            log.warning(
                "node %s: no NodeRules published yet; keeping the current kernel state",
                self.config.node,
            )
        else:
            log.info(
                "node %s: waiting for groups %s",
                self.config.node,
                ", ".join(sorted(self.view.missing_groups())),
            )

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
        status = {
            "appliedGeneration": generation,
            "appliedAt": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "pods": len(pods),
            "policies": len(policies),
            "error": error or "",
        }
        try:
            self.custom.patch_cluster_custom_object_status(
                GROUP, VERSION, NODE_RULES, self.config.node, {"status": status}
            )
            self._reported = (generation, error)
        except Exception as e:  # the API may be away; the next sync reports again
            log.warning("node %s: cannot write status: %s", self.config.node, e)


def _chains(ruleset: Mapping[str, Any]) -> frozenset[str]:
    names = set()
    for item in ruleset["nftables"]:
        obj = item.get("add", item)
        if "chain" in obj:
            names.add(obj["chain"]["name"])
    return frozenset(names)
