"""The operator engine and its API adapters without an API server: monotonic feeding, the
re-list diff, publishing against a simulated server (echoes, hand edits, failing writes),
write outcomes and the lease's renew deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.kube import timeouts
from controller.kube.lease import LeaseElector
from controller.kube.publisher import perform
from controller.operator.engine import LISTED_KINDS, Engine, OperatorConfig
from controller.operator.run import Relist, Runtime, build_registry
from controller.publish.plan import Key, Write
from controller.publish.queue import Failure, Outcome
from controller.resources import ADDRESS_GROUPS, NODE_RULES, group_from_body

NS = "x"


def pod(name: str, node: str, ip: str, app: str, version: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app": app},
            "resourceVersion": str(version),
        },
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def policy(name: str, target: str, source: str, version: int = 1) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "resourceVersion": str(version),
        },
        "spec": {
            "podSelector": {"matchLabels": {"app": target}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": source}}}]}],
            "policyTypes": ["Ingress"],
        },
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """What kube-apiserver stores for a JSON merge patch: a null deletes a field, also in
    the objects of a list (measured: a NodeRules rule patched with ``ports: null`` comes back
    without ``ports``)."""
    if isinstance(patch, list):
        return [merge_patch(None, v) for v in patch]
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class Server:
    """Our custom resources as an API server would keep them: versions, answers, echoes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.objects: dict[Key, dict[str, Any]] = {}
        self.version = 1000
        self.fail: dict[Key, Failure] = {}
        self.writes: list[str] = []

    def _next(self) -> str:
        self.version += 1
        return str(self.version)

    def perform(self, w: Write) -> Outcome:
        self.writes.append(str(w))
        if w.key in self.fail:
            return Outcome(failure=self.fail[w.key])
        if w.verb == "delete":
            self.objects.pop(w.key, None)
            self._echo(
                w.plural, "DELETED", {"metadata": {"name": w.name, "resourceVersion": self._next()}}
            )
            return Outcome()
        assert w.body is not None
        old = self.objects.get(w.key, {"metadata": {"generation": 0}})
        spec = w.body["spec"]
        if w.verb == "replace":  # a JSON merge patch, as publisher.perform sends it
            spec = merge_patch(old["spec"], spec)
        meta = {
            **w.body["metadata"],
            "resourceVersion": self._next(),
            "generation": old["metadata"].get("generation", 0) + 1,
            "uid": f"uid-{w.name}",
        }
        stored = {**w.body, "metadata": meta, "spec": spec}
        self.objects[w.key] = stored
        self._echo(w.plural, "MODIFIED", stored)
        return Outcome(answer=stored)

    def _echo(self, plural: str, type: str, body: dict[str, Any]) -> None:
        self.echoes.append((plural, type, body))

    echoes: list[tuple[str, str, dict[str, Any]]]

    def converge(self, now: float = 0.0, echo: bool = True, rounds: int = 50) -> list[str]:
        """Publish cycles until nothing is written, answering each write; echoes of our own
        writes are delivered (late, as a watch would) when ``echo``."""
        done: list[str] = []
        for _ in range(rounds):
            self.echoes = []
            writes, _ = self.engine.cycle(now)
            for w in writes:
                self.engine.outcomes.put((self.engine.term, w, self.perform(w)))
                done.append(str(w))
            if echo:
                for plural, type, body in self.echoes:
                    self.engine.observed(plural, type, body)
            if not writes and not (self.engine.queue and self.engine.queue.in_flight):
                return done
        raise AssertionError(f"no convergence: {done[-20:]}")


def synced(e: Engine) -> None:
    """The initial listing of every kind done (found the cluster empty)."""
    for kind in LISTED_KINDS:
        e.relist_done(kind, set(), "1")


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine(OperatorConfig())
    synced(e)
    for kind, body in (
        ("Namespace", {"metadata": {"name": NS, "resourceVersion": "1"}}),
        ("Node", {"metadata": {"name": "n1", "resourceVersion": "2"}}),
        ("Node", {"metadata": {"name": "n2", "resourceVersion": "3"}}),
        ("Pod", pod("a", "n1", "10.0.0.1", "a", 10)),
        ("Pod", pod("b", "n2", "10.0.0.2", "b", 11)),
        ("Pod", pod("c", "n2", "10.0.0.3", "c", 12)),
        ("NetworkPolicy", policy("a-from-b", "a", "b", 13)),
    ):
        e.event(kind, None, body)
    yield e


