"""Turn compiler changes into the desired custom resources, keeping group spans.

A group's *span* is the set of nodes whose NodeRules refer to it. It is published as labels
on the AddressGroup so each agent can watch only its own groups. Groups that no node refers
to are not published at all: pod churn in them costs no write.

A group is published as shards (``shards.py``). The last desired assignment of members to
shards is remembered (and, on becoming leader, taken from what is published: ``adopt``), so
a member change yields only the shards it changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.compiler import Changes, Compiler
from controller.publish.plan import Body, Key
from controller.publish.shards import (
    group_items,
    items_of_spec,
    plan_shards,
    shard_group,
    shard_spec,
)
from controller.resources import (
    ADDRESS_GROUPS,
    NODE_RULES,
    node_rules_body,
    shard_body,
)


class DesiredState:
    def __init__(self, compiler: Compiler) -> None:
        self.compiler = compiler
        self._node_groups: dict[str, frozenset[str]] = {}
        self._group_nodes: dict[str, set[str]] = {}
        self._shards: dict[str, dict[str, frozenset[str]]] = {}  # group -> shard -> items

    def adopt(self, published: Mapping[Key, Body]) -> None:
        """Plan shards against what is published (a new leader): members stay where they are."""
        self._shards = {}
        for (plural, name), body in published.items():
            if plural == ADDRESS_GROUPS:
                shards = self._shards.setdefault(shard_group(name), {})
                shards[name] = items_of_spec(body.get("spec") or {})

    def everything(self) -> dict[Key, Mapping[str, Any] | None]:
        """The full desired state (after the initial sync)."""
        changes = Changes(
            frozenset(self.compiler.group_names()), frozenset(self.compiler.node_names())
        )
        for gone in self._shards.keys() - changes.groups:  # published, but no longer a group
            del self._shards[gone]
        return self.bodies(changes, every_shard=True)

    def bodies(
        self, changes: Changes, every_shard: bool = False
    ) -> dict[Key, Mapping[str, Any] | None]:
        """Desired bodies (``None``: should not exist) for everything ``changes`` touches: of
        a group, the shards whose members changed, or all of them when its span changed or
        ``every_shard`` is asked for."""
        out: dict[Key, Mapping[str, Any] | None] = {}
        known_nodes = set(self.compiler.node_names())
        touched_groups = set(changes.groups)
        respanned: set[str] = set()
        for node in changes.nodes:
            if node in known_nodes:
                rules = self.compiler.node_rules(node)
                out[(NODE_RULES, node)] = node_rules_body(rules)
                groups = rules.groups()
            else:
                out[(NODE_RULES, node)] = None
                groups = frozenset()
            respanned |= self._set_node_groups(node, groups)
        for name in touched_groups | respanned:
            out.update(self._group_bodies(name, every_shard or name in respanned))
        return out

    def _group_bodies(self, name: str, every_shard: bool) -> dict[Key, Body | None]:
        group = self.compiler.group(name)
        span = self._group_nodes.get(name)
        old = self._shards.pop(name, {})
        if group is None or not span:
            return {(ADDRESS_GROUPS, shard): None for shard in old or (name,)}
        new = self._shards[name] = plan_shards(name, group_items(group), old)
        out: dict[Key, Body | None] = {(ADDRESS_GROUPS, s): None for s in old.keys() - new}
        for shard, items in new.items():
            if every_shard or old.get(shard) != items:
                spec = shard_spec(group, items)
                out[(ADDRESS_GROUPS, shard)] = shard_body(name, shard, spec, span)
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
