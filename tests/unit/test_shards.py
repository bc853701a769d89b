"""Groups published as shards: the planner, ipBlock splitting, the write queue's ordering,
adoption by a new leader, and the agent's union of shards."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.agent.groups import ShardedGroups
from controller.compiler.ir import AddressGroup, PortGroup, block_intervals, ip_sort_key
from controller.model import IPBlock, Protocol
from controller.operator.engine import Engine, OperatorConfig
from controller.publish.queue import Outcome
from controller.publish.shards import (
    OBJECT_LIMIT,
    SHARD_BYTES,
    group_items,
    item_size,
    plan_shards,
    shard_spec,
    split_block,
)
from controller.resources import (
    ADDRESS_GROUPS,
    GROUP_LABEL,
    NODE_RULES,
    group_body,
    group_from_body,
    shard_body,
    span_label,
)
from tests.unit.test_engine import Server, pod, policy, synced
from tests.unit.test_publish import new_queue, rules, stored

# ---- the planner ---------------------------------------------------------------------------

ITEMS = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4), st.integers(1, 10))


def check(
    group: str, desired: dict[str, int], plan: dict[str, frozenset[str]], budget: int
) -> None:
    assert group in plan  # the base shard always exists
    seen: set[str] = set()
    for name, items in plan.items():
        assert name == group or items, f"empty shard {name} kept"
        assert not seen & items, "an item in two shards"
        seen |= items
        assert sum(desired[i] for i in items) <= budget
    assert seen == desired.keys()


@settings(max_examples=300, deadline=None)
@given(ITEMS, ITEMS, st.integers(10, 40))
def test_plans_cover_exactly_the_desired_items_within_the_budget(
    before: dict[str, int], after: dict[str, int], budget: int
) -> None:
    first = plan_shards("g", before, {}, budget)
    check("g", before, first, budget)
    assert plan_shards("g", before, first, budget) == first  # nothing changed: no change
    second = plan_shards("g", after, first, budget)
    check("g", after, second, budget)


@settings(max_examples=300, deadline=None)
@given(ITEMS, st.text("xyz", min_size=1, max_size=3), st.integers(10, 40), st.data())
def test_one_member_added_or_removed_changes_one_shard(
    items: dict[str, int], new: str, budget: int, data: st.DataObject
) -> None:
    published = plan_shards("g", items, {}, budget)
    added = plan_shards("g", {**items, new: 3}, published, budget)
    assert [n for n in added.keys() | published.keys() if added.get(n) != published.get(n)] == [
        n for n in added if new in added[n]
    ]
    if items:
        gone = data.draw(st.sampled_from(sorted(items)))
        removed = plan_shards("g", {i: s for i, s in items.items() if i != gone}, published, budget)
        changed = [
            n for n in removed.keys() | published.keys() if removed.get(n) != published.get(n)
        ]
        assert changed == [n for n in published if gone in published[n]]


def test_new_members_fill_shards_with_room_before_a_new_one() -> None:
    published = {"g": frozenset({"a", "b"}), "g.1": frozenset({"c"})}
    sizes = {"a": 4, "b": 4, "c": 4, "d": 4}
    assert plan_shards("g", sizes, published, 10) == {**published, "g.1": frozenset({"c", "d"})}
    # an emptied shard goes, but the base stays, empty
    assert plan_shards("g", {"c": 4}, published, 10) == {"g": frozenset(), "g.1": frozenset("c")}
    assert plan_shards("g", {}, published, 10) == {"g": frozenset()}


# ---- ipBlock splitting ---------------------------------------------------------------------


@st.composite
def blocks(draw: st.DrawFn) -> IPBlock:
    prefix = draw(st.integers(8, 24))
    cidr = ipaddress.ip_network(f"10.0.0.0/{prefix}")
    excepts = []
    for _ in range(draw(st.integers(0, 60))):
        length = draw(st.integers(prefix, 32))
        offset = draw(st.integers(0, (1 << (32 - prefix)) - 1))
        net = ipaddress.ip_network((int(cidr.network_address) + offset, 32)).supernet(
            new_prefix=length
        )
        excepts.append(net)
    return IPBlock(cidr, tuple(excepts))


@settings(max_examples=300, deadline=None)
@given(blocks(), st.integers(40, 400))
def test_split_blocks_have_exactly_the_addresses_of_the_block(block: IPBlock, budget: int) -> None:
    pieces = list(split_block(block, budget))
    assert block_intervals(pieces) == block_intervals([block])
    for piece in pieces:
        text = json.dumps([str(piece.cidr), *map(str, piece.excepts)], separators=(",", ":"))
        assert item_size(text) <= budget or not piece.excepts


def test_a_40k_except_block_is_sharded_under_the_object_limit() -> None:
    """Old code: one 720 KB object (and over etcd's 1.5 MiB request limit at ~85k excepts)."""
    base = int(ipaddress.ip_address("10.0.0.0"))
    excepts = tuple(ipaddress.ip_network((base + 2 * i + 1, 32)) for i in range(40_000))
    group = AddressGroup(
        "ag-big", "ipBlock", blocks=(IPBlock(ipaddress.ip_network("10.0.0.0/8"), excepts),)
    )
    assert len(json.dumps(group_body(group, ["n1"]))) > 700_000
    items = group_items(group)
    plan = plan_shards("ag-big", items, {})
    assert 10 < len(plan) < 40
    shards = [shard_body("ag-big", n, shard_spec(group, i), ["n1"]) for n, i in plan.items()]
    assert max(len(json.dumps(s)) for s in shards) <= SHARD_BYTES + 1000
    held = [b for s in shards for b in group_from_body(s).blocks]  # type: ignore[union-attr]
    assert block_intervals(held) == group.intervals()


# ---- the write queue -----------------------------------------------------------------------


def shard(name: str, *nodes: str, members: tuple[str, ...] = ()) -> dict[str, Any]:
    body = shard_body(
        name.partition(".")[0], name, {"peer": "p", "addresses": list(members)}, nodes
    )
    body["metadata"]["resourceVersion"] = "1"
    return body


def test_rules_wait_for_every_shard_of_their_groups() -> None:
    q = new_queue()
    q.want((ADDRESS_GROUPS, "g"), shard("g", "n1"))
    q.want((ADDRESS_GROUPS, "g.1"), shard("g.1", "n1"))
    q.want((NODE_RULES, "n1"), rules("n1", "g"), frozenset({"g"}))
    writes = q.ready(0.0, 8)
    assert sorted(map(str, writes)) == ["create addressgroups/g", "create addressgroups/g.1"]
    first, second = sorted(writes, key=str)
    q.finished(first, Outcome(answer=stored(first.body, 5)), 0.0)
    assert q.ready(0.0, 8) == []  # g.1 not published yet: the agent would see half the group
    q.finished(second, Outcome(answer=stored(second.body, 6)), 0.0)
    assert [str(w) for w in q.ready(0.0, 8)] == ["create noderules/n1"]


def test_an_emptied_shard_goes_while_its_group_is_in_use() -> None:
    published = {
        (ADDRESS_GROUPS, "g"): shard("g", "n1"),
        (ADDRESS_GROUPS, "g.1"): shard("g.1", "n1"),
        (NODE_RULES, "n1"): rules("n1", "g"),
    }
    q = new_queue(published)
    q.want((ADDRESS_GROUPS, "g.1"), None)
    assert [str(w) for w in q.ready(0.0, 8)] == ["delete addressgroups/g.1"]
    # the whole group waits for the rules that use it to move on
    q = new_queue(published)
    q.want((ADDRESS_GROUPS, "g"), None)
    q.want((ADDRESS_GROUPS, "g.1"), None)
    assert q.ready(0.0, 8) == []


# ---- the engine: pod events and adoption -----------------------------------------------------

MEMBERS = 20_000
NODES = 1_000


def big_engine() -> tuple[Engine, Server]:
    """A policy on n1 allowing every pod of app=b: a 20k-member group, spanning n1."""
    e = Engine(OperatorConfig())
    synced(e)
    e.event("Namespace", None, {"metadata": {"name": "x", "resourceVersion": "1"}})
    e.event("Node", None, {"metadata": {"name": "n1", "resourceVersion": "2"}})
    e.event("Pod", None, pod("a", "n1", "10.0.0.1", "a", 3))
    for i in range(MEMBERS):
        ip = f"10.{1 + i // 65536}.{i // 256 % 256}.{i % 256}"
        e.event("Pod", None, pod(f"b{i}", f"w{i % 200}", ip, "b", 10 + i))
    e.event("NetworkPolicy", None, policy("a-from-b", "a", "b", 5))
    return e, Server(e)


def one_shard_and_its_node(writes: list[str]) -> bool:
    """One shard replaced, and nothing else but the rules of the pod's own node."""
    groups = [w for w in writes if "addressgroups" in w]
    return len(groups) == 1 and groups[0].startswith("replace") and len(writes) <= 2


def test_a_pod_event_in_a_large_group_writes_one_shard_and_a_new_leader_adopts() -> None:
    """Old code: one 289 KB object, rewritten whole on every pod event."""
    e, server = big_engine()
    e.start_leading({})
    first = server.converge()
    shards = {n: b for (p, n), b in server.objects.items() if p == ADDRESS_GROUPS}
    assert len(shards) >= 4
    assert {b["metadata"]["labels"][GROUP_LABEL] for b in shards.values()} == {
        n.partition(".")[0] for n in shards
    }
    assert all(len(json.dumps(b)) <= SHARD_BYTES + 1000 for b in shards.values())
    assert first.index("create noderules/n1") > max(
        first.index(f"create addressgroups/{n}") for n in shards
    )

    e.event("Pod", "ADDED", pod("new", "n2", "10.200.0.1", "b", 100_000))
    added = server.converge()
    assert one_shard_and_its_node(added), added
    e.event("Pod", "DELETED", pod("b7", "n2", "10.1.0.7", "b", 100_001))
    deleted = server.converge()
    assert one_shard_and_its_node(deleted), deleted

    # a new leader over the same shards writes nothing, and keeps members where an earlier
    # leader put them: here one moved from the base shard to the one with room
    base, *_, last = sorted(shards, key=lambda n: (len(n), n))
    moved = server.objects[(ADDRESS_GROUPS, base)]["spec"]["addresses"].pop()
    server.objects[(ADDRESS_GROUPS, last)]["spec"]["addresses"].append(moved)
    server.objects[(ADDRESS_GROUPS, last)]["spec"]["addresses"].sort(key=ip_sort_key)
    e.stop_leading()
    e.start_leading(dict(server.objects))
    assert server.converge() == []


def test_shards_stay_under_the_object_limit_with_a_thousand_span_labels() -> None:
    e, _ = big_engine()
    span = [f"node-{i:04d}.cluster.example.com" for i in range(NODES)]
    (name,) = e.compiler.group_names()
    group = e.compiler.group(name)
    assert group is not None
    plan = plan_shards(name, group_items(group), {})
    for shard_name_, items in plan.items():
        body = shard_body(name, shard_name_, shard_spec(group, items), span)
        # managedFields repeat every label key once more
        managed = sum(len(f'"f:{span_label(n)}":{{}},') for n in span)
        assert len(json.dumps(body)) + managed <= OBJECT_LIMIT


# ---- the agent -----------------------------------------------------------------------------


def test_agents_union_the_shards_and_keep_a_group_while_a_shard_is_left() -> None:
    groups = ShardedGroups()
    a = shard("g", "n1", members=("10.0.0.1",))
    b = shard("g.1", "n1", members=("10.0.0.2",))
    other = group_body(PortGroup("pg", "p", Protocol.TCP, "http"), ["n1"])
    everything = groups.reset({"g": a, "g.1": b, "pg": other})
    assert set(everything) == {"g", "pg"}
    g = everything["g"]
    assert isinstance(g, AddressGroup) and g.name == "g"
    assert {str(ip) for ip in g.addresses} == {"10.0.0.1", "10.0.0.2"}
    name, g = groups.event("MODIFIED", shard("g.1", "n1", members=("10.0.0.3",)))
    assert name == "g" and isinstance(g, AddressGroup)
    assert {str(ip) for ip in g.addresses} == {"10.0.0.1", "10.0.0.3"}
    assert groups.event("DELETED", a)[1] is not None  # g.1 still holds part of it
    assert groups.event("DELETED", b) == ("g", None)


def test_an_unsharded_object_from_an_older_operator_is_its_own_group() -> None:
    body = group_body(AddressGroup("ag-1", "p"), ["n1"])
    del body["metadata"]["labels"][GROUP_LABEL]
    assert set(ShardedGroups().reset({"ag-1": body})) == {"ag-1"}
