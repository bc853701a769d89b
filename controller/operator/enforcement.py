"""When is a policy change enforced on every node it spans? (pure bookkeeping)

A change is *published* when the NodeRules of every node whose rules mention the policy have
been written; it is *enforced* when each of those nodes' agents reports (status.appliedGeneration)
a generation at least as new as the one written for it.

Every published change of a policy is tracked on its own, so under continuous churn each one is
still reported when its nodes have applied it. Changes that arrive before the previous one was
published are enforced by the same writes: they join it (``changes`` counts them).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field


@dataclass
class _Pending:
    first: float  # monotonic time of the earliest change this entry covers
    last: float  # ... and of the latest
    changes: int = 1
    required: dict[str, int] | None = None  # node -> generation, once published


@dataclass(frozen=True)
class Enforced:
    policy: str
    nodes: int  # nodes whose rules mention the policy
    seconds: float  # since the latest change it covers
    oldest: float  # since the earliest (== seconds when it covers one change)
    changes: int


@dataclass
class EnforcementTracker:
    pending: dict[str, list[_Pending]] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)  # node -> reported generation
    # Something was published or reported since ``done`` last looked: only then can an entry
    # be complete (``done`` runs every publish cycle; 10k pending policies are a long walk).
    _dirty: bool = False

    def changed(self, policy: str, now: float) -> None:
        entries = self.pending.setdefault(policy, [])
        if entries and entries[-1].required is None:
            entries[-1].last = now
            entries[-1].changes += 1
        else:
            entries.append(_Pending(now, now))

    def forget(self, policy: str) -> None:
        self.pending.pop(policy, None)

    def unpublished(self) -> set[str]:
        """Policies with a change not published yet."""
        return {p for p, entries in self.pending.items() if entries[-1].required is None}

    def published(
        self,
        spans: Mapping[str, frozenset[str]],
        generations: Mapping[str, int],
        unfinished: AbstractSet[str] = frozenset(),
    ) -> None:
        """Every write that concerns a policy is done, except for the ``unfinished`` policies
        (a write of theirs is pending, in flight or failing): ``spans`` maps policy -> nodes
        whose rules mention it."""
        for policy, entries in self.pending.items():
            entry = entries[-1]
            if entry.required is None and policy not in unfinished:
                nodes = spans.get(policy, frozenset())
                entry.required = {n: generations[n] for n in nodes if n in generations}
                self._dirty = True

    def reported(self, node: str, generation: int) -> None:
        self.applied[node] = max(generation, self.applied.get(node, 0))
        self._dirty = True

    def done(self, now: float) -> list[Enforced]:
        """Every change now enforced, oldest first per policy."""
        if not self._dirty:
            return []
        self._dirty = False
        out = []
        for policy, entries in list(self.pending.items()):
            while entries and entries[0].required is not None:
                entry, required = entries[0], entries[0].required
                if not all(self.applied.get(n, 0) >= g for n, g in required.items()):
                    break
                out.append(
                    Enforced(
                        policy, len(required), now - entry.last, now - entry.first, entry.changes
                    )
                )
                entries.pop(0)
            if not entries:
                del self.pending[policy]
        return out