def new_group(engine: Engine, selector: str) -> Key:
    """The group of the peer selecting ``selector``."""
    (name,) = [
        n for n in engine.compiler.group_names() if selector in str(engine.compiler.group(n))
    ]
    return (ADDRESS_GROUPS, name)


def members(server: Server) -> dict[str, set[str]]:
    out = {}
    for (plural, _), body in server.objects.items():
        if plural == ADDRESS_GROUPS:
            group = group_from_body(body)
            out[group.peer] = {str(ip) for ip in getattr(group, "addresses", ())}
    return out


def test_steady_state_makes_no_writes(engine: Engine) -> None:
    server = Server(engine)
    engine.start_leading({})
    first = server.converge()
    assert "create noderules/n1" in first and any("addressgroups" in w for w in first)
    assert server.converge() == []
    # agents' status reports and replays of old events change nothing
    for (plural, _), body in list(server.objects.items()):
        if plural == NODE_RULES:
            status = {**body, "metadata": {**body["metadata"], "resourceVersion": server._next()}}
            engine.observed(plural, "MODIFIED", {**status, "status": {"appliedGeneration": 1}})
        engine.observed(plural, None, body)
    assert server.converge() == []
    # a new leader over the same published state writes nothing either
    engine.stop_leading()
    engine.start_leading(dict(server.objects))
    assert server.converge() == []


def test_objects_deleted_or_edited_by_hand_are_restored(engine: Engine) -> None:
    server = Server(engine)
    engine.start_leading({})
    server.converge()
    wanted = dict(server.objects)
    rules = server.objects.pop((NODE_RULES, "n1"))
    engine.observed(
        NODE_RULES,
        "DELETED",
        {"metadata": {**rules["metadata"], "resourceVersion": server._next()}},
    )
    ((plural, name), group) = next(
        (k, b) for k, b in server.objects.items() if k[0] == ADDRESS_GROUPS
    )
    edited = {
        **group,
        "metadata": {**group["metadata"], "resourceVersion": server._next()},
        "spec": {**group["spec"], "addresses": ["10.9.9.9"]},
    }
    server.objects[(plural, name)] = edited
    engine.observed(plural, "MODIFIED", edited)
    assert sorted(server.converge()) == ["create noderules/n1", f"replace addressgroups/{name}"]
    assert {k: (b["metadata"]["labels"], b["spec"]) for k, b in server.objects.items()} == {
        k: (b["metadata"]["labels"], b["spec"]) for k, b in wanted.items()
    }
    assert server.converge() == []


def test_a_failing_group_write_holds_back_only_what_needs_it(engine: Engine) -> None:
    server = Server(engine)
    engine.start_leading({})
    server.converge()
    server.writes.clear()
    # a new policy whose group the API server refuses, and an unrelated one on the other node
    engine.event("NetworkPolicy", "ADDED", policy("a-from-c", "a", "c", 20))
    engine.event("NetworkPolicy", "ADDED", policy("c-from-a", "c", "a", 21))
    refused = new_group(engine, "app=c")
    server.fail[refused] = Failure(
        403, "forbidden", "Forbidden: denied by ValidatingAdmissionPolicy 'no-c'"
    )
    written = server.converge(now=1.0)
    assert f"create addressgroups/{refused[1]}" in written
    assert "replace noderules/n2" in written  # c-from-a went out
    assert "replace noderules/n1" not in written  # a-from-c needs the refused group: waits
    assert engine.write_problem(1.0 + 59) is None
    problem = engine.write_problem(1.0 + 61)
    assert problem is not None and refused[1] in problem and "ValidatingAdmissionPolicy" in problem
    # retried with backoff only: a few attempts in 40 s of 50 ms cycles, not 800
    attempts = 0
    for step in range(800):
        server.writes.clear()
        server.converge(now=1.0 + step * 0.05)
        attempts += server.writes.count(f"create addressgroups/{refused[1]}")
    assert 3 <= attempts <= 8, attempts
    # allowed again: the group, then n1's rules, go out
    del server.fail[refused]
    written = server.converge(now=200.0)
    assert written == [f"create addressgroups/{refused[1]}", "replace noderules/n1"]
    assert engine.write_problem(200.0) is None


