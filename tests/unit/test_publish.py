"""Publishing decisions: CR bodies, spans, the write plan, enforcement bookkeeping."""

from __future__ import annotations

from typing import Any

from controller.compiler import compile_objects
from controller.kube.publisher import label_patch
from controller.model import ApiObject, parse_object
from controller.operator.enforcement import EnforcementTracker
from controller.publish.desired import DesiredState
from controller.publish.plan import plan
from controller.resources import (
    ADDRESS_GROUPS,
    NODE_RULES,
    group_body,
    group_from_body,
    node_rules_body,
    node_rules_from_body,
    span_label,
)


def objects() -> list[ApiObject]:
    raws: list[dict[str, Any]] = [
        {
            "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": "x", "labels": {"app": app}},
            "spec": {
                "nodeName": node,
                "containers": [{"ports": [{"name": "http", "containerPort": 80 + i}]}],
            },
            "status": {"phase": "Running", "podIP": f"10.0.0.{i}"},
        }
        for i, (app, node) in enumerate([("a", "n1"), ("b", "n2"), ("b", "n3")])
    ]
    raws.append(
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": "a", "namespace": "x"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "a"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}],
                "egress": [{"ports": [{"port": "http"}]}],
                "policyTypes": ["Ingress", "Egress"],
            },
        }
    )
    return [parse_object(r) for r in raws]


def test_bodies_round_trip() -> None:
    c = compile_objects(objects())
    rules = c.node_rules("n1")
    assert node_rules_from_body(node_rules_body(rules)) == rules
    for name in c.group_names():
        group = c.group(name)
        assert group is not None
        body = group_body(group, {"n1"})
        assert body["metadata"]["labels"][span_label("n1")] == ""
        assert group_from_body(body) == group


def test_span_label_fits_long_node_names() -> None:
    long = "node-" + "x" * 70 + ".example.com"
    assert span_label("n1") == "span.nftpolicy.io/n1"
    label = span_label(long)
    assert len(label.split("/", 1)[1]) <= 63 and label == span_label(long)


def test_groups_are_published_only_where_needed_with_their_span() -> None:
    c = compile_objects(objects())
    desired = DesiredState(c)
    c.take_changes()  # as the operator does when it starts leading
    everything = desired.everything()
    groups = {k[1]: b for k, b in everything.items() if k[0] == ADDRESS_GROUPS}
    assert all(b is not None for b in groups.values())
    for body in groups.values():
        assert body is not None
        spans = [k for k in body["metadata"]["labels"] if k.startswith("span.")]
        assert spans == [span_label("n1")]  # only n1 has an isolated pod
    assert {k[1] for k in everything if k[0] == NODE_RULES} == {"n1", "n2", "n3"}

    # a pod event changes one group, not every node
    c.delete_pod("x/p2")
    changed = desired.bodies(c.take_changes())
    assert [k for k in changed if k[0] == NODE_RULES] == [(NODE_RULES, "n3")]
    assert len([k for k in changed if k[0] == ADDRESS_GROUPS]) <= 2

    # deleting the policy empties the span: the groups are no longer wanted
    c.delete_policy("x/a")
    changed = desired.bodies(c.take_changes())
    assert all(b is None for k, b in changed.items() if k[0] == ADDRESS_GROUPS)


def test_plan_orders_writes_and_skips_what_is_published() -> None:
    g = {"metadata": {"name": "g", "labels": {"a": ""}}, "spec": {"peer": "p"}}
    r = {"metadata": {"name": "n1", "labels": {}}, "spec": {"pods": []}}
    published = {(ADDRESS_GROUPS, "old"): g, (NODE_RULES, "n1"): {**r, "status": {"x": 1}}}
    writes = plan(
        {(NODE_RULES, "n1"): r, (ADDRESS_GROUPS, "g"): g, (ADDRESS_GROUPS, "old"): None}, published
    )
    assert [(w.verb, w.plural, w.name) for w in writes] == [
        ("create", ADDRESS_GROUPS, "g"),
        ("delete", ADDRESS_GROUPS, "old"),
    ]
    changed = {**r, "spec": {"pods": [1]}}
    (w,) = plan({(NODE_RULES, "n1"): changed}, published)
    assert w.verb == "replace" and w.current == published[(NODE_RULES, "n1")]


def test_label_patch_removes_stale_span_labels() -> None:
    old = {
        "metadata": {"labels": {"span.nftpolicy.io/n1": "", "span.nftpolicy.io/n2": "", "k": "v"}}
    }
    new = {"metadata": {"labels": {"span.nftpolicy.io/n2": "", "k": "v"}}}
    assert label_patch(old, new) == {
        "span.nftpolicy.io/n1": None,
        "span.nftpolicy.io/n2": "",
        "k": "v",
    }


def test_enforcement_is_reported_once_every_spanned_node_applied() -> None:
    t = EnforcementTracker()
    t.changed("x/a", now=10.0)
    t.changed("x/unused", now=10.0)
    assert t.done(11.0) == []  # not published yet
    t.published({"x/a": frozenset({"n1", "n2"})}, {"n1": 3, "n2": 5})
    assert t.done(11.0) == [("x/unused", 0, 1.0)]  # spans no node: enforced as published
    t.reported("n1", 3)
    t.reported("n2", 4)
    assert t.done(11.5) == []
    t.reported("n2", 5)
    assert t.done(12.0) == [("x/a", 2, 2.0)]
    assert t.done(13.0) == []
