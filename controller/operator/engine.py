"""The operator's state, independent of kopf: compile what the watches say, publish it.

Every method here runs on one thread, the compile worker (``run.py`` hands each watch event,
publish cycle and reconcile step to a single-thread executor): compiler and publish state need
no locks, kopf's event loop never waits for a compile, and each object's events keep their
order. API writes run in a thread pool; their outcomes come back through ``outcomes`` and are
applied by the next ``cycle``.

Feeding is monotonic: every object's resourceVersion is remembered (and a tombstone for each
deletion), so an event older than what is held is ignored, and a reconcile listing can forget
exactly the objects it proves gone, as a DELETED event would have (kopf re-lists after a 410
or a broken connection without reporting what vanished meanwhile).

Only the lease holder writes. A new leader lists what is published and writes only the
differences, so restarts and failovers do not flap anything; afterwards the published cache
follows the answers to our writes and the events of our own resources, so objects deleted or
edited by hand are re-planned within a publish cycle.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

from controller.compiler import Changes, Compiler
from controller.compiler.compiler import DNS_GROUPS
from controller.metrics import Metrics
from controller.model import ApiObject, NetworkPolicy, ParseError, Pod, parse_object
from controller.model.config import DefaultDeny
from controller.model.dns import parse_dns_service
from controller.operator.enforcement import EnforcementTracker
from controller.publish.desired import DesiredState
from controller.publish.plan import Body, Key, Write
from controller.publish.queue import BACKOFF_CAP, Outcome, WriteQueue
from controller.publish.shards import shard_group
from controller.publish.versions import Versions, not_after
from controller.resources import (
    ADDRESS_GROUPS,
    API_VERSION,
    MANAGED_BY,
    NODE_RULES,
    node_rules_from_body,
)

log = logging.getLogger(__name__)

CR_KINDS = {ADDRESS_GROUPS: "AddressGroup", NODE_RULES: "NodeRules"}
# The kinds compiled, in the order of the initial listing: the small kinds first, so the pods
# (by far the most objects) find their namespaces, nodes and policies already there.
# Under continuous churn the write queue never drains: policy changes whose own writes are
# done are looked for this often (it scans the pending writes and the published NodeRules).
SETTLE_CHECK = 0.1
ENFORCEMENT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LISTED_KINDS = ("Namespace", "Node", "NetworkPolicy", "Pod")
FAILURE_KINDS = (
    "too_large",
    "invalid",
    "forbidden",
    "not_found",
    "conflict",
    "throttled",
    "server",
    "unreachable",
    "other",
)


@dataclass(frozen=True)
class OperatorConfig:
    default_deny: DefaultDeny = DefaultDeny()
    lease_namespace: str = "kube-system"
    lease_name: str = "nftpolicy-operator"
    identity: str = "nftpolicy"
    publish_interval: float = 0.05
    write_concurrency: int = 8  # custom-resource writes in flight at once
    reconcile_period: float = 300.0  # full re-list of everything watched (a backstop)
    stuck_after: float = 60.0  # liveness: no publish cycle completed for this long
    write_grace: float = 60.0  # readiness: one object's writes failing for this long
    reconcile_grace: float = 600.0  # liveness: reconcile listings failing for this long


@dataclass(frozen=True)
class Notice:
    """A Kubernetes Event to post (by ``run.py``, from a kopf context)."""

    ref: Mapping[str, Any]  # apiVersion, kind, metadata.name/namespace/uid of the object
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class FailingWrite:
    """The longest failure streak, as health checks read it from another thread."""

    write: str
    since: float
    attempts: int
    failure: str


class Engine:
    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.compiler = Compiler(config.default_deny)
        self.desired = DesiredState(self.compiler)
        self.enforcement = EnforcementTracker()
        self.versions = Versions()
        self.queue: WriteQueue | None = None  # while leading
        self.term = 0  # leadership terms: outcomes of writes from an older one are dropped
        self.outcomes: queue.SimpleQueue[tuple[int, Write, Outcome]] = queue.SimpleQueue()
        self.notices: list[Notice] = []
        self.failing: FailingWrite | None = None
        # Kinds whose initial listing is not complete yet -> objects listed so far. Replaced
        # whole on every change: health checks read it from another thread.
        self._unlisted: dict[str, int] = dict.fromkeys(LISTED_KINDS, 0)
        self.policy_refs: dict[str, dict[str, Any]] = {}  # for Events
        self._recheck: set[Key] = set()  # published objects changed by someone else
        self._warned: dict[tuple[str, str, str], tuple[str, ...]] = {}  # (kind, key, reason)
        self._unsettled = True  # something changed since enforcement was last brought up to date
        self._settle_checked = 0.0  # when published changes were last looked for under churn
        self._dns_blocked: frozenset[str] = frozenset()  # DNS groups published empty
        self.metrics = Metrics("nftpolicy_operator")
        self.metrics.describe_histogram(
            "policy_enforcement_seconds",
            "NetworkPolicy change -> applied by the agent of every node its rules reach",
            ENFORCEMENT_BUCKETS,
        )
        for name, kind, text in (
            ("leader", "gauge", "1 while this replica holds the lease and publishes"),
            ("synced", "gauge", "1 once the initial listing of the cluster is compiled"),
            ("pending_writes", "gauge", "custom-resource writes planned but not done yet"),
            ("writes_total", "counter", "AddressGroup/NodeRules creates, patches and deletes"),
            ("write_bytes_total", "counter", "bytes of custom-resource writes sent"),
            ("write_failures_total", "counter", "failed custom-resource writes (each attempt)"),
            ("repairs_total", "counter", "our objects found deleted or changed by someone else"),
            (
                "ip_conflicts_total",
                "counter",
                "pod IPs reported by several live pods (newest wins)",
            ),
            (
                "object_warnings_total",
                "counter",
                "objects accepted with a problem: setting ignored, policy over a limit",
            ),
            (
                "dns_blocked",
                "gauge",
                "1 while default deny is in force but no cluster DNS endpoint was found",
            ),
            ("reconciles_total", "counter", "full re-lists compared with what was compiled"),
            ("reconcile_corrections_total", "counter", "objects a re-list fed or forgot"),
            (
                "invalid_policies_total",
                "counter",
                "NetworkPolicy events that could not be compiled",
            ),
        ):
            self.metrics.describe(name, kind, text)
        for kind in FAILURE_KINDS:
            self.metrics.describe(
                f"write_failures_{kind}_total", "counter", f"failed writes: {kind}"
            )

    # ---- feeding -----------------------------------------------------------------------------

    def event(self, kind: str, type: str | None, body: Mapping[str, Any]) -> bool:
        """A watch event (``type`` None: kopf's listing). Returns whether it shows that kopf
        listed again after the initial sync (so objects may have vanished unreported)."""
        key = _key(kind, body)
        relisted = type is None and self.synced
        version = _version(body)
        if type == "DELETED":
            if self.versions.delete(kind, key, version):
                self.forget(kind, key)
        elif self.versions.admit(kind, key, version):
            self.feed(kind, body)
        return relisted

    def feed(self, kind: str, body: Mapping[str, Any]) -> ParseError | None:
        """Compile an object's new state; returns the error if unparseable."""
        key = _key(kind, body)
        try:
            obj: ApiObject = parse_object({"kind": kind, **body})
        except ParseError as e:
            if kind == "NetworkPolicy":
                # Keep enforcing the last good version rather than silently dropping it.
                log.error("cannot compile %s: %s", key, e)
                self.metrics.inc("invalid_policies_total")
                self.warn(kind, body, "InvalidPolicy", f"not enforced: {e}")
            return e
        self.compiler.upsert(obj)
        self._report_warnings(kind, key, body, "IgnoredSetting", getattr(obj, "warnings", ()))
        if isinstance(obj, NetworkPolicy):
            self.enforcement.changed(obj.key, time.monotonic())
            self.policy_refs[obj.key] = _ref(body, kind)
            self._unsettled = True
            problem = self.compiler.policy_problems().get(obj.key)
            self._report_warnings(kind, key, body, "PolicyTooLarge", (problem,) if problem else ())
        if isinstance(obj, Pod):
            for conflict in self.compiler.take_ip_conflicts():
                self.metrics.inc("ip_conflicts_total")
                log.warning("duplicate pod IP: %s; the others lose it", conflict)
        return None

    def _report_warnings(
        self, kind: str, key: str, body: Mapping[str, Any], reason: str, warnings: tuple[str, ...]
    ) -> None:
        """Log, count and post (once per distinct set) what an object was accepted with
        despite a problem: a bad annotation that was ignored, a policy over a limit that is
        enforced fail-closed. The object itself is never dropped for it."""
        slot = (kind, key, reason)
        if self._warned.get(slot, ()) == warnings:
            return
        if warnings:
            self._warned[slot] = warnings
        else:
            self._warned.pop(slot, None)
        for text in warnings:
            log.warning("%s %s: %s", kind, key, text)
            self.metrics.inc("object_warnings_total")
            self.warn(kind, body, reason, text)

    def warn(self, kind: str, body: Mapping[str, Any], reason: str, message: str) -> None:
        """Queue a Warning Event about a watched object: the one place problems found while
        feeding (an invalid policy, a bad annotation, a policy over a limit) are reported."""
        self.notices.append(Notice(_ref(body, kind), "Warning", reason, message))

    def forget(self, kind: str, key: str) -> None:
        """The object is gone (a DELETED event, or absent from a complete listing)."""
        for reason in ("IgnoredSetting", "PolicyTooLarge"):
            self._warned.pop((kind, key, reason), None)
        if kind == "Pod":
            self.compiler.delete_pod(key)
        elif kind == "NetworkPolicy":
            self.compiler.delete_policy(key)
            self.enforcement.forget(key)
            self.policy_refs.pop(key, None)
        elif kind == "Namespace":
            self.compiler.delete_namespace(key)
        elif kind == "Node":
            self.compiler.delete_node(key)

    def dns_listed(self, bodies: Mapping[str, Mapping[str, Any]]) -> None:
        """A complete listing of the DNS Services (the narrow watch's list or re-list):
        Services absent from it are forgotten."""
        for key in self.compiler.dns_service_keys() - set(bodies):
            self.compiler.set_dns_service(key, None)
        for body in bodies.values():
            self.dns_event("ADDED", body)

    def dns_event(self, type: str, body: Mapping[str, Any]) -> None:
        """A watch event of a DNS Service. One that cannot be read counts as absent (its
        addresses are not allowed: fail closed), with an error saying why."""
        key = _key("Service", body)
        if type == "DELETED":
            self.compiler.set_dns_service(key, None)
            return
        try:
            service = parse_dns_service(body)
        except ParseError as e:
            log.error("DNS Service %s ignored: %s", key, e)
            self.compiler.set_dns_service(key, None)
            return
        self.compiler.set_dns_service(key, service)

    def observed(self, plural: str, type: str | None, body: Mapping[str, Any]) -> bool:
        """A watch event of our own AddressGroups/NodeRules: agents' status reports, and
        objects deleted or edited by someone else. Returns what ``event`` does."""
        name = str(body.get("metadata", {}).get("name"))
        relisted = type is None and self.synced
        gone = type == "DELETED"
        if plural == NODE_RULES and not gone:
            applied = (body.get("status") or {}).get("appliedGeneration")
            if applied is not None:
                self.enforcement.reported(name, int(applied))
                self._enforced(time.monotonic())
        key = (plural, name)
        q = self.queue
        if q is None or (not gone and not _managed(body) and key not in q.published):
            return relisted
        if q.observe(key, None if gone else body, _version(body)) and key not in q.in_flight:
            self.metrics.inc("repairs_total")
            how = "deleted" if gone else "changed"
            log.info("%s/%s was %s by someone else; re-planning it", *key, how)
            self._recheck_key(key)
        return relisted

    @property
    def synced(self) -> bool:
        """The initial listing of every compiled kind is complete (our own paged listing, not
        kopf's: kopf's events feed the engine as well, before, during or after it)."""
        return not self._unlisted

    # ---- reconcile ---------------------------------------------------------------------------

    def relisted(self, kind: str, items: list[dict[str, Any]], listed: set[str]) -> int:
        """A page of a listing (the initial one or a reconcile): feed what is newer than what
        is held, and add the keys to ``listed``. Returns how many were fed."""
        fed = 0
        for body in items:
            key = _key(kind, body)
            listed.add(key)
            if self.versions.admit(kind, key, _version(body)):
                self.feed(kind, body)
                fed += 1
        if kind in self._unlisted:
            self._unlisted = {**self._unlisted, kind: len(listed)}
        return fed

    def relist_done(self, kind: str, listed: Set[str], version: str) -> int:
        """A complete listing at ``version`` named ``listed``: forget what it proves gone.
        The first one of each kind completes that kind's initial listing."""
        if kind in self._unlisted:
            self._unlisted = {k: n for k, n in self._unlisted.items() if k != kind}
        self.versions.prune(kind, version)
        gone = self.versions.absent(kind, listed, version)
        for key in gone:
            self.versions.delete(kind, key, version)
            self.forget(kind, key)
        return len(gone)

    def published_relisted(self, listed: Mapping[Key, Body], versions: Mapping[str, str]) -> int:
        """A complete listing of our own objects: correct the published cache."""
        q = self.queue
        if q is None:
            return 0
        corrected = [k for k, body in listed.items() if q.observe(k, body)]
        for key, body in list(q.published.items()):
            version = body.get("metadata", {}).get("resourceVersion")
            if key not in listed and not_after(version, versions.get(key[0], "")):
                q.forget(key)
                corrected.append(key)
        for key in corrected:
            self._recheck_key(key)
        return len(corrected)

    # ---- publishing ------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.queue is not None

    def start_leading(self, published: Mapping[Key, Body]) -> None:
        """We just became leader: plan everything against what is really published."""
        self.term += 1
        self.queue = WriteQueue(published, _references)
        self.desired.adopt(published)
        self.compiler.take_changes()
        self._want(self.desired.everything())
        for key in published:
            if key not in self.queue.pending:
                self.queue.want(key, None)  # ours, and nothing wants it any more
        self._recheck.clear()
        self._unsettled = True
        log.info("leading: %d objects published, planning the differences", len(published))

    def stop_leading(self) -> None:
        self.term += 1
        self.queue = None
        self.failing = None
        self._recheck.clear()
        self.metrics.set("pending_writes", 0)

    def cycle(self, now: float) -> tuple[list[Write], list[Notice]]:
        """One publish step: apply write outcomes, compile what changed, and return the
        writes to send now (they count as in flight) and the Events to post."""
        q = self.queue
        writes: list[Write] = []
        if q is not None:
            self._apply_outcomes(q, now)
            changes = self.compiler.take_changes()
            if changes:
                self._unsettled = True
                self._want(self.desired.bodies(changes))
            if self._recheck:
                keys = [k for k in self._recheck if k not in q.pending]
                self._recheck.clear()
                groups = frozenset(shard_group(n) for p, n in keys if p == ADDRESS_GROUPS)
                nodes = frozenset(n for p, n in keys if p == NODE_RULES)
                self._want(self.desired.bodies(Changes(groups, nodes), every_shard=True))
            writes = q.ready(now, self.config.write_concurrency)
            # Changes whose writes are all done are recorded when the queue drains, and under
            # continuous churn (it never drains) every SETTLE_CHECK seconds.
            idle = not writes and not q.in_flight
            if self._unsettled and (idle or now - self._settle_checked >= SETTLE_CHECK):
                self._settled(q, idle, now)
            streak = q.oldest_streak()
            self.failing = (
                None
                if streak is None
                else FailingWrite(streak.write, streak.since, streak.attempts, str(streak.failure))
            )
            self.metrics.set("pending_writes", len(q.pending))
        if self.enforcement.pending:
            self._enforced(now)
        notices, self.notices = self.notices, []
        return writes, notices

    def _want(self, bodies: Mapping[Key, Body | None]) -> None:
        assert self.queue is not None
        for key, body in bodies.items():
            refs = self.desired.groups_of(key[1]) if key[0] == NODE_RULES else frozenset()
            self.queue.want(key, body, refs)
        self._check_dns(bodies)

    def _check_dns(self, bodies: Mapping[Key, Body | None]) -> None:
        """Warn (log, Event on the DNS namespace, metric) when a DNS group is published,
        so default deny is in force on some node, but empty: default deny then blocks DNS,
        because nothing matched where the cluster's DNS was said to be. Once per change."""
        blocked = set(self._dns_blocked)
        for name in DNS_GROUPS.values():
            if (ADDRESS_GROUPS, name) in bodies:
                body = bodies[(ADDRESS_GROUPS, name)]
                if body is not None and not body["spec"].get("members"):
                    blocked.add(name)
                else:
                    blocked.discard(name)
        if blocked == self._dns_blocked:
            return
        self._dns_blocked = frozenset(blocked)
        self.metrics.set("dns_blocked", 1.0 if blocked else 0.0)
        dns = self.config.default_deny.dns
        if not blocked:
            log.info("cluster DNS found: default deny allows DNS to it again")
            return
        protocols = " and ".join(p for p, n in DNS_GROUPS.items() if n in blocked)
        message = (
            f"default deny blocks DNS over {protocols}: no pod in namespace {dns.namespace} "
            f"matches {dns.pod_selector}, no Service there matches {dns.service_selector} on "
            f"port 53/{protocols}, and no dns.addresses are set, so pods isolated for egress "
            "by default deny cannot resolve names; set the chart's dns values to where the "
            "cluster's DNS runs"
        )
        log.warning("%s", message)
        ref = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": dns.namespace}}
        self.notices.append(Notice(ref, "Warning", "DNSNotFound", message))

    def _recheck_key(self, key: Key) -> None:
        assert self.queue is not None
        if key not in self.queue.pending:
            self._recheck.add(key)

    def _apply_outcomes(self, q: WriteQueue, now: float) -> None:
        while True:
            try:
                term, write, outcome = self.outcomes.get_nowait()
            except queue.Empty:
                return
            if term == self.term:
                self._unsettled = True
                self._outcome(q, write, outcome, now)

    def _outcome(self, q: WriteQueue, write: Write, outcome: Outcome, now: float) -> None:
        failure = outcome.failure
        if failure is None:
            self.metrics.inc("writes_total")
            self.metrics.inc("write_bytes_total", outcome.sent)
        else:
            self.metrics.inc("write_failures_total")
            self.metrics.inc(f"write_failures_{failure.kind}_total")
        streak = q.finished(write, outcome, now)
        if failure is None:
            if streak is not None:
                log.warning(
                    "%s succeeded after %d failed attempt(s) in %.0f s",
                    write,
                    streak.attempts,
                    now - streak.since,
                )
        elif streak is None:  # our cache was wrong (404 on replace, 409 on create)
            log.info("%s: %s; planning it again against what is there", write, failure)
        elif streak.attempts == 1:
            log.warning(
                "%s failed: %s; retrying this object alone, backing off up to %.0f s",
                write,
                failure,
                BACKOFF_CAP,
            )
            self._report_failure(q, write, str(failure))
        else:
            log.debug("%s failed again (attempt %d): %s", write, streak.attempts, failure)

    def _report_failure(self, q: WriteQueue, write: Write, failure: str) -> None:
        """A Warning Event where someone will look: on the NodeRules object itself, or on the
        policies whose rules use a group."""
        message = f"{write} failed: {failure}; retrying with backoff"
        if write.plural == NODE_RULES:
            meta = dict((q.published.get(write.key) or {}).get("metadata") or {})
            own = {
                "apiVersion": API_VERSION,
                "kind": "NodeRules",
                "metadata": {"name": write.name, "uid": meta.get("uid")},
            }
            self.notices.append(Notice(own, "Warning", "PublishFailed", message))
            return
        for policy in self.compiler.policies_using(shard_group(write.name)):
            ref = self.policy_refs.get(policy)
            if ref is not None:
                self.notices.append(Notice(ref, "Warning", "PublishFailed", message))

    def _settled(self, q: WriteQueue, idle: bool, now: float) -> None:
        """Record the published generation of every policy change whose writes are done,
        i.e. that no pending, in-flight or failing write concerns. ``idle``: nothing is in
        flight, so what is still pending cannot go out yet; until then, look again later."""
        self._settle_checked = now
        if not self.enforcement.unpublished():
            self._unsettled = False
            return
        self._unsettled = not idle
        stuck: set[str] = set()
        for plural, name in q.pending:
            if plural == ADDRESS_GROUPS:
                stuck.update(self.compiler.policies_using(shard_group(name)))
                continue
            for body in (q.pending[(plural, name)], q.published.get((plural, name))):
                for entry in (body or {}).get("spec", {}).get("policies", ()):
                    stuck.add(entry["key"])
        spans = self._policy_spans(q, stuck)
        nodes: set[str] = set().union(*spans.values())
        generations = {n: g for n in nodes if (g := q.generation(n)) is not None}
        self.enforcement.published(spans, generations, stuck)

    def _policy_spans(self, q: WriteQueue, stuck: Set[str]) -> dict[str, frozenset[str]]:
        spans: dict[str, set[str]] = {
            policy: set() for policy in self.enforcement.unpublished() if policy not in stuck
        }
        if not spans:
            return {}
        for (plural, name), body in q.published.items():
            if plural != NODE_RULES:
                continue
            for entry in body.get("spec", {}).get("policies", ()):
                if entry["key"] in spans:
                    spans[entry["key"]].add(name)
        return {k: frozenset(v) for k, v in spans.items()}

    def _enforced(self, now: float) -> None:
        """An Enforced Event for every policy change now applied on all the nodes it spans."""
        for done in self.enforcement.done(now):
            self.metrics.observe("policy_enforcement_seconds", done.oldest)
            ref = self.policy_refs.get(done.policy)
            if ref is not None:
                message = f"enforced on {done.nodes} node(s) {done.seconds * 1000:.0f} ms after the change"
                if done.changes > 1:
                    message += f" ({done.changes} changes, the first {done.oldest:.1f} s ago)"
                self.notices.append(Notice(ref, "Normal", "Enforced", message))

    # ---- health (read from the metrics server's thread) --------------------------------------

    def write_problem(self, now: float) -> str | None:
        failing = self.failing
        if failing is None or now - failing.since <= self.config.write_grace:
            return None
        return (
            f"{failing.write} failing for {now - failing.since:.0f} s "
            f"({failing.attempts} attempts): {failing.failure}"
        )

    def sync_problem(self) -> str | None:
        unlisted = self._unlisted
        if not unlisted:
            return None
        done = ", ".join(k for k in LISTED_KINDS if k not in unlisted) or "none"
        going = ", ".join(f"{k} {n}" for k, n in unlisted.items())
        return f"initial listing not complete: objects listed so far: {going} (done: {done})"


def _key(kind: str, body: Mapping[str, Any]) -> str:
    meta = body.get("metadata", {})
    if kind in ("Pod", "NetworkPolicy", "Service"):
        return f"{meta.get('namespace', 'default')}/{meta.get('name')}"
    return str(meta.get("name"))


def _version(body: Mapping[str, Any]) -> str:
    return str(body.get("metadata", {}).get("resourceVersion", ""))


def _managed(body: Mapping[str, Any]) -> bool:
    labels = body.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in MANAGED_BY.items())


def _references(body: Body) -> frozenset[str]:
    return node_rules_from_body(body).groups()


def _ref(body: Mapping[str, Any], kind: str) -> dict[str, Any]:
    meta = body.get("metadata", {})
    api = "v1" if kind in ("Pod", "Namespace", "Node") else "networking.k8s.io/v1"
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")},
    }
