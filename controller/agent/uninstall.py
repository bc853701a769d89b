"""Uninstall versus restart: whether a stopping agent removes its table and saved ruleset.

A plain stop (rolling update, pod deletion, eviction, node drain or shutdown, kubelet restart,
OOM kill) must leave the table in force: the next agent swaps in the current rules, and until
then the node keeps enforcing the last ones. Only an uninstall removes them, and the agent
tells the two apart by its own DaemonSet, which it watches from the start (``--daemonset``):
``helm uninstall`` (or ``kubectl delete daemonset``) deletes the DaemonSet first, and only then
does the garbage collector delete its pods, so the watch has seen the deletion by the time the
kubelet sends SIGTERM. An orphaning delete sends no SIGTERM at all.

The watch must stay open: helm then deletes the RoleBinding and ServiceAccount, so a watch
opened afterwards is refused (401/403). The stream opened before keeps delivering events.

Fail closed: the table is removed only on positive evidence. The watch must have seen the
DaemonSet, then seen it deleted (a DELETED event, a deletionTimestamp, or a list that no
longer has it), with no failed request since. Anything else (no ``--daemonset``, never listed,
never seen, present, or a request failed after what it last saw) keeps the table.

Pure: ``observe_*`` fold what the watch reports into a ``Watched``; ``decide`` says what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Watched:
    """What the agent knows of its own DaemonSet (``namespace/name``)."""

    daemonset: str
    listed: bool = False  # at least one list answered
    uid: str | None = None  # the DaemonSet last seen to exist (None: never seen)
    gone: str | None = None  # how that one went ("deleted", "being deleted"); None: it is there
    failure: str | None = None  # a request failed after the last answer: what we know is stale


@dataclass(frozen=True)
class Decision:
    remove: bool
    why: str
    # Kept for lack of knowledge, not because the DaemonSet is there: if this was an uninstall,
    # the operator removes the table and file by hand (the agent's log says how).
    uncertain: bool = False


def _deleting(body: Mapping[str, Any]) -> bool:
    return bool(body.get("metadata", {}).get("deletionTimestamp"))


def observe_list(watched: Watched, items: list[Mapping[str, Any]]) -> Watched:
    """A list answered (the field selector leaves our DaemonSet or nothing)."""
    if items:
        return observe_event(replace(watched, listed=True), "ADDED", items[0])
    gone = "deleted" if watched.uid is not None else None  # seen before, not there now
    return replace(watched, listed=True, gone=gone, failure=None)


def observe_event(watched: Watched, kind: str, body: Mapping[str, Any]) -> Watched:
    uid = body.get("metadata", {}).get("uid")
    if kind == "DELETED":
        if watched.uid is not None and uid != watched.uid:
            return watched  # an older DaemonSet's deletion, reported late
        return replace(watched, uid=uid, gone="deleted", failure=None)
    return replace(
        watched, uid=uid, gone="being deleted" if _deleting(body) else None, failure=None
    )


def observe_failure(watched: Watched, error: str) -> Watched:
    return replace(watched, failure=error)


def decide(watched: Watched | None) -> Decision:
    """Remove the table and saved ruleset at stop, or keep them, and why (for the log)."""
    if watched is None:
        return Decision(False, "no --daemonset given: uninstall removal is off")
    ds = f"DaemonSet {watched.daemonset}"
    if watched.failure is not None:
        return Decision(
            False,
            f"the watch of {ds} failed since its last answer ({watched.failure}); cannot tell "
            "a restart from an uninstall",
            uncertain=True,
        )
    if not watched.listed:
        return Decision(
            False, f"{ds} was never listed; cannot tell a restart from an uninstall", True
        )
    if watched.uid is None:
        return Decision(False, f"{ds} was never seen (wrong --daemonset?)", True)
    if watched.gone is None:
        return Decision(False, f"{ds} is there (a stop is a restart, not an uninstall)")
    return Decision(True, f"{ds} (uid {watched.uid}) was {watched.gone}: an uninstall")