def test_failure_is_reported_on_the_policy_once(engine: Engine) -> None:
    server = Server(engine)
    engine.start_leading({})
    server.converge()
    engine.event("NetworkPolicy", "ADDED", policy("a-from-c", "a", "c", 20))
    refused = new_group(engine, "app=c")
    server.fail[refused] = Failure(422, "invalid", "Invalid: too many entries")
    notices = []
    for step in range(100):
        writes, posted = engine.cycle(step * 0.1)
        notices += posted
        for w in writes:
            engine.outcomes.put((engine.term, w, server.perform(w)))
    warnings = [n for n in notices if n.type == "Warning"]
    assert [(n.reason, n.ref["metadata"]["name"]) for n in warnings] == [
        ("PublishFailed", "a-from-c")
    ]
    assert "Invalid: too many entries" in warnings[0].message


def test_feeding_is_monotonic(engine: Engine) -> None:
    server = Server(engine)
    engine.start_leading({})
    server.converge()
    before = members(server)
    # an older state of pod b (kopf's listing racing a newer event) is ignored
    assert not engine.event("Pod", "MODIFIED", pod("b", "n2", "10.0.0.2", "x", 5))
    assert server.converge() == [] and members(server) == before
    # deleted, then a stale state arrives: it stays deleted
    engine.event("Pod", "DELETED", pod("b", "n2", "10.0.0.2", "b", 30))
    engine.event("Pod", "MODIFIED", pod("b", "n2", "10.0.0.2", "b", 29))
    server.converge()
    assert "10.0.0.2" not in set().union(*members(server).values())
    # re-created under the same name later: admitted
    engine.event("Pod", "ADDED", pod("b", "n2", "10.0.0.7", "b", 31))
    server.converge()
    assert "10.0.0.7" in set().union(*members(server).values())


def test_relist_forgets_what_it_proves_gone(engine: Engine) -> None:
    server = Server(engine)
    engine.start_leading({})
    server.converge()
    assert engine.event("Pod", None, pod("a", "n1", "10.0.0.1", "a", 10))  # a re-list: signal
    engine.event("Pod", "ADDED", pod("d", "n2", "10.0.0.4", "b", 60))  # created after the list
    # a listing at version 50: b was deleted while the watch was down, c changed
    listed: set[str] = set()
    items = [pod("a", "n1", "10.0.0.1", "a", 10), pod("c", "n2", "10.0.0.3", "b", 40)]
    assert engine.relisted("Pod", items, listed) == 1  # c is newer: fed
    assert engine.relist_done("Pod", listed, "50") == 1  # b: gone; d is newer than the list
    server.converge()
    peers = set().union(*members(server).values())
    assert "10.0.0.2" not in peers and {"10.0.0.3", "10.0.0.4"} <= peers
    # kopf's own re-list, older than ours, cannot bring b back
    engine.event("Pod", None, pod("b", "n2", "10.0.0.2", "b", 11))
    server.converge()
    assert "10.0.0.2" not in set().union(*members(server).values())
    # a later listing prunes the tombstone; a new b after it is admitted
    engine.relist_done("Pod", {"x/a", "x/c", "x/d"}, "70")
    assert engine.versions.tombstones("Pod") == 0
    engine.event("Pod", "ADDED", pod("b", "n2", "10.0.0.2", "b", 71))
    server.converge()
    assert "10.0.0.2" in set().union(*members(server).values())


