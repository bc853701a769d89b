"""What an agent knows: its NodeRules and the groups they refer to (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.agent.render import RenderOptions, render
from controller.compiler.ir import Group, NodeRules


@dataclass
class AgentView:
    node: str
    rules: NodeRules | None = None
    generation: int | None = None  # metadata.generation of the NodeRules object
    groups: dict[str, Group] = field(default_factory=dict)

    def missing_groups(self) -> frozenset[str]:
        if self.rules is None:
            return frozenset()
        return self.rules.groups() - set(self.groups)

    def complete(self) -> bool:
        """Rules received and every group they refer to present: safe to apply."""
        return self.rules is not None and not self.missing_groups()

    def ruleset(self, options: RenderOptions) -> dict[str, Any]:
        assert self.rules is not None
        needed = {name: self.groups[name] for name in self.rules.groups()}
        return render(self.rules, needed, options)
