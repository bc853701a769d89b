"""Which custom-resource writes to send next, one object at a time (pure bookkeeping).

``published`` is what the API server has, as far as we know: the answers to our writes and
the events of our own custom resources, the newest resourceVersion winning. ``pending`` holds
desired bodies not yet known to be published. Every object is written on its own: a write
that fails is retried with capped exponential backoff for that object alone, and every other
write goes on. Agents apply only complete views (a NodeRules object and every group it refers
to), so two orderings are kept, and nothing else waits for anything:

* a NodeRules object is written only once every shard of every group it refers to is
  published with that node in its span (so the node's agent sees the whole group);
* a group's shards keep in their span, and are not deleted while, any node whose published
  (or in-flight) NodeRules still refers to the group.

A group whose write keeps failing therefore holds back the NodeRules that need it, and nothing
more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from controller.publish.plan import Body, Key, Write, labels, same, with_span, write_for
from controller.publish.shards import shard_group
from controller.publish.versions import newer
from controller.resources import ADDRESS_GROUPS, NODE_RULES, span_label

BACKOFF_FIRST = 0.5  # seconds before the first retry of a failed write
BACKOFF_CAP = 30.0  # retries of one object never wait longer than this


def backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th consecutive failure of one object."""
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** (attempts - 1))


@dataclass(frozen=True)
class Failure:
    """Why a write failed, as the API (or the network) said."""

    status: int | None  # HTTP status; None when no answer came (timeout, connection error)
    kind: str  # class for metrics, e.g. "too_large", "invalid", "forbidden", "unreachable"
    message: str  # one line: the API's reason

    def __str__(self) -> str:
        return f"{self.status} {self.message}" if self.status else self.message


@dataclass(frozen=True)
class Outcome:
    """What one write achieved."""

    answer: Body | None = None  # create/replace: the object as the API server stored it
    failure: Failure | None = None
    current: Body | None = None  # a create that met 409: the object found instead
    sent: int = 0  # bytes of the request body


@dataclass
class Streak:
    """Consecutive failures of one object's writes."""

    write: str  # e.g. "create addressgroups/ag-1", for logs and health
    since: float
    attempts: int
    retry_at: float
    failure: Failure


def _version(body: Body) -> str | None:
    version = body.get("metadata", {}).get("resourceVersion")
    return None if version is None else str(version)