def test_relist_of_published_objects_finds_what_was_deleted(engine: Engine) -> None:
    server = Server(engine)
    engine.start_leading({})
    server.converge()
    server.objects.pop((NODE_RULES, "n2"))  # deleted while our watch was away: no event
    corrected = engine.published_relisted(
        dict(server.objects), {ADDRESS_GROUPS: "5000", NODE_RULES: "5000"}
    )
    assert corrected == 1
    assert server.converge() == ["create noderules/n2"]


def test_listing_event_signals_a_relist_only_after_the_initial_sync() -> None:
    e = Engine(OperatorConfig())
    assert not e.event("Pod", None, pod("a", "n1", "10.0.0.1", "a", 1))
    synced(e)
    assert e.event("Pod", None, pod("a", "n1", "10.0.0.1", "a", 1))
    assert not e.event("Pod", "MODIFIED", pod("a", "n1", "10.0.0.1", "a", 2))
    assert e.observed(ADDRESS_GROUPS, None, {"metadata": {"name": "g", "resourceVersion": "5"}})


def test_the_first_publish_waits_for_every_kinds_initial_listing() -> None:
    """Catches: publishing a partial view after a restart (objects listed but not yet fed
    would be published as absent: their rules and addresses removed until they arrive).
    kopf's events, however many, do not complete the initial sync; only our own complete
    listing of every kind does, and no kopf index is registered (kopf would hold every
    object's first handler call until all its indexes are filled: quadratic)."""
    e = Engine(OperatorConfig())
    rt = Runtime(e, client.ApiClient(), LeaseElector(client.ApiClient(), "ns", "lease", "me"))
    assert not build_registry(rt)._indexing.get_all_handlers()
    # kopf's events: objects created after our (empty) listings of their kinds
    e.event("Namespace", None, {"metadata": {"name": NS, "resourceVersion": "6"}})
    e.event("Node", None, {"metadata": {"name": "n1", "resourceVersion": "7"}})
    e.event("NetworkPolicy", None, policy("a-from-b", "a", "b", 8))
    e.event("Pod", None, pod("a", "n1", "10.0.0.1", "a", 3))
    assert not e.synced
    for kind in ("Namespace", "Node", "NetworkPolicy"):
        e.relist_done(kind, set(), "1")
    listed: set[str] = set()
    e.relisted("Pod", [pod("a", "n1", "10.0.0.1", "a", 3)], listed)
    e.relisted("Pod", [pod("b", "n1", "10.0.0.2", "b", 4)], listed)
    assert not e.synced  # a page of pods is still to come
    assert e.sync_problem() == (
        "initial listing not complete: objects listed so far: Pod 2 "
        "(done: Namespace, Node, NetworkPolicy)"
    )
    e.relist_done("Pod", listed, "5")
    assert e.synced and e.sync_problem() is None
    server = Server(e)
    e.start_leading({})
    server.converge()
    assert {"10.0.0.2"} in members(server).values()  # b, listed in the last page


# ---- adapters --------------------------------------------------------------------------------


class FakeCustom:
    """CustomObjectsApi stand-in recording calls (with their timeouts)."""

    def __init__(self, errors: dict[str, ApiException]) -> None:
        self.errors = errors
        self.calls: list[tuple[str, Any]] = []

    def _call(self, verb: str, kwargs: dict[str, Any], answer: Any) -> Any:
        self.calls.append((verb, kwargs.get("_request_timeout")))
        if verb in self.errors:
            raise self.errors[verb]
        return answer

    def create_cluster_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("create", kwargs, args[3])

    def patch_cluster_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("patch", kwargs, {"metadata": {"name": args[3]}})

    def delete_cluster_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("delete", kwargs, None)

    def get_cluster_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("get", kwargs, {"metadata": {"name": args[3], "resourceVersion": "7"}})


def api_error(status: int, reason: str, message: str) -> ApiException:
    e = ApiException(status=status, reason=reason)
    e.body = f'{{"kind":"Status","reason":"{reason}","message":"{message}"}}'
    return e


