"""Groups as one or more shard objects of bounded size (pure).

A group is published as shards, EndpointSlice-like: the *base* shard is named after the group
and always exists while the group does (so "the group is present" stays meaningful for
agents, and a small group is one object named as before); further shards are named
``<group>.<n>``. Every shard carries the group's name as a label and the group's span labels;
agents take the union of the shards they see.

Members (an address, an ipBlock, an (address, port) pair) are handled as *items*: their
compact JSON text, whose length is their size. ``plan_shards`` keeps every member where it
is published: a removed member leaves its shard, a new one goes into a shard that already
changes or has room, a shard is created only when none has, and an emptied shard (not the
base) is deleted. So a pod event rewrites one shard of at most ``SHARD_BYTES`` of members,
never the whole group, and a leader that adopts the published shards plans no writes when
nothing changed. An ipBlock too large for one shard is split exactly into the two halves of
its cidr, recursively (``split_block``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from controller.compiler.ir import AddressGroup, Group, PortGroup, ip_sort_key, member_sort_key
from controller.model import IPBlock
from controller.model.node import IPNetwork

# Members per shard, in bytes of their JSON. The object limit we keep is 256 KiB; the rest is
# left to metadata: the span labels (~32 bytes per node, and as much again in managedFields)
# fit ~2,500 nodes. Small enough that a pod event writes ~64 KiB, large enough that a
# 100k-pod group is ~30 objects.
SHARD_BYTES = 64 * 1024
OBJECT_LIMIT = 256 * 1024
_SEPARATORS = (",", ":")


def shard_name(group: str, index: int) -> str:
    return group if index == 0 else f"{group}.{index}"


def shard_group(name: str) -> str:
    """The group a shard object belongs to (group names never contain a dot)."""
    return name.partition(".")[0]


def _index(name: str) -> int:
    _, dot, tail = name.partition(".")
    return int(tail) if dot and tail.isdigit() else 0


def item_size(item: str) -> int:
    """Bytes an item takes in a shard's JSON list (its text and a separator)."""
    return len(item) + 2


def _item(value: Any) -> str:
    return json.dumps(value, separators=_SEPARATORS)


def group_items(group: Group, budget: int = SHARD_BYTES) -> dict[str, int]:
    """Every member of ``group`` as an item, with its size. ipBlocks larger than ``budget``
    are split into exact pieces that fit."""
    items: Iterable[str]
    if isinstance(group, PortGroup):
        items = (_item([str(ip), port]) for ip, port in group.members)
    else:
        blocks = (piece for b in group.blocks for piece in split_block(b, budget))
        items = (
            *(_item(str(ip)) for ip in group.addresses),
            *(_item([str(b.cidr), *map(str, b.excepts)]) for b in blocks),
        )
    return {item: item_size(item) for item in items}


def items_of_spec(spec: Mapping[str, Any]) -> frozenset[str]:
    """The items a published shard holds."""
    values = (*spec.get("addresses", ()), *spec.get("blocks", ()), *spec.get("members", ()))
    return frozenset(map(_item, values))


def shard_spec(group: Group, items: Iterable[str]) -> dict[str, Any]:
    """The spec of one shard of ``group`` holding ``items``: the group's own fields with the
    members narrowed to those items (sorted, so equal shards compare equal)."""
    values = json.loads("[" + ",".join(items) + "]")
    spec = _empty(group).to_json()
    del spec["name"]
    if isinstance(group, PortGroup):
        spec["members"] = sorted(values, key=member_sort_key)
    else:
        spec["addresses"] = sorted((v for v in values if isinstance(v, str)), key=ip_sort_key)
        spec["blocks"] = sorted((v for v in values if isinstance(v, list)), key=_block_key)
    return spec


def _empty(group: Group) -> Group:
    if isinstance(group, PortGroup):
        return PortGroup(group.name, group.peer, group.protocol, group.port_name)
    return AddressGroup(group.name, group.peer)


def _block_key(block: list[str]) -> tuple[int, int, int]:
    net = ipaddress.ip_network(block[0])
    return net.version, int(net.network_address), net.prefixlen


def split_block(block: IPBlock, budget: int = SHARD_BYTES) -> Iterator[IPBlock]:
    """``block`` as pieces whose items fit ``budget``, with exactly the same addresses: a cidr
    minus its excepts is its two halves, each minus the excepts inside it (a half inside an
    except is dropped). Deterministic, so the same block always gives the same pieces."""
    if item_size(_item([str(block.cidr), *map(str, block.excepts)])) <= budget:
        yield block
        return
    for half in block.cidr.subnets(prefixlen_diff=1):
        inside = _excepts_within(half, block.excepts)
        if inside is not None:
            yield from split_block(IPBlock(half, inside), budget)


def _excepts_within(half: IPNetwork, excepts: Iterable[IPNetwork]) -> tuple[IPNetwork, ...] | None:
    """The excepts that lie inside ``half``; ``None`` when one covers all of it."""
    out: list[IPNetwork] = []
    first, last = int(half.network_address), int(half.broadcast_address)
    for e in excepts:
        if e.version != half.version:
            continue
        lo, hi = int(e.network_address), int(e.broadcast_address)
        if lo <= first and last <= hi:
            return None
        if first <= lo and hi <= last:
            out.append(e)
    return tuple(out)


def plan_shards(
    group: str,
    desired: Mapping[str, int],
    published: Mapping[str, Iterable[str]],
    budget: int = SHARD_BYTES,
) -> dict[str, frozenset[str]]:
    """Assign the ``desired`` items (with their sizes) to shards, changing as few of the
    ``published`` shards (name -> items) as possible. Returns every shard that should exist:
    at least the base shard; none over ``budget`` unless one item alone is."""
    out: dict[str, list[str]] = {}
    used: dict[str, int] = {}
    placed: set[str] = set()
    changed: set[str] = set()
    for name in sorted(published, key=_index):
        items = list(published[name])
        keep = [item for item in items if item in desired and item not in placed]
        size = sum(desired[item] for item in keep)
        if size > budget:  # published by hand, or under another budget: keep what fits
            keep, size = _fill(sorted(keep), desired, budget)
        if len(keep) != len(items):
            changed.add(name)
        placed.update(keep)
        out[name], used[name] = keep, size
    new = sorted(desired.keys() - placed)
    # Fill shards that are written anyway first, then the others by index: EndpointSlice-like.
    open_shards = iter(sorted(out, key=lambda n: (n not in changed, _index(n))))
    names = _free_names(group, out)
    current = next(open_shards, None)
    for item in new:
        size = desired[item]
        while current is not None and used[current] + size > budget and used[current] > 0:
            current = next(open_shards, None)
        if current is None:
            current = next(names)
            out[current], used[current] = [], 0
        out[current].append(item)
        used[current] += size
    if group not in out:
        out[group] = []
    return {name: frozenset(items) for name, items in out.items() if items or name == group}


def _fill(items: list[str], sizes: Mapping[str, int], budget: int) -> tuple[list[str], int]:
    """The first of ``items`` that fit ``budget`` (at least one) and their size."""
    keep: list[str] = []
    size = 0
    for item in items:
        if keep and size + sizes[item] > budget:
            break
        keep.append(item)
        size += sizes[item]
    return keep, size


def _free_names(group: str, taken: Mapping[str, object]) -> Iterator[str]:
    index = 0
    while True:
        name = shard_name(group, index)
        if name not in taken:
            yield name
        index += 1