class WriteQueue:
    def __init__(
        self,
        published: Mapping[Key, Body],
        references: Callable[[Body], frozenset[str]],
    ) -> None:
        """``references`` gives the groups a published NodeRules body refers to."""
        self._references = references
        self.published: dict[Key, Body] = {}
        self.pending: dict[Key, Body | None] = {}
        self.in_flight: dict[Key, Write] = {}
        self.streaks: dict[Key, Streak] = {}
        self._refs: dict[str, frozenset[str]] = {}  # node -> groups its published rules use
        self._users: dict[str, set[str]] = {}  # group -> nodes whose published rules use it
        self._wanted_refs: dict[str, frozenset[str]] = {}  # node -> groups its pending rules use
        self._flight_refs: dict[str, frozenset[str]] = {}  # node -> groups of its rules in flight
        self._dirty: set[Key] = set()  # pending keys to compare again
        self._shards: dict[str, set[str]] = {}  # group -> its shards, pending or published
        # planned writes waiting for their turn, by phase: groups, NodeRules, group deletions
        self._todo: tuple[dict[Key, Write], ...] = ({}, {}, {})
        for key, body in published.items():
            self._store(key, body)

    # ---- inputs ------------------------------------------------------------------------------

    def want(self, key: Key, body: Body | None, refs: frozenset[str] = frozenset()) -> None:
        """The desired body of ``key`` (``None``: should not exist); for NodeRules, ``refs``
        are the groups it refers to."""
        self.pending[key] = body
        self._index(key)
        if key[0] == NODE_RULES:
            if body is None:
                self._wanted_refs.pop(key[1], None)
            else:
                self._wanted_refs[key[1]] = refs
        self._dirty.add(key)
        self._unplan(key)

    def observe(self, key: Key, body: Body | None, version: str | None = None) -> bool:
        """An event of our own resource (``body`` None: deleted at ``version``); applied if
        newer than what is held. Returns whether labels or spec changed: the caller re-plans
        the key if it is not pending."""
        current = self.published.get(key)
        if current is None and body is None:
            return False
        if current is not None:
            held = _version(current)
            incoming = version if body is None else _version(body)
            if not newer(incoming, held) and (body is not None or incoming != held):
                return False
        changed = not same(current, body)
        self._store(key, body)
        return changed

    def finished(self, write: Write, outcome: Outcome, now: float) -> Streak | None:
        """Record a write's outcome. Returns the object's failure streak, updated when this
        write failed and ended when it succeeded (``None`` when there is none)."""
        key = write.key
        del self.in_flight[key]
        self._land(write)
        if key in self.pending:
            self._dirty.add(key)
        failure = outcome.failure
        if failure is None:
            if write.verb == "delete":
                self._store(key, None)
            elif outcome.answer is not None:
                self._accept(key, outcome.answer)
            return self.streaks.pop(key, None)
        if write.verb == "replace" and failure.status == 404:
            self._store(key, None)  # deleted behind our back: create it
            return None
        if write.verb == "create" and failure.status == 409:
            if outcome.current is not None:  # exists already: compare with what is there
                self._accept(key, outcome.current)
            return None
        streak = self.streaks.get(key)
        if streak is None:
            streak = self.streaks[key] = Streak(str(write), now, 0, now, failure)
        streak.write, streak.failure = str(write), failure
        streak.attempts += 1
        streak.retry_at = now + backoff(streak.attempts)
        return streak

    def forget(self, key: Key) -> None:
        """A complete listing shows ``key`` is gone."""
        self._store(key, None)

    # ---- output ------------------------------------------------------------------------------

    def ready(self, now: float, slots: int) -> list[Write]:
        """Writes to send now, at most enough to have ``slots`` in flight; they count as in
        flight until ``finished``. Groups first, then NodeRules, then group deletions."""
        self._plan()
        out: list[Write] = []
        for todo in self._todo:
            for write in todo.values():
                if len(self.in_flight) >= slots:
                    break
                if self._ready(write, now):
                    self.in_flight[write.key] = write
                    if write.plural == NODE_RULES and write.verb != "delete":
                        refs = self._wanted_refs.get(write.name, frozenset())
                        self._flight_refs[write.name] = refs
                    out.append(write)
        for write in out:
            del self._todo[_phase(write)][write.key]
        return out

    def oldest_streak(self) -> Streak | None:
        return min(self.streaks.values(), key=lambda s: s.since, default=None)

    def generation(self, node: str) -> int | None:
        body = self.published.get((NODE_RULES, node))
        return None if body is None else int(body.get("metadata", {}).get("generation", 0))

    # ---- internals ---------------------------------------------------------------------------

    def _accept(self, key: Key, body: Body) -> None:
        current = self.published.get(key)
        if current is None or newer(_version(body), _version(current)):
            self._store(key, body)

    def _store(self, key: Key, body: Body | None) -> None:
        plural, name = key
        old = self.published.get(key)
        if body is None:
            self.published.pop(key, None)
        else:
            self.published[key] = body
        self._index(key)
        if key in self.pending:
            self._dirty.add(key)
        if plural != NODE_RULES or (
            old is not None and body is not None and old.get("spec") == body.get("spec")
        ):
            return
        before = self._refs.pop(name, frozenset())
        after = self._references(body) if body is not None else frozenset()
        if after:
            self._refs[name] = after
        for group in before - after:
            users = self._users[group]
            users.discard(name)
            if not users:
                del self._users[group]
        for group in after - before:
            self._users.setdefault(group, set()).add(name)
        self._users_changed(before ^ after)

    def _land(self, write: Write) -> None:
        """A write left the flight: the groups its rules referred to may be free now."""
        if write.plural == NODE_RULES:
            self._users_changed(self._flight_refs.pop(write.name, frozenset()))

    def _index(self, key: Key) -> None:
        """Keep ``_shards`` in step after ``key`` entered or left ``pending``/``published``."""
        plural, name = key
        if plural != ADDRESS_GROUPS:
            return
        group = shard_group(name)
        if key in self.pending or key in self.published:
            self._shards.setdefault(group, set()).add(name)
            return
        names = self._shards.get(group)
        if names is not None:
            names.discard(name)
            if not names:
                del self._shards[group]

    def _users_changed(self, groups: Iterable[str]) -> None:
        for group in groups:
            for name in self._shards.get(group, ()):
                key = (ADDRESS_GROUPS, name)
                if key in self.pending:
                    self._dirty.add(key)
                    self._unplan(key)

    def _users_of(self, group: str) -> set[str]:
        users = set(self._users.get(group, ()))
        users.update(n for n, refs in self._flight_refs.items() if group in refs)
        return users

    def _plan(self) -> None:
        for key in sorted(k for k in self._dirty if k not in self.in_flight):
            self._dirty.discard(key)
            self._unplan(key)
            desired, current = self.pending[key], self.published.get(key)
            plural, name = key
            if same(desired, current):
                del self.pending[key]
                self._index(key)
                self.streaks.pop(key, None)
                if plural == NODE_RULES:
                    self._wanted_refs.pop(name, None)
                continue
            if plural == ADDRESS_GROUPS:
                users = self._users_of(shard_group(name))
                if desired is None and users and not self._group_stays(name):
                    continue  # still referred to: deleted once the rules have moved on
                if desired is not None:
                    desired = with_span(desired, users)
            write = write_for(plural, name, desired, current)
            if write is not None:
                self._todo[_phase(write)][key] = write

    def _unplan(self, key: Key) -> None:
        for todo in self._todo:
            todo.pop(key, None)

    def _ready(self, write: Write, now: float) -> bool:
        streak = self.streaks.get(write.key)
        if streak is not None and now < streak.retry_at:
            return False
        if write.plural == ADDRESS_GROUPS:
            return (
                write.verb != "delete"
                or self._group_stays(write.name)
                or not self._users_of(shard_group(write.name))
            )
        if write.verb == "delete":
            return True
        label = span_label(write.name)
        return all(self._visible(group, label) for group in self._wanted_refs.get(write.name, ()))

    def _group_stays(self, shard: str) -> bool:
        """Is the group of ``shard`` to go on existing? (Its base shard is never emptied away,
        so another shard deleted while it stays only lost its members: it need not wait for
        the rules that use the group.)"""
        base = (ADDRESS_GROUPS, shard_group(shard))
        return shard != base[1] and (
            self.pending[base] is not None if base in self.pending else base in self.published
        )

    def _visible(self, group: str, label: str) -> bool:
        """Is every shard of ``group`` (but those on their way out) published with ``label``?"""
        names = self._shards.get(group)
        if not names or group not in names:
            return False
        for name in names:
            key = (ADDRESS_GROUPS, name)
            if key in self.pending and self.pending[key] is None:
                continue
            body = self.published.get(key)
            if body is None or label not in labels(body) or key in self.in_flight:
                return False
        return True


def _phase(write: Write) -> int:
    if write.plural == NODE_RULES:
        return 1
    return 2 if write.verb == "delete" else 0
