"""When is a policy change enforced on every node it spans? (pure bookkeeping)

A change is *published* when the NodeRules of every node whose rules mention the policy have
been written; it is *enforced* when each of those nodes' agents reports (status.appliedGeneration)
a generation at least as new as the one written for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field


@dataclass
class _Pending:
    changed_at: float  # monotonic time of the policy event
    required: dict[str, int] | None = None  # node -> generation, once published


@dataclass
class EnforcementTracker:
    pending: dict[str, _Pending] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)  # node -> reported generation

    def changed(self, policy: str, now: float) -> None:
        self.pending[policy] = _Pending(now)

    def forget(self, policy: str) -> None:
        self.pending.pop(policy, None)

    def published(
        self,
        spans: Mapping[str, frozenset[str]],
        generations: Mapping[str, int],
        unfinished: AbstractSet[str] = frozenset(),
    ) -> None:
        """Everything is written except what concerns the ``unfinished`` policies (a write
        that keeps failing): ``spans`` maps policy -> nodes whose rules mention it."""
        for policy, entry in self.pending.items():
            if entry.required is None and policy not in unfinished:
                nodes = spans.get(policy, frozenset())
                entry.required = {n: generations[n] for n in nodes if n in generations}

    def reported(self, node: str, generation: int) -> None:
        self.applied[node] = max(generation, self.applied.get(node, 0))

    def done(self, now: float) -> list[tuple[str, int, float]]:
        """(policy, nodes, seconds since the change) for every change now enforced."""
        out = []
        for policy, entry in list(self.pending.items()):
            if entry.required is None:
                continue
            if all(self.applied.get(n, 0) >= g for n, g in entry.required.items()):
                out.append((policy, len(entry.required), now - entry.changed_at))
                del self.pending[policy]
        return out
