"""Turn compiler changes into the desired custom resources, keeping group spans.

A group's *span* is the set of nodes whose NodeRules refer to it. It is published as labels
on the AddressGroup so each agent can watch only its own groups. Groups that no node refers
to are not published at all: pod churn in them costs no write.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.compiler import Changes, Compiler
from controller.publish.plan import Key
from controller.resources import ADDRESS_GROUPS, NODE_RULES, group_body, node_rules_body


class DesiredState:
    def __init__(self, compiler: Compiler) -> None:
        self.compiler = compiler
        self._node_groups: dict[str, frozenset[str]] = {}
        self._group_nodes: dict[str, set[str]] = {}

    def everything(self) -> dict[Key, Mapping[str, Any] | None]:
        """The full desired state (after the initial sync)."""
        changes = Changes(
            frozenset(self.compiler.group_names()), frozenset(self.compiler.node_names())
        )
        return self.bodies(changes)

    def bodies(self, changes: Changes) -> dict[Key, Mapping[str, Any] | None]:
        """Desired bodies (``None``: should not exist) for everything ``changes`` touches."""
        out: dict[Key, Mapping[str, Any] | None] = {}
        known_nodes = set(self.compiler.node_names())
        touched_groups = set(changes.groups)
        for node in changes.nodes:
            if node in known_nodes:
                rules = self.compiler.node_rules(node)
                out[(NODE_RULES, node)] = node_rules_body(rules)
                groups = rules.groups()
            else:
                out[(NODE_RULES, node)] = None
                groups = frozenset()
            touched_groups |= self._set_node_groups(node, groups)
        for name in touched_groups:
            group = self.compiler.group(name)
            span = self._group_nodes.get(name)
            out[(ADDRESS_GROUPS, name)] = group_body(group, span) if group and span else None
        return out

    def groups_of(self, node: str) -> frozenset[str]:
        """The groups the desired NodeRules of ``node`` refer to (as of the last ``bodies``)."""
        return self._node_groups.get(node, frozenset())

    def _set_node_groups(self, node: str, groups: frozenset[str]) -> frozenset[str]:
        """Record which groups ``node`` refers to; return the groups whose span changed."""
        old = self._node_groups.get(node, frozenset())
        if groups:
            self._node_groups[node] = groups
        else:
            self._node_groups.pop(node, None)
        for name in old - groups:
            nodes = self._group_nodes[name]
            nodes.discard(node)
            if not nodes:
                del self._group_nodes[name]
        for name in groups - old:
            self._group_nodes.setdefault(name, set()).add(node)
        return old ^ groups
