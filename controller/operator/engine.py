"""The operator's state and its publish step, independent of kopf.

kopf delivers watch events (``feed``/``forget``) on its event loop; ``publish`` runs there too
for the compile step and hands the API writes to a thread. Only the lease holder writes. A new
leader first lists what is published and writes only differences, so restarts and failovers
do not flap anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.compiler import Compiler
from controller.metrics import Metrics
from controller.model import ApiObject, NetworkPolicy, ParseError, parse_object
from controller.model.config import DefaultDeny
from controller.operator.enforcement import EnforcementTracker
from controller.publish.desired import DesiredState
from controller.publish.plan import Key, Write, plan
from controller.resources import NODE_RULES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperatorConfig:
    default_deny: DefaultDeny = DefaultDeny()
    lease_namespace: str = "kube-system"
    lease_name: str = "nftpolicy-operator"
    identity: str = "nftpolicy"
    publish_interval: float = 0.05
    max_writes_per_cycle: int = 500  # rate limit: the rest goes in the next cycle


class Engine:
    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.compiler = Compiler(config.default_deny)
        self.desired = DesiredState(self.compiler)
        self.enforcement = EnforcementTracker()
        self.published: dict[Key, Mapping[str, Any]] | None = None
        self.generations: dict[str, int] = {}  # node -> NodeRules generation we wrote
        self.pending: dict[Key, Mapping[str, Any] | None] = {}
        self.expected: set[tuple[str, str]] | None = None  # initial listing still to arrive
        self.policy_refs: dict[str, dict[str, Any]] = {}  # for Events
        self.metrics = Metrics("nftpolicy_operator")
        for name, kind, text in (
            ("leader", "gauge", "1 while this replica holds the lease and publishes"),
            ("synced", "gauge", "1 once the initial listing of the cluster is compiled"),
            ("pending_writes", "gauge", "custom-resource writes planned but not done yet"),
            ("writes_total", "counter", "AddressGroup/NodeRules creates, patches and deletes"),
            ("write_bytes_total", "counter", "bytes of custom-resource writes sent"),
            ("write_failures_total", "counter", "publish cycles that stopped at a failed write"),
            (
                "invalid_policies_total",
                "counter",
                "NetworkPolicy events that could not be compiled",
            ),
        ):
            self.metrics.describe(name, kind, text)

    # ---- feeding (kopf event loop) ---------------------------------------------------------

    def feed(self, kind: str, body: Mapping[str, Any]) -> ParseError | None:
        """An ADDED/MODIFIED (or initial listing) event; returns the error if unparseable."""
        key = _key(kind, body)
        self._seen(kind, key)
        try:
            obj: ApiObject = parse_object({"kind": kind, **body})
        except ParseError as e:
            if kind == "NetworkPolicy":
                # Keep enforcing the last good version rather than silently dropping it.
                log.error("cannot compile %s: %s", key, e)
            return e
        self.compiler.upsert(obj)
        if isinstance(obj, NetworkPolicy):
            self.enforcement.changed(obj.key, time.monotonic())
            self.policy_refs[obj.key] = _ref(body, kind)
        return None

    def forget(self, kind: str, body: Mapping[str, Any]) -> None:
        """A DELETED event."""
        key = _key(kind, body)
        self._seen(kind, key)
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

    def expect(self, keys: set[tuple[str, str]]) -> None:
        """The complete initial listing (from kopf's pre-populated indexes)."""
        if self.expected is None:
            self.expected = set(keys)

    def _seen(self, kind: str, key: str) -> None:
        if self.expected:
            self.expected.discard((kind, key))

    @property
    def synced(self) -> bool:
        return self.expected is not None and not self.expected

    # ---- publishing --------------------------------------------------------------------------

    def prepare(self) -> list[Write]:
        """Compile what changed into desired bodies and plan writes (kopf event loop)."""
        assert self.published is not None
        changes = self.compiler.take_changes()
        if changes:
            self.pending.update(self.desired.bodies(changes))
        if not self.pending:
            # everything written (also: a policy that selects no pod writes nothing)
            self.enforcement.published(self._policy_spans(), self.generations)
            return []
        writes = plan(self.pending, self.published)
        needed = {(w.plural, w.name) for w in writes}
        self.pending = {k: v for k, v in self.pending.items() if k in needed}
        if not writes:
            self.enforcement.published(self._policy_spans(), self.generations)
        return writes[: self.config.max_writes_per_cycle]

    def start_leading(self, published: dict[Key, Mapping[str, Any]]) -> None:
        """We just became leader: plan everything against what is really published."""
        self.published = published
        self.generations = {
            name: int(body["metadata"].get("generation", 0))
            for (plural, name), body in published.items()
            if plural == NODE_RULES
        }
        self.compiler.take_changes()
        self.pending = dict(self.desired.everything())
        # objects of ours that nothing wants any more
        for key in published:
            self.pending.setdefault(key, None)

    def stop_leading(self) -> None:
        self.published = None
        self.pending.clear()

    def written(self, done: list[tuple[Write, Mapping[str, Any] | None]], sent: int) -> None:
        """Record successful writes (with the API's answer) in the published cache."""
        assert self.published is not None
        self.metrics.inc("writes_total", len(done))
        self.metrics.inc("write_bytes_total", sent)
        for write, answer in done:
            key = (write.plural, write.name)
            self.pending.pop(key, None)
            if write.verb == "delete":
                self.published.pop(key, None)
                if write.plural == NODE_RULES:
                    self.generations.pop(write.name, None)
                continue
            assert answer is not None
            self.published[key] = answer
            if write.plural == NODE_RULES:
                self.generations[write.name] = int(answer["metadata"].get("generation", 0))
        # Not "published" here even if nothing is pending: a policy event fed while these
        # writes were in flight has its changes still in the compiler, and would be counted as
        # enforced on the nodes that mention it so far (often none). The next prepare() takes
        # the compiler's changes first and records it when nothing is left to write.

    def _policy_spans(self) -> dict[str, frozenset[str]]:
        spans: dict[str, set[str]] = {}
        for policy, entry in self.enforcement.pending.items():
            if entry.required is None:  # the others are published already
                spans[policy] = set()
        if not spans or self.published is None:
            return {}
        for (plural, name), body in self.published.items():
            if plural != NODE_RULES:
                continue
            for entry in body.get("spec", {}).get("policies", ()):
                if entry["key"] in spans:
                    spans[entry["key"]].add(name)
        return {k: frozenset(v) for k, v in spans.items()}


def _key(kind: str, body: Mapping[str, Any]) -> str:
    meta = body.get("metadata", {})
    if kind in ("Pod", "NetworkPolicy"):
        return f"{meta.get('namespace', 'default')}/{meta.get('name')}"
    return str(meta.get("name"))


def _ref(body: Mapping[str, Any], kind: str) -> dict[str, Any]:
    meta = body.get("metadata", {})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": kind,
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")},
    }