def test_perform_classifies_failures_and_always_has_a_timeout() -> None:
    body = {"metadata": {"name": "g"}, "spec": {"peer": "p"}}
    fake = FakeCustom({"create": api_error(409, "AlreadyExists", "exists")})
    out = perform(fake, Write("create", ADDRESS_GROUPS, "g", body))  # type: ignore[arg-type]
    assert out.failure is not None and out.failure.status == 409
    assert out.current == {"metadata": {"name": "g", "resourceVersion": "7"}}
    fake = FakeCustom({"delete": api_error(404, "NotFound", "gone")})
    assert perform(fake, Write("delete", ADDRESS_GROUPS, "g")) == Outcome()  # type: ignore[arg-type]
    fake = FakeCustom({"patch": api_error(422, "Invalid", "denied by policy 'x'")})
    out = perform(fake, Write("replace", ADDRESS_GROUPS, "g", body, body))  # type: ignore[arg-type]
    assert out.failure == Failure(422, "invalid", "Invalid: denied by policy 'x'")
    fake = FakeCustom(
        {"create": api_error(500, "InternalError", "etcdserver: request is too large")}
    )
    out = perform(fake, Write("create", ADDRESS_GROUPS, "g", body))  # type: ignore[arg-type]
    assert out.failure is not None and out.failure.kind == "too_large"
    fake = FakeCustom({"create": TimeoutError("read timed out")})  # type: ignore[dict-item]
    out = perform(fake, Write("create", ADDRESS_GROUPS, "g", body))  # type: ignore[arg-type]
    assert out.failure == Failure(None, "unreachable", "TimeoutError: read timed out")
    assert {timeout for _, timeout in fake.calls} == {timeouts.REQUEST}


