"""Publishing decisions: CR bodies, spans, the write queue, enforcement bookkeeping."""

from __future__ import annotations

from typing import Any

from controller.compiler import compile_objects
from controller.kube.publisher import label_patch, status_kind
from controller.model import ApiObject, parse_object
from controller.operator.enforcement import EnforcementTracker
from controller.publish.desired import DesiredState
from controller.publish.plan import Key, Write, same
from controller.publish.queue import BACKOFF_CAP, Failure, Outcome, WriteQueue, backoff
from controller.resources import (
    ADDRESS_GROUPS,
    MANAGED_BY,
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


G, H = (ADDRESS_GROUPS, "g"), (ADDRESS_GROUPS, "h")
N1, N2 = (NODE_RULES, "n1"), (NODE_RULES, "n2")


def group(name: str, *nodes: str, peer: str = "p", version: int = 1) -> dict[str, Any]:
    labels = {**MANAGED_BY, **{span_label(n): "" for n in nodes}}
    meta = {"name": name, "labels": labels, "resourceVersion": str(version)}
    return {"metadata": meta, "spec": {"peer": peer}}


def rules(node: str, *groups: str, version: int = 1) -> dict[str, Any]:
    policies = (
        [{"key": "x/a", "ingress": [{"peers": list(groups)}], "egress": []}] if groups else []
    )
    meta = {"name": node, "labels": dict(MANAGED_BY), "resourceVersion": str(version)}
    return {"metadata": meta, "spec": {"pods": [], "policies": policies}}


def stored(body: dict[str, Any] | None, version: int) -> dict[str, Any] | None:
    """``body`` as the API server answers it: with a new resourceVersion."""
    if body is None:
        return None
    return {**body, "metadata": {**body["metadata"], "resourceVersion": str(version)}}


def new_queue(published: dict[Key, dict[str, Any]] | None = None) -> WriteQueue:
    return WriteQueue(published or {}, lambda body: frozenset(referenced(body)))


def referenced(body: dict[str, Any] | Any) -> set[str]:
    return {g for p in body["spec"]["policies"] for r in p["ingress"] for g in r["peers"]}


def succeed(q: WriteQueue, writes: list[Write], now: float = 0.0, version: int = 100) -> None:
    for i, w in enumerate(writes):
        assert q.finished(w, Outcome(answer=stored(w.body, version + i)), now) is None


def names(writes: list[Write]) -> list[str]:
    return [str(w) for w in writes]


def test_steady_state_and_echoes_plan_no_writes() -> None:
    published = {G: group("g", "n1"), N1: rules("n1", "g", version=2)}
    q = new_queue(published)
    q.want(G, group("g", "n1"))
    q.want(N1, rules("n1", "g"), frozenset({"g"}))
    assert q.ready(0.0, 8) == [] and q.pending == {}
    # a status-only update (newer version, same labels and spec) and a stale event
    assert not q.observe(N1, {**rules("n1", "g", version=5), "status": {"appliedGeneration": 1}})
    assert not q.observe(N1, rules("n1", version=3))  # older than what is held: ignored
    assert q.ready(0.0, 8) == []
    # our own write's echo arriving after its answer changes nothing
    q.want(G, group("g", "n1", peer="q"))
    (w,) = q.ready(0.0, 8)
    succeed(q, [w], version=10)
    assert not q.observe(G, stored(w.body, 10))
    assert q.ready(0.0, 8) == [] and q.pending == {}


def test_groups_go_before_the_rules_that_need_them_and_go_after() -> None:
    q = new_queue({G: group("g", "n1"), N1: rules("n1", "g")})
    q.want(H, group("h", "n1"))
    q.want(N1, rules("n1", "h"), frozenset({"h"}))
    q.want(G, None)
    # h first; n1 waits for h; g is still referred to by the published n1 (kept, span intact)
    first = q.ready(0.0, 8)
    assert names(first) == ["create addressgroups/h"]
    assert q.ready(0.0, 8) == []  # h in flight: n1 still waits
    succeed(q, first)
    second = q.ready(0.0, 8)
    assert names(second) == ["replace noderules/n1"]
    succeed(q, second, version=200)
    assert names(q.ready(0.0, 8)) == ["delete addressgroups/g"]


def test_a_group_keeps_the_span_of_rules_that_still_use_it() -> None:
    q = new_queue({G: group("g", "n1", "n2"), N1: rules("n1", "g"), N2: rules("n2", "g")})
    q.want(G, group("g", "n1"))  # n2 stops using g ...
    q.want(N2, rules("n2"), frozenset())
    (w2,) = q.ready(0.0, 8)  # ... but until n2's rules say so, g keeps n2 in its span
    assert str(w2) == "replace noderules/n2"
    succeed(q, [w2])
    (wg,) = q.ready(0.0, 8)
    assert str(wg) == "replace addressgroups/g"
    assert span_label("n2") not in (wg.body or {})["metadata"]["labels"]


def test_a_failing_write_is_retried_alone_with_capped_backoff() -> None:
    q = new_queue({N1: rules("n1"), N2: rules("n2")})
    q.want(G, group("g", "n1", peer="huge"))
    q.want(N1, rules("n1", "g"), frozenset({"g"}))
    q.want(H, group("h", "n2"))
    q.want(N2, rules("n2", "h"), frozenset({"h"}))
    writes = q.ready(0.0, 8)
    assert names(writes) == ["create addressgroups/g", "create addressgroups/h"]
    denied = Failure(422, "invalid", "Invalid: denied by policy")
    streak = q.finished(writes[0], Outcome(failure=denied), 0.0)
    assert streak is not None and streak.attempts == 1 and streak.retry_at == backoff(1)
    succeed(q, writes[1:])
    assert names(q.ready(0.1, 8)) == ["replace noderules/n2"]  # unrelated: goes on
    # g is retried only when its backoff has passed; n1 waits for g meanwhile
    now, retries = 0.1, []
    while now < 120.0:
        for w in q.ready(now, 8):
            assert str(w) == "create addressgroups/g"
            retries.append(now)
            q.finished(w, Outcome(failure=denied), now)
        now += 0.05
    # first retry after 0.5 s, then 1, 2, 4, ... capped at 30 s: not every cycle
    assert abs(retries[0] - backoff(1)) < 0.06 and len(retries) == 8, retries
    gaps = [b - a for a, b in zip(retries, retries[1:], strict=False)]
    assert all(abs(g - backoff(n + 2)) < 0.06 for n, g in enumerate(gaps)), gaps
    assert backoff(len(retries)) == BACKOFF_CAP
    streak = q.streaks[G]
    assert streak.attempts == len(retries) + 1 and streak.failure == denied
    # the policy shrinks and the write goes through: the streak ends, n1 follows
    q.want(G, group("g", "n1"))
    (w,) = q.ready(now + BACKOFF_CAP, 8)
    assert q.finished(w, Outcome(answer=stored(w.body, 300)), now) is streak
    assert names(q.ready(now + BACKOFF_CAP, 8)) == ["replace noderules/n1"]
    assert q.streaks == {}


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff(30) == BACKOFF_CAP


def test_objects_changed_behind_our_back() -> None:
    q = new_queue({G: group("g", "n1"), N1: rules("n1", "g", version=4)})
    # deleted by hand: the queue forgets it, and the desired body becomes a create
    assert q.observe(N1, None, "9")
    q.want(N1, rules("n1", "g"), frozenset({"g"}))
    (w,) = q.ready(0.0, 8)
    assert str(w) == "create noderules/n1"
    # 409: it exists after all (someone re-created it): compare with what is there
    theirs = rules("n1", version=12)
    assert (
        q.finished(
            w, Outcome(failure=Failure(409, "conflict", "AlreadyExists"), current=theirs), 0.0
        )
        is None
    )
    (w,) = q.ready(0.0, 8)
    assert str(w) == "replace noderules/n1" and w.current == theirs
    # 404 on the replace: gone again; create it
    assert q.finished(w, Outcome(failure=Failure(404, "not_found", "NotFound")), 0.0) is None
    (w,) = q.ready(0.0, 8)
    assert str(w) == "create noderules/n1"
    # a deletion older than the state we hold is stale
    succeed(q, [w], version=20)
    assert not q.observe(N1, None, "15")
    assert q.ready(0.0, 8) == []


def test_writes_in_flight_are_bounded() -> None:
    q = new_queue()
    for i in range(20):
        q.want((ADDRESS_GROUPS, f"g{i}"), group(f"g{i}", "n1"))
    first = q.ready(0.0, 8)
    assert len(first) == 8 and q.ready(0.0, 8) == []
    succeed(q, first[:3])
    assert len(q.ready(0.0, 8)) == 3


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


def _done(t: EnforcementTracker, now: float) -> list[tuple[str, int, float]]:
    return [(d.policy, d.nodes, d.seconds) for d in t.done(now)]


def test_enforcement_is_reported_once_every_spanned_node_applied() -> None:
    t = EnforcementTracker()
    t.changed("x/a", now=10.0)
    t.changed("x/unused", now=10.0)
    assert _done(t, 11.0) == []  # not published yet
    t.published({"x/a": frozenset({"n1", "n2"})}, {"n1": 3, "n2": 5})
    assert _done(t, 11.0) == [("x/unused", 0, 1.0)]  # spans no node: enforced as published
    t.reported("n1", 3)
    t.reported("n2", 4)
    assert _done(t, 11.5) == []
    t.reported("n2", 5)
    assert _done(t, 12.0) == [("x/a", 2, 2.0)]
    assert _done(t, 13.0) == []


def test_enforcement_waits_for_policies_a_stuck_write_concerns() -> None:
    t = EnforcementTracker()
    t.changed("x/a", now=1.0)
    t.changed("x/b", now=1.0)
    t.published({"x/a": frozenset({"n1"}), "x/b": frozenset({"n2"})}, {"n1": 2, "n2": 2}, {"x/b"})
    t.reported("n1", 2)
    t.reported("n2", 2)
    assert _done(t, 2.0) == [("x/a", 1, 1.0)]  # x/b's write has not gone out: not enforced
    t.published({"x/b": frozenset({"n2"})}, {"n2": 3})
    t.reported("n2", 3)
    assert _done(t, 3.0) == [("x/b", 1, 2.0)]


def test_each_published_change_is_reported_and_unpublished_ones_join() -> None:
    """Catches: a published change forgotten when the policy changes again before its nodes
    applied it (under churn no Enforced event would ever come), or changes counted twice."""
    t = EnforcementTracker()
    t.changed("x/a", now=1.0)
    t.changed("x/a", now=2.0)  # before the first was published: enforced by the same writes
    t.published({"x/a": frozenset({"n1"})}, {"n1": 5})
    t.changed("x/a", now=3.0)  # after: its own entry
    t.reported("n1", 5)
    (first,) = t.done(4.0)
    assert (first.seconds, first.oldest, first.changes) == (2.0, 3.0, 2)
    assert t.unpublished() == {"x/a"}
    t.published({"x/a": frozenset({"n1"})}, {"n1": 6})
    t.reported("n1", 6)
    assert _done(t, 5.0) == [("x/a", 1, 2.0)]
    assert not t.pending


def test_failure_classes() -> None:
    assert status_kind(413, "RequestEntityTooLarge: too big") == "too_large"
    assert status_kind(500, "etcdserver: request is too large") == "too_large"
    assert status_kind(422, "Invalid: denied") == "invalid"
    assert status_kind(403, "Forbidden: exceeded quota") == "forbidden"
    assert status_kind(503, "ServiceUnavailable") == "server"
    assert status_kind(409, "AlreadyExists") == "conflict"


def test_a_null_is_the_same_as_an_absent_field() -> None:
    """Replaces are merge patches: a null we send deletes the field, so what we read back
    lacks it; comparing that with the body we wanted must not plan the write again."""
    wanted = {"metadata": {"labels": {}}, "spec": {"policies": [{"peers": None, "ports": [1]}]}}
    stored_ = {"metadata": {"labels": {}}, "spec": {"policies": [{"ports": [1]}]}}
    assert same(wanted, stored_)
    assert not same(wanted, {"metadata": {"labels": {}}, "spec": {"policies": [{"ports": []}]}})
