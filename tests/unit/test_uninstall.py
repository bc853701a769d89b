"""Uninstall versus restart (controller/agent/uninstall.py): the table goes only when the
agent's watch saw its own DaemonSet deleted, with nothing uncertain since."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from controller.agent.uninstall import (
    Watched,
    decide,
    observe_event,
    observe_failure,
    observe_list,
)
from controller.cli import _namespaced_name

DS = "nftpolicy/np-nftpolicy-agent"


def daemonset(uid: str = "u1", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "np-nftpolicy-agent", "namespace": "nftpolicy", "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-29T21:00:00Z"
    return {"metadata": meta}


def seen() -> Watched:
    return observe_list(Watched(DS), [daemonset()])


def test_no_daemonset_given_keeps() -> None:
    decision = decide(None)
    assert not decision.remove and not decision.uncertain
    assert "--daemonset" in decision.why


def test_never_listed_keeps_uncertain() -> None:
    decision = decide(Watched(DS))
    assert not decision.remove and decision.uncertain and "never listed" in decision.why


def test_never_seen_keeps_uncertain() -> None:
    decision = decide(observe_list(Watched(DS), []))
    assert not decision.remove and decision.uncertain and "never seen" in decision.why


def test_present_keeps_a_restart() -> None:
    # rolling update, pod deletion, eviction, drain: the DaemonSet is there (maybe modified)
    watched = observe_event(seen(), "MODIFIED", daemonset())
    decision = decide(watched)
    assert not decision.remove and not decision.uncertain
    assert "restart" in decision.why


def test_deleted_event_removes() -> None:
    decision = decide(observe_event(seen(), "DELETED", daemonset()))
    assert decision.remove and "u1" in decision.why and "was deleted" in decision.why


def test_deletion_timestamp_removes() -> None:  # foreground deletion
    decision = decide(observe_event(seen(), "MODIFIED", daemonset(deleting=True)))
    assert decision.remove and "being deleted" in decision.why


def test_listed_being_deleted_removes() -> None:  # the agent started during a foreground delete
    assert decide(observe_list(Watched(DS), [daemonset(deleting=True)])).remove


def test_relist_without_it_after_seeing_it_removes() -> None:
    # the watch ended (server timeout) and the re-list no longer has it
    decision = decide(observe_list(seen(), []))
    assert decision.remove and "was deleted" in decision.why


def test_a_failure_after_the_deletion_keeps() -> None:
    # helm deleted the RoleBinding/ServiceAccount too: a re-list is refused; the DaemonSet may
    # have been re-installed since -> keep (fail closed)
    deleted = observe_event(seen(), "DELETED", daemonset())
    decision = decide(observe_failure(deleted, "API error 401: Unauthorized"))
    assert not decision.remove and decision.uncertain and "401" in decision.why


def test_a_failure_while_present_keeps() -> None:
    decision = decide(observe_failure(seen(), "API error 403: Forbidden"))
    assert not decision.remove and decision.uncertain


def test_a_successful_relist_after_a_failure_counts_again() -> None:
    failed = observe_failure(seen(), "ConnectionRefusedError")
    assert decide(observe_list(failed, [])).remove
    assert not decide(observe_list(failed, [daemonset()])).remove


def test_recreated_daemonset_keeps() -> None:
    # deleted with --cascade=orphan and created again (new uid): the pods are adopted
    deleted = observe_event(seen(), "DELETED", daemonset("u1"))
    recreated = observe_event(deleted, "ADDED", daemonset("u2"))
    assert not decide(recreated).remove
    # ... and a late DELETED of the old one does not count against the new one
    assert not decide(observe_event(recreated, "DELETED", daemonset("u1"))).remove
    assert decide(observe_event(recreated, "DELETED", daemonset("u2"))).remove


def test_namespaced_name_argument() -> None:
    assert _namespaced_name("nftpolicy/np-agent") == ("nftpolicy", "np-agent")
    for bad in ("np-agent", "/np-agent", "nftpolicy/", "a/b/c"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAMESPACE/NAME"):
            _namespaced_name(bad)