class HangingLeases:
    """CoordinationV1Api stand-in: the first round creates the lease, later reads hang."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.timeouts: list[Any] = []
        self.created = False

    def read_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        self.timeouts.append(kwargs.get("_request_timeout"))
        if not self.created:
            raise ApiException(status=404, reason="NotFound")
        self.release.wait(10)
        raise ApiException(status=500, reason="too late")

    def create_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        self.timeouts.append(kwargs.get("_request_timeout"))
        self.created = True


def test_leader_stops_at_the_renew_deadline_while_a_renewal_hangs() -> None:
    elector = LeaseElector(client.ApiClient(), "ns", "lease", "me", renew_deadline=0.5)
    fake = HangingLeases()
    elector.coordination = fake  # type: ignore[assignment]
    assert elector.try_acquire_or_renew() and elector.is_leader
    renewing = threading.Thread(target=elector.try_acquire_or_renew)
    renewing.start()
    try:
        time.sleep(0.1)
        assert elector.is_leader  # within the deadline
        deadline = time.monotonic() + 5
        while elector.is_leader and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not elector.is_leader and renewing.is_alive()  # not leader, call still hanging
    finally:
        fake.release.set()
        renewing.join(10)
    assert fake.timeouts and set(fake.timeouts) == {timeouts.LEASE}


# ---- health and the re-list trigger ------------------------------------------------------------


def test_health_checks_name_what_is_wrong() -> None:
    e = Engine(OperatorConfig(stuck_after=1.0, reconcile_grace=1.0))
    rt = Runtime(e, client.ApiClient(), LeaseElector(client.ApiClient(), "ns", "lease", "me"))
    assert e.sync_problem() == (
        "initial listing not complete: objects listed so far: "
        "Namespace 0, Node 0, NetworkPolicy 0, Pod 0 (done: none)"
    )
    synced(e)
    assert e.sync_problem() is None
    assert rt.cycle_problem() is None
    rt.last_cycle -= 5.0
    assert "no publish cycle completed for 5 s" in (rt.cycle_problem() or "")
    assert rt.reconcile_problem() is None
    rt.reconcile_failing_since, rt.reconcile_error = time.monotonic() - 5.0, "TimeoutError: x"
    assert (rt.reconcile_problem() or "").endswith("TimeoutError: x")


def test_relist_waits_for_the_listing_to_quieten() -> None:
    async def scenario() -> tuple[bool, float, bool]:
        relist = Relist(quiet=0.2)
        assert not await relist.wait(0.05)  # nothing happened: the periodic path
        start = time.monotonic()
        for _ in range(5):  # a listing delivered over 0.4 s
            relist.poke()
            await asyncio.sleep(0.1)
        poked = await relist.wait(5.0)
        return poked, time.monotonic() - start, await relist.wait(0.05)

    poked, took, again = asyncio.run(scenario())
    assert poked and took >= 0.4 + 0.2 - 0.1 and not again


def test_objects_accepted_with_a_problem_are_kept_and_reported_once(engine: Engine) -> None:
    """A bad default-deny annotation is ignored (the Namespace is kept, so NotIn selectors
    still see it), a policy over a limit is enforced fail-closed; each is logged, counted and
    posted as a Warning Event once, not on every event of the object."""
    bad_ns = {
        "metadata": {
            "name": "y",
            "resourceVersion": "20",
            "labels": {"team": "red"},
            "annotations": {"nftpolicy.io/default-deny": "sideways"},
        }
    }
    engine.event("Namespace", "ADDED", bad_ns)
    engine.event(
        "Namespace",
        "MODIFIED",
        {**bad_ns, "metadata": {**bad_ns["metadata"], "resourceVersion": "21"}},
    )
    huge = policy("huge", "a", "b", 22)
    huge["spec"]["ingress"] = [{"ports": [{"port": 80}]}] * 1_001
    engine.event("NetworkPolicy", "ADDED", huge)
    _, notices = engine.cycle(time.monotonic())
    reasons = sorted((n.reason, n.ref["kind"], n.ref["metadata"]["name"]) for n in notices)
    assert ("IgnoredSetting", "Namespace", "y") in reasons
    assert ("PolicyTooLarge", "NetworkPolicy", "huge") in reasons
    assert sum(r[0] in ("IgnoredSetting", "PolicyTooLarge") for r in reasons) == 2
    assert "y" in engine.compiler._namespaces  # kept, not dropped
    assert "x/huge" in engine.compiler.policy_problems()


def test_duplicate_pod_ips_are_counted(engine: Engine) -> None:
    engine.event("Pod", "ADDED", pod("a2", "n1", "10.0.0.1", "a", 30))
    assert "nftpolicy_operator_ip_conflicts_total 1" in engine.metrics.render()


def test_enforced_events_come_under_continuous_churn(engine: Engine) -> None:
    """Catches: Enforced events (and the enforcement histogram) postponed while any write is
    pending or in flight: under continuous churn, or with one hung write anywhere, they never
    came."""
    server = Server(engine)
    engine.start_leading({})
    server.converge()
    # A write for n2 that never finishes (a hung call, or churn that never stops)
    engine.event("Pod", "ADDED", pod("d", "n2", "10.0.0.4", "d", 30))
    hung, _ = engine.cycle(1.0)
    assert [str(w) for w in hung] == ["replace noderules/n2"]
    # A policy for pod a on n1: its write goes out and lands; n1's agent applies it.
    engine.event("NetworkPolicy", "ADDED", policy("a-too", "a", "b", 31))
    notices: list[str] = []
    for step in range(1, 20):
        now = 1.0 + step * 0.05
        server.echoes = []
        writes, posted = engine.cycle(now)
        notices += [f"{n.reason}: {n.message}" for n in posted]
        for w in writes:
            engine.outcomes.put((engine.term, w, server.perform(w)))
        n1 = server.objects[(NODE_RULES, "n1")]
        status = {"appliedGeneration": n1["metadata"]["generation"]}
        engine.observed(NODE_RULES, "MODIFIED", {**n1, "status": status})
    assert engine.queue is not None and engine.queue.in_flight  # n2's write still hangs
    assert any(n.startswith("Enforced: enforced on 1 node(s)") for n in notices), notices
    # a-from-b (the fixture's) and a-too, each observed once
    assert "policy_enforcement_seconds_count 2" in engine.metrics.render()
