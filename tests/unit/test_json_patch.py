"""controller/publish/json_patch.py: the ops turn the old spec into the new one, and stay small."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.publish.json_patch import diff


def apply(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 add/remove/replace, as the API server applies them (a reference for the test)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not parts:
            assert op["op"] == "replace"
            doc = op["value"]
            continue
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if isinstance(parent, list):
            index = int(last)
            if op["op"] == "add":
                assert 0 <= index <= len(parent)
                parent.insert(index, op["value"])
            elif op["op"] == "remove":
                del parent[index]
            else:
                parent[index] = op["value"]
        else:
            if op["op"] == "remove":
                del parent[last]
            elif op["op"] == "replace":
                assert last in parent
                parent[last] = op["value"]
            else:
                parent[last] = op["value"]
    return doc


scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["a", "b", "~/"]))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.sampled_from(["k", "l", "a/b", "~"]), inner)
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(values, values)
def test_the_ops_turn_old_into_new(old: Any, new: Any) -> None:
    patched = apply(old, diff(old, new))
    assert json.dumps(patched, sort_keys=True) == json.dumps(new, sort_keys=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=30), st.data())
def test_list_edits_are_applied_exactly(old: list[int], data: st.DataObject) -> None:
    new = list(old)
    for _ in range(data.draw(st.integers(0, 4))):
        if new and data.draw(st.booleans()):
            del new[data.draw(st.integers(0, len(new) - 1))]
        else:
            new.insert(data.draw(st.integers(0, len(new))), data.draw(st.integers(0, 50)))
    assert apply(old, diff(old, new)) == new


def test_one_policy_more_in_a_big_node_rules_spec_is_one_small_op() -> None:
    """Catches: a patch that sends the whole spec (a policy spanning 300 nodes would send
    every node's rules in full)."""
    pods = [{"key": f"ns/p{i}", "ips": [f"10.0.{i // 250}.{i % 250}"]} for i in range(500)]
    policies = [
        {"key": f"ns/pol{i}", "rules": {"ingress": [{"peers": [f"g{i}"]}]}} for i in range(200)
    ]
    old = {"pods": pods, "policies": policies, "podCIDRs": ["10.0.0.0/16"]}
    added = {"key": "ns/new", "rules": {"ingress": [{"peers": ["gx"]}]}}
    new = {**old, "policies": [*policies[:50], added, *policies[50:]]}
    ops = diff(old, new)
    assert ops == [{"op": "add", "path": "/policies/50", "value": added}]
    assert len(json.dumps(ops)) < len(json.dumps(new)) / 100
    assert diff(new, new) == []
