"""An agent's groups, assembled from the shard objects it watches (pure).

The operator publishes a group as one or more AddressGroup objects (``publish/shards.py``),
each labelled with its group's name. A group is present as soon as one of its shards is: the
operator writes a NodeRules object only once every shard of the groups it uses carries the
node's span label, so the rules never arrive before the shards do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from controller.compiler.ir import AddressGroup, Group, PortGroup
from controller.resources import group_from_body, group_name_of


def union(name: str, shards: Iterable[Group]) -> Group:
    """One group from its shards: every member of every shard. A lone shard is returned as
    is, so a small group costs nothing here."""
    parts = list(shards)
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, PortGroup):
        members = frozenset().union(*(p.members for p in parts if isinstance(p, PortGroup)))
        return dataclasses.replace(first, name=name, members=members)
    address_parts = [p for p in parts if isinstance(p, AddressGroup)]
    return AddressGroup(
        name,
        first.peer,
        frozenset().union(*(p.addresses for p in address_parts)),
        tuple(b for p in address_parts for b in p.blocks),
    )


class ShardedGroups:
    """Shard objects by group; each change returns the group's new union."""

    def __init__(self) -> None:
        self._shards: dict[str, dict[str, Group]] = {}  # group -> shard object name -> members
        self._group_of: dict[str, str] = {}  # shard object name -> group

    def reset(self, objects: Mapping[str, Mapping[str, Any]]) -> dict[str, Group]:
        """A complete listing (object name -> body): every group, assembled."""
        self._shards, self._group_of = {}, {}
        for body in objects.values():
            self._add(body)
        return {name: union(name, shards.values()) for name, shards in self._shards.items()}

    def event(self, kind: str, body: Mapping[str, Any]) -> tuple[str, Group | None]:
        """A watch event of one shard: its group's name and the group now (``None``: no shard
        of it is left)."""
        self._remove(body["metadata"]["name"])
        group = self._add(body) if kind != "DELETED" else group_name_of(body)
        shards = self._shards.get(group)
        return group, union(group, shards.values()) if shards else None

    def _add(self, body: Mapping[str, Any]) -> str:
        name, group = body["metadata"]["name"], group_name_of(body)
        self._shards.setdefault(group, {})[name] = group_from_body(body)
        self._group_of[name] = group
        return group

    def _remove(self, name: str) -> None:
        group = self._group_of.pop(name, None)
        if group is not None:
            shards = self._shards[group]
            del shards[name]
            if not shards:
                del self._shards[group]
