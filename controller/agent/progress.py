"""What holds an agent back from enforcing what it was told, as pure bookkeeping.

Two things can: groups its NodeRules refer to that have not arrived, and NodeRules
generations that have arrived but are not in force yet.

A missing group is normal for a moment (the group and the rules come through two watches),
but one that never arrives (deleted by hand, too large to publish, refused by the API
server) must not stall every later change on the node. So ``MissingGroups`` lets the agent
wait ``grace`` seconds for each missing group and then apply with ``stand_ins``: empty groups,
so the rules that need one allow nothing from it (fail closed, never open). The same grace
holds at start: neither the table an earlier agent left (possibly older and wider) nor no
table at all (everything open) is better than the current rules with the missing peers
allowing nothing.

``GenerationLag`` says how long the oldest generation that arrived has been waiting to be
applied, for the liveness check.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from controller.compiler.ir import AddressGroup, Group, NodeRules, PortGroup
from controller.model import Protocol

STAND_IN_PEER = "missing group, enforced as empty (fail closed)"


@dataclass
class MissingGroups:
    """When each currently missing group was first noticed missing."""

    grace: float
    _since: dict[str, float] = field(default_factory=dict)
    _waiting: bool = False

    def update(self, missing: frozenset[str], now: float) -> bool:
        """Record the groups missing ``now``; True when the rules may be applied (with
        ``stand_ins`` for the missing ones): nothing is missing, or every missing group has
        been missing for ``grace`` seconds. A group that arrives and goes again starts over."""
        self._since = {name: self._since.get(name, now) for name in missing}
        self._waiting = any(now - since < self.grace for since in self._since.values())
        return not self._waiting

    def deadline(self) -> float | None:
        """While ``update`` says to wait: when the grace of the groups missing now ends."""
        if not self._waiting:
            return None
        return max(self._since.values()) + self.grace


def stand_ins(rules: NodeRules, names: Iterable[str]) -> dict[str, Group]:
    """An empty group of the right kind for each of ``names`` (groups ``rules`` refer to)."""
    port_groups = {
        name
        for policy in rules.policies
        for rule in policy.ingress + policy.egress
        for name in rule.port_groups
    } | set(rules.dns)
    return {
        name: (
            PortGroup(name, STAND_IN_PEER, Protocol.TCP, "")
            if name in port_groups
            else AddressGroup(name, STAND_IN_PEER)
        )
        for name in names
    }


@dataclass
class GenerationLag:
    """NodeRules generations seen but not applied yet, oldest first, with when they arrived."""

    _pending: deque[tuple[int, float]] = field(default_factory=deque)
    _applied: int | None = None

    def seen(self, generation: int | None, now: float) -> None:
        """A NodeRules generation arrived (None: the object is gone, nothing to apply)."""
        latest = self._pending[-1][0] if self._pending else self._applied
        if generation is None or (latest is not None and generation < latest):
            # gone, or deleted and re-created (generations start over at 1)
            self._pending.clear()
            self._applied = None
            if generation is None:
                return
        if self._applied is not None and generation <= self._applied:
            return
        if not self._pending or self._pending[-1][0] != generation:
            self._pending.append((generation, now))

    def applied(self, generation: int | None) -> None:
        self._applied = generation
        while self._pending and generation is not None and self._pending[0][0] <= generation:
            self._pending.popleft()

    def behind(self, now: float) -> tuple[int, float, int | None] | None:
        """(oldest unapplied generation, seconds since it arrived, generation in force), or
        None when everything that arrived is applied."""
        if not self._pending:
            return None
        generation, since = self._pending[0]
        return generation, now - since, self._applied
