"""The node agent: watch this node's NodeRules and groups, keep the kernel in step.

Start-up leaves any existing table untouched until both watches have listed and its NodeRules
is there; then it swaps the table in one transaction. A group the rules refer to that has not
arrived is waited for ``missing_group_grace`` seconds, then enforced as empty (fail closed,
``progress.py``) so that one lost group never stalls the node. When the API is unreachable the
informers retry while the kernel keeps enforcing the last applied state. Every apply is
followed by removing established flows the new rules no longer allow.

Surviving the node: after each apply the ruleset is saved on the host (``--state-dir``,
``saved_ruleset.py``). At start, before anything talks to the API server, the agent loads it
if the kernel has no table of ours (a reboot), so the node enforces the last known state even
with the API server away; then it syncs and swaps as usual. A table already there is newer
than or equal to the file (the file is written after the apply) and is kept. A file that
cannot be used is logged and replaced by a table that drops every new forwarded connection
until the first sync (``saved_ruleset.stand_in``), never by nothing. A failed save does not
hold up applies: it is counted, logged and reported in the NodeRules status.

Uninstall: on SIGTERM the agent stops applying, then removes the table and the saved file
only if the watch of its own DaemonSet (``--daemonset``) saw that deleted; a restart, or any
doubt, keeps both (``uninstall.py``).

Drift: right after each apply the table is listed and its digest (``drift.py``) remembered;
every ``drift_check_period`` it is listed again and any difference (a rule added, a set
flushed, the table deleted) is repaired by applying the last ruleset again.

Health (``/healthz``, liveness): a watch that heard nothing from the API server for
``stale_after`` seconds, applies that have kept failing for ``apply_failure_grace`` seconds, a
NodeRules generation waiting more than ``generation_lag_bound`` seconds to be applied, or a dead
apply thread. ``/readyz`` also waits for the first apply after start.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.agent import conntrack, drift, saved_ruleset, uninstall
from controller.agent.groups import ShardedGroups
from controller.agent.kernel import Kernel, KernelError
from controller.agent.progress import GenerationLag, MissingGroups, stand_ins
from controller.agent.render import (
    FAMILY,
    TABLE,
    UNKNOWN_COUNTER,
    RenderOptions,
    render,
    unknown_endpoints_in_force,
)
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
    node_rules_from_body,
    span_label,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# For the ``_flows`` thread: (ruleset whose disallowed flows to remove, local pod IPs, when it
# was applied (monotonic)) or None, then the NodeRules status to write once that is done, or None.
Flows = tuple[dict[str, Any], list[Any], float]
FlowsJob = tuple[Flows | None, dict[str, Any] | None]

CONNTRACK_ATTEMPTS = 3  # clean-up passes after an apply that narrowed what is allowed
STOP_APPLY_WAIT = 5.0  # seconds a stop waits for an apply in progress (chart: grace period)
STATUS_RETRY = 5.0  # seconds between attempts to write a status the API server refused


@dataclass(frozen=True)
class AgentConfig:
    node: str
    netns: str | None = None  # apply in this network namespace (tests); None: our own
    resync_period: float = 30.0  # full re-apply, repairing any drift
    # List the table and compare its digest this often: a change behind our back is repaired
    # within this period plus one listing and one apply (bound: 2 s; costs in README).
    drift_check_period: float = 1.0
    state_dir: Path | None = None  # keep the last applied ruleset here (None: nowhere)
    # (namespace, name) of the agent's own DaemonSet: watched so that SIGTERM removes the table
    # and saved ruleset only when it was deleted (uninstall.py). None: a stop never removes.
    daemonset: tuple[str, str] | None = None
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
        # What is in the kernel by our hand (applied, or restored from disk at start) and the
        # digest of its listing right after; the drift check compares against it.
        self._in_force: dict[str, Any] | None = None
        self._in_force_digest: str | None = None
        self._save_error: str | None = None
        self._check_seconds = 0.0  # what the last listing + digest took
        self._applied_at = 0.0
        self._reported: tuple[int | None, str | None] = (None, None)
        self._waiting_logged = False
        self._missing = MissingGroups(config.missing_group_grace)
        self._stood_in: frozenset[str] = frozenset()  # groups enforced as empty right now
        self._shards = ShardedGroups()  # the AddressGroup objects, by group
        self._lag = GenerationLag()
        self._failing: tuple[float, str] | None = None  # applies failing since, last error
        self._ready = False  # the first apply after start is done
        # Unknown endpoints: what the table in force does with them ("drop", "allow",
        # "inactive": no pod ranges known), and the drops counted by the tables it replaced
        # (each swap restarts the kernel's counter).
        self._unknown: str | None = None
        self._unknown_drops_before = 0
        self._known_pods: frozenset[str] = frozenset()  # local pods of the rules in force
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
        # Uninstall versus restart (uninstall.py). Not one of ``informers``: it neither holds up
        # applies nor fails a health check (without RBAC for it the agent still enforces; it
        # only keeps its table at uninstall).
        self._watched: uninstall.Watched | None = None
        self._daemonset: Informer | None = None
        if config.daemonset is not None:
            namespace, name = config.daemonset
            self._watched = uninstall.Watched(f"{namespace}/{name}")
            self._daemonset = Informer(
                f"daemonset/{namespace}/{name}",
                self._noting_failures(client.AppsV1Api(api).list_namespaced_daemon_set),
                lambda objects: self._observe(uninstall.observe_list, list(objects.values())),
                lambda kind, body: self._observe(uninstall.observe_event, kind, body),
                namespace=namespace,
                field_selector=f"metadata.name={name}",
            )
        self._worker = threading.Thread(target=self._loop, name="agent-apply", daemon=True)
        # The NodeRules status and conntrack clean-up each on their own thread (``_Newest``):
        # a hung API call or a walk of a big conntrack table never holds up the next apply.
        self._status = _Newest("agent-status", self._try_write_status, STATUS_RETRY)
        # "applied" (and the operator's Enforced event) means no flow the rules deny still
        # passes. With the kernel re-check of established flows (RenderOptions.ct_mark_mask)
        # that holds once the transaction is in; without it, only after the clean-up, so the
        # status then waits for it.
        self._flows: _Newest[FlowsJob] = _Newest(
            "agent-conntrack", self._clean_flows, STATUS_RETRY, merge=_merge_flows_jobs
        )
        self.metrics = Metrics("nftpolicy_agent")
        for name, kind, text in (
            ("applies_total", "counter", "nftables transactions committed"),
            ("apply_errors_total", "counter", "nftables transactions refused"),
            ("apply_seconds", "gauge", "duration of the last render + transaction"),
            ("applied_generation", "gauge", "NodeRules generation in force"),
            ("pods", "gauge", "local pods in force (isolated or not)"),
            ("policies", "gauge", "policies in force on this node"),
            ("drift_repairs_total", "counter", "tables restored after a change behind our back"),
            ("drift_check_seconds", "gauge", "duration of the last listing + digest of the table"),
            ("state_saves_total", "counter", "rulesets saved on the host after an apply"),
            ("state_save_errors_total", "counter", "rulesets that could not be saved on the host"),
            (
                "state_restored",
                "gauge",
                "1: the saved ruleset was loaded at start; -1: it was unusable, a drop-all "
                "stand-in was loaded; 0: neither",
            ),
            ("conntrack_removed_total", "counter", "established flows removed after a change"),
            ("conntrack_cleanups_total", "counter", "conntrack clean-up passes done"),
            ("conntrack_cleanup_seconds", "gauge", "duration of the last conntrack clean-up"),
            (
                "conntrack_cleanup_lag_seconds",
                "gauge",
                "from an apply to the end of the conntrack clean-up that followed it",
            ),
            (
                "uninstall_on_stop",
                "gauge",
                "1: the agent's DaemonSet was deleted, a stop removes the table and saved ruleset",
            ),
            ("missing_groups", "gauge", "groups the rules need that are missing, enforced empty"),
            (
                "unknown_endpoint_drops_total",
                "counter",
                "new connections dropped: an address of the node's pod ranges no local pod has",
            ),
            (
                "unknown_endpoint_protection",
                "gauge",
                "1: unknown endpoints are dropped; 0: allowed, or no pod ranges known (inactive)",
            ),
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
            self.view.groups = self._shards.reset(objects)
        self._dirty.set()

    def _group_event(self, kind: str, body: Mapping[str, Any]) -> None:
        with self._lock:
            name, group = self._shards.event(kind, body)
            if group is None:
                self.view.groups.pop(name, None)
            else:
                self.view.groups[name] = group
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
        self._restore()  # first: a rebooted node enforces before the API server is reachable
        missing = self.kernel.missing_features()
        if missing:
            raise KernelError("this kernel lacks: " + "; ".join(missing))
        if self._daemonset is not None:
            self._daemonset.start()
        for informer in self.informers:
            informer.start()
        self._status.start()
        self._flows.start()
        self._worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        for informer in self.informers:
            informer.stop()
        if self._daemonset is not None:
            self._daemonset.stop()
        self._status.stop(join=5.0)
        self._flows.stop()
        self._worker.join(timeout=STOP_APPLY_WAIT)

    def run_forever(self) -> None:
        """Run until SIGTERM (or Ctrl-C), then ``terminate``."""
        # Blocked before any thread starts (threads inherit the mask) and taken by sigwait: no
        # handler runs in the middle of the main thread's work.
        signals = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        self.start()
        try:
            received = signal.sigwait(signals)
            log.info("node %s: %s received", self.config.node, signal.Signals(received).name)
        finally:
            self.terminate()

    def terminate(self) -> None:
        """Stop applying, then remove the table and the saved ruleset if the agent's DaemonSet
        was deleted (an uninstall), else keep both (``uninstall.py``). The watches are left to
        end with the process: joining them can take seconds, which the grace period lacks."""
        self._stop.set()
        self._dirty.set()
        self._worker.join(timeout=STOP_APPLY_WAIT)
        with self._lock:
            decision = uninstall.decide(self._watched)
        if decision.remove and self._worker.is_alive():
            decision = uninstall.Decision(
                False, f"an apply still running after {STOP_APPLY_WAIT:.0f} s", uncertain=True
            )
        node = self.config.node
        if decision.remove:
            log.warning(
                "node %s: stopping: removing the table and saved ruleset: %s", node, decision.why
            )
            self._remove_all()
            return
        log.info("node %s: stopping: keeping the table and saved ruleset: %s", node, decision.why)
        if decision.uncertain and self._watched is not None:
            log.warning("node %s: if this is an uninstall, %s", node, self._by_hand())

    # ---- uninstall ------------------------------------------------------------------------------

    def _noting_failures(self, list_fn: Callable[..., Any]) -> Callable[..., Any]:
        """``list_fn`` (list or open a watch of the DaemonSet), noting a failed request as
        uncertainty: after helm deleted our RoleBinding a re-list is refused, and the
        DaemonSet may have been re-created meanwhile."""

        def listing(*args: Any, **kwargs: Any) -> Any:
            try:
                return list_fn(*args, **kwargs)
            except Exception as e:
                why = f"API error {e.status}: {e.reason}" if isinstance(e, ApiException) else e
                self._observe(uninstall.observe_failure, str(why)[:200])
                raise

        return listing

    def _observe(self, fold: Callable[..., uninstall.Watched], *args: Any) -> None:
        """Fold what the DaemonSet watch says into ``_watched``; log when the decision at stop
        changes."""
        with self._lock:
            assert self._watched is not None
            before = uninstall.decide(self._watched)
            self._watched = fold(self._watched, *args)
            after = uninstall.decide(self._watched)
            unseen = self._watched.listed and self._watched.uid is None
        self.metrics.set("uninstall_on_stop", 1 if after.remove else 0)
        node = self.config.node
        if after.remove and not before.remove:
            log.warning(
                "node %s: %s; stopping this agent will remove the table and saved ruleset",
                node,
                after.why,
            )
        elif before.remove and not after.remove:
            log.warning("node %s: a stop keeps the table again: %s", node, after.why)
        elif before.uncertain and not after.uncertain:
            log.info("node %s: %s; a stop keeps the table unless it is deleted", node, after.why)
        elif unseen and before.why != after.why:
            log.warning("node %s: %s; a stop will keep the table", node, after.why)

    def _by_hand(self) -> str:
        where = self.config.state_dir
        saved = f"; rm {saved_ruleset.path(where, self.config.node)}" if where else ""
        return f"remove the rules by hand on this node: nft delete table {FAMILY} {TABLE}{saved}"

    def _remove_all(self) -> None:
        """The saved file first: a crash in between leaves a table that a reboot clears, not a
        file that a reboot would load with no agent to update it."""
        node = self.config.node
        try:
            if self.config.state_dir is not None:
                saved_ruleset.remove(self.config.state_dir, node)
            removed = self.kernel.remove()
        except (KernelError, OSError, saved_ruleset.SavedRulesetError) as e:
            log.error("node %s: uninstall failed: %s; %s", node, e, self._by_hand())
            return
        log.warning(
            "node %s: uninstalled: table %s %s %s, saved ruleset removed",
            node,
            FAMILY,
            TABLE,
            "removed" if removed else "was not there",
        )

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
            # Also under a steady stream of changes that render the same (no apply).
            # Listing a table of 10^5 set elements takes seconds of CPU: never more than ~10%
            # of a core on drift checks (the 2 s repair bound then does not hold; see README).
            period = max(self.config.drift_check_period, 10 * self._check_seconds)
            if time.monotonic() - max(last_check, self._applied_at) >= period:
                last_check = time.monotonic()
                self._check_drift()
                self._count_unknown_drops()

    def _sync(self, force: bool) -> None:
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
        self._unknown_endpoints(unknown_endpoints_in_force(rules, self.config.render))
        if not force and ruleset == self._applied:  # a new generation that renders the same
            with self._lock:
                self._lag.applied(generation)
            self._report(generation, problem, rules.pods, rules.policies)
            return
        drops = self._read_unknown_drops()  # before the swap restarts the kernel's counter
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
        # Established flows the new rules deny are removed after every change of rules and after
        # the first apply of this process (the table it found may be an older, wider one, e.g.
        # rules changed while the agent was down); ``_check_drift`` does it after a repair.
        narrowed = ruleset != self._applied
        if self._in_force is not None:  # ours (not a table some earlier process left)
            self._unknown_drops_before += drops
        self.metrics.inc("applies_total")
        if missing:
            self.metrics.inc("fail_closed_applies_total")
        self.metrics.set("apply_seconds", time.monotonic() - started)
        self.metrics.set("applied_generation", float(generation or 0))
        self.metrics.set("pods", len(rules.pods))
        self.metrics.set("policies", len(rules.policies))
        self._applied = ruleset
        self._in_force = ruleset
        self._in_force_digest = self._digest()
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
        self._log_new_pods(frozenset(p.key for p in rules.pods))
        self._save(ruleset, generation)
        problems = [p for p in (problem, self._save_error) if p]
        flows = self._flows_of(ruleset, rules.pods) if narrowed else None
        self._report(generation, "; ".join(problems) or None, rules.pods, rules.policies, flows)

    def _flows_of(self, ruleset: dict[str, Any], pods: tuple[Any, ...]) -> Flows | None:
        """What the ``_flows`` thread needs to remove established flows of local pods that
        ``ruleset`` does not allow (None: clean-up is off). Not on this thread: walking a
        conntrack table of tens of thousands of flows takes seconds, and the next apply (a new
        pod waiting to be known) must not wait."""
        if not self.config.conntrack_cleanup:
            return None
        return (ruleset, [ip for pod in pods for ip in pod.ips], time.monotonic())

    def _clean_flows(self, job: FlowsJob) -> bool:
        """One clean-up pass, then the status that waited for it (on the ``_flows`` thread);
        never retried from there."""
        flows, status = job
        if flows is not None:
            ruleset, ips, applied = flows
            started = time.monotonic()
            self._remove_disallowed(ruleset, ips)
            self.metrics.set("conntrack_cleanup_seconds", time.monotonic() - started)
            self.metrics.set("conntrack_cleanup_lag_seconds", time.monotonic() - applied)
            self.metrics.inc("conntrack_cleanups_total")
        if status is not None:
            self._status.submit(status)
        return True

    def _remove_disallowed(self, ruleset: dict[str, Any], ips: list[Any]) -> None:
        # A flow can end between the dump and its deletion: pyroute2 then raises
        # NetlinkError(ENOENT), which is not an OSError. A fresh pass no longer sees that flow.
        for attempt in range(1, CONNTRACK_ATTEMPTS + 1):
            try:
                removed = conntrack.remove_disallowed(self.config.netns, Ruleset(ruleset), ips)
                self.metrics.inc("conntrack_removed_total", removed)
                break
            except Exception as e:  # noqa: BLE001 - never let clean-up stop the agent
                if attempt == CONNTRACK_ATTEMPTS:
                    log.warning("node %s: conntrack clean-up failed: %s", self.config.node, e)

    # ---- the ruleset kept on the host -----------------------------------------------------------

    def _restore(self) -> None:
        """Load the saved ruleset if the kernel has no table of ours (see the module doc)."""
        directory = self.config.state_dir
        if directory is None:
            return
        node = self.config.node
        problem: str | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            saved = saved_ruleset.load(directory, node)
        except (saved_ruleset.SavedRulesetError, OSError) as e:
            saved, problem = None, str(e)
        if self.kernel.read() is not None:
            if problem:
                log.error("node %s: %s; keeping the table in the kernel", node, problem)
            return
        if saved is None and problem is None:
            log.info("node %s: no table and no saved ruleset: nothing to enforce yet", node)
            return
        if saved is not None:
            log.warning(
                "node %s: no table in the kernel (a reboot?): loading the saved ruleset of "
                "generation %s from %s until the first sync",
                node,
                saved.generation,
                directory,
            )
            try:
                self._load(saved.ruleset, 1)
                return
            except KernelError as e:  # e.g. a kernel that lost a feature: do not crash-loop
                problem = f"the kernel refused the saved ruleset: {e}"
        log.error(
            "node %s: no table in the kernel and the saved ruleset is unusable: %s; "
            "dropping every new forwarded connection until the first sync",
            node,
            problem,
        )
        try:
            self._load(saved_ruleset.stand_in(self.config.render.priority), -1)
        except KernelError as e:  # the first sync will retry, and report
            log.error("node %s: loading the drop-all stand-in failed too: %s", node, e)

    def _load(self, ruleset: dict[str, Any], restored: int) -> None:
        self.kernel.apply(ruleset)
        self._in_force = ruleset
        self._in_force_digest = self._digest()
        self.metrics.set("state_restored", restored)

    def _save(self, ruleset: dict[str, Any], generation: int | None) -> None:
        """Keep ``ruleset`` on the host; a failure is counted and reported, never raised."""
        directory = self.config.state_dir
        if directory is None:
            return
        try:
            saved_ruleset.save(
                directory, saved_ruleset.SavedRuleset(self.config.node, generation, ruleset)
            )
        except (OSError, saved_ruleset.SavedRulesetError) as e:
            self.metrics.inc("state_save_errors_total")
            error = f"rules applied, but saving them to {directory} failed: {e}"
            if error != self._save_error:
                log.error("node %s: %s", self.config.node, error)
            self._save_error = error[:300]
            return
        self.metrics.inc("state_saves_total")
        if self._save_error:
            log.warning("node %s: the ruleset is saved again", self.config.node)
        self._save_error = None

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

    def _unknown_endpoints(self, state: str) -> None:
        """Log (loudly when protection is inactive, once per change) what the table does with
        unknown endpoints; the gauge and the NodeRules status say it too."""
        if state == self._unknown:
            return
        self._unknown = state
        self.metrics.set("unknown_endpoint_protection", 1 if state == "drop" else 0)
        if state == "inactive":
            log.warning(
                "node %s: unknown-endpoint protection inactive: the node's pod ranges are not "
                "known (no spec.podCIDRs on the Node, no --pod-cidrs), so new pods are reachable "
                "before their rules arrive; set agent.podCIDRs (--pod-cidrs) for this CNI",
                self.config.node,
            )
        else:
            log.info("node %s: unknown endpoints: %s", self.config.node, state)

    def _log_new_pods(self, pods: frozenset[str]) -> None:
        """Name the local pods this apply made known (no longer unknown endpoints): with the
        pods' IP report times this gives each pod's wait for its first connection."""
        added = sorted(pods - self._known_pods)
        self._known_pods = pods
        if added:
            more = f" and {len(added) - 10} more" if len(added) > 10 else ""
            log.info("node %s: pods now known: %s%s", self.config.node, ", ".join(added[:10]), more)

    def _read_unknown_drops(self) -> int:
        """Packets the unknown-endpoint counter of the table in force has dropped (0 when it
        has none or cannot be read: a lost count is logged, never raised)."""
        try:
            return self.kernel.counter_packets(UNKNOWN_COUNTER) or 0
        except (KernelError, OSError) as e:
            log.debug("node %s: cannot read the unknown-endpoint counter: %s", self.config.node, e)
            return 0

    def _count_unknown_drops(self) -> None:
        if self._in_force is None:  # a table some earlier process left: not our count
            return
        total = self._unknown_drops_before + self._read_unknown_drops()
        self.metrics.set("unknown_endpoint_drops_total", total)

    def _log_waiting(self, level: int, what: str) -> None:
        if not self._waiting_logged:
            self._waiting_logged = True
            log.log(level, "node %s: %s", self.config.node, what)

    def _digest(self) -> str | None:
        """The digest of our table as listed now; ``None`` (and a warning) if unreadable."""
        started, cpu = time.monotonic(), time.thread_time()
        try:
            listing = self.kernel.read()
        except (KernelError, OSError) as e:
            log.warning("node %s: cannot read the kernel table: %s", self.config.node, e)
            return None
        result = drift.digest(listing)
        # The check interval is budgeted in this thread's CPU time: waiting for the GIL (the
        # conntrack walk after an apply or repair) or for a busy machine's CPU would stretch
        # wall time and, through the budget, delay the next check past the 2 s repair bound.
        self._check_seconds = time.thread_time() - cpu
        self.metrics.set("drift_check_seconds", time.monotonic() - started)
        return result

    def _check_drift(self) -> None:
        if self._in_force is None:
            return
        current = self._digest()
        if current is None or current == self._in_force_digest:
            return
        log.warning(
            "node %s: kernel table %s behind our back; restoring it",
            self.config.node,
            "deleted" if current == drift.ABSENT else "changed",
        )
        self.metrics.inc("drift_repairs_total")
        try:
            self.kernel.apply(self._in_force)
        except (KernelError, OSError) as e:
            self.metrics.inc("apply_errors_total")
            log.error("node %s: restoring the table failed: %s", self.config.node, e)
            return
        self._in_force_digest = self._digest()
        # While the table was missing or damaged, anything could connect.
        with self._lock:
            rules = self.view.rules
        if rules is not None and self._applied is not None:
            flows = self._flows_of(self._in_force, rules.pods)
            if flows is not None:
                self._flows.submit((flows, None))

    def _report(
        self,
        generation: int | None,
        error: str | None,
        pods: tuple[Any, ...],
        policies: tuple[Any, ...],
        flows: Flows | None = None,
    ) -> None:
        """Queue the status (if it changed) and the clean-up of ``flows`` (if any); the status
        waits for the clean-up unless the kernel re-checks established flows itself."""
        status = None
        if (generation, error) != self._reported:
            self._reported = (generation, error)
            status = {
                "appliedGeneration": generation,
                "appliedAt": datetime.now(UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "pods": len(pods),
                "policies": len(policies),
                "unknownEndpoints": self._unknown or "",
                "error": error or "",
            }
        if status is not None and self.config.render.ct_mark_mask:
            self._status.submit(status)
            status = None
        if flows is not None or status is not None:
            self._flows.submit((flows, status))

    def _try_write_status(self, status: dict[str, Any]) -> bool:
        """Write ``status`` (on the ``_status`` thread); False: retry it later. A missing
        NodeRules has no status to write: that one is dropped."""
        try:
            self._write_status(status)
        except Exception as e:  # noqa: BLE001 - the API may be away; retried
            if isinstance(e, ApiException) and e.status == 404:
                return True
            log.warning("node %s: cannot write status: %s", self.config.node, e)
            return False
        return True

    def _write_status(self, status: dict[str, Any]) -> None:
        self.custom.patch_cluster_custom_object_status(
            GROUP,
            VERSION,
            NODE_RULES,
            self.config.node,
            {"status": status},
            _request_timeout=timeouts.REQUEST,
        )


def _merge_flows_jobs(older: FlowsJob, newer: FlowsJob) -> FlowsJob:
    """A newer job replaces each part it has: a newer ruleset's clean-up covers the older one
    (every flow is judged against what is in force now), and a job without one (a status
    only: the rules in force did not change) keeps the clean-up still waiting."""
    return (newer[0] or older[0], newer[1] or older[1])


class _Newest(Generic[T]):
    """Works through submitted jobs on its own thread, the newest only: a job still waiting
    when a newer one arrives is dropped, and a slow job never holds up the thread that submits.
    ``handle`` returns False to have its job retried after ``retry_after`` seconds, unless a
    newer job has replaced it by then; ``merge`` says what a newer job replacing a waiting one
    keeps of it (default: nothing)."""

    def __init__(
        self,
        name: str,
        handle: Callable[[T], bool],
        retry_after: float,
        merge: Callable[[T, T], T] = lambda _older, newer: newer,
    ) -> None:
        self._handle = handle
        self._merge = merge
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._pending: T | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, join: float = 0.0) -> None:
        self._stop.set()
        self._wake.set()
        if join:
            self._thread.join(timeout=join)

    def submit(self, job: T) -> None:
        with self._lock:
            pending = self._pending
            self._pending = job if pending is None else self._merge(pending, job)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                job, self._pending = self._pending, None
            if job is None or self._stop.is_set() or self._handle(job):
                continue
            with self._lock:
                if self._pending is None:
                    self._pending = job
            if self._stop.wait(self._retry_after):
                return
            self._wake.set()
