"""What an agent knows: its NodeRules and the groups they refer to (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.agent.render import RenderOptions, render
from controller.compiler.ir import Group, NodeRules


@dataclass(frozen=True)
class _Rendered:
    """A ruleset and exactly the objects it was rendered from."""

    rules: NodeRules
    groups: Mapping[str, Group]
    options: RenderOptions
    ruleset: dict[str, Any]

    def renders(
        self, rules: NodeRules, groups: Mapping[str, Group], options: RenderOptions
    ) -> bool:
        """Were these the inputs? By identity: every watch event builds new objects, so the
        same objects mean nothing changed (and comparing large groups by value would cost
        as much as rendering them)."""
        return (
            rules is self.rules
            and options == self.options
            and groups.keys() == self.groups.keys()
            and all(groups[name] is group for name, group in self.groups.items())
        )


@dataclass
class AgentView:
    node: str
    rules: NodeRules | None = None
    generation: int | None = None  # metadata.generation of the NodeRules object
    groups: dict[str, Group] = field(default_factory=dict)
    _last: _Rendered | None = field(default=None, repr=False)

    def missing_groups(self) -> frozenset[str]:
        if self.rules is None:
            return frozenset()
        return self.rules.groups() - set(self.groups)

    def complete(self) -> bool:
        """Rules received and every group they refer to present: safe to apply."""
        return self.rules is not None and not self.missing_groups()

    def ruleset(self, options: RenderOptions) -> dict[str, Any]:
        """The rendered ruleset, rendered again only when the rules or one of the groups they
        refer to were replaced since the last call: the periodic resync re-applies it
        without paying for rendering (seconds, for the largest policies). Callers must not
        modify the returned document."""
        assert self.rules is not None
        needed = {name: self.groups[name] for name in self.rules.groups()}
        last = self._last
        if last is not None and last.renders(self.rules, needed, options):
            return last.ruleset
        ruleset = render(self.rules, needed, options)
        self._last = _Rendered(self.rules, needed, options, ruleset)
        return ruleset
