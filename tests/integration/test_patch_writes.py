"""Replaces of our custom resources send JSON Patches of what changed, against the real API
server: small, exact, and never applied to a spec that moved on."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from kubernetes import client

from controller.compiler.ir import CompiledPolicy, LocalPod, NodeRules, Rule
from controller.kube.publisher import perform
from controller.model import Direction
from controller.publish.plan import Write, same
from controller.resources import GROUP, NODE_RULES, VERSION, node_rules_body
from controller.testing.apiserver import TestControlPlane
from tests.integration.live import install_crds

pytestmark = pytest.mark.integration


def rules(policies: int) -> NodeRules:
    pods = tuple(
        LocalPod(f"ns/p{i}", (ipaddress.ip_address(f"10.0.{i // 250}.{i % 250 + 1}"),))
        for i in range(300)
    )
    return NodeRules(
        "patch-node",
        pods=pods,
        policies=tuple(
            CompiledPolicy(
                f"ns/pol{i:03}",
                (f"ns/p{i}",),
                frozenset({Direction.INGRESS}),
                ingress=(Rule(peers=(f"g{i}",), ports=None),),  # ports None: every port
            )
            for i in range(policies)
        ),
    )


def test_a_replace_sends_only_the_change_and_falls_back_when_the_spec_moved(
    control_plane: TestControlPlane,
) -> None:
    """Catches: replaces that send the whole spec (a policy spanning 300 nodes sent every
    node's rules in full), a patch that stores something other than the desired object (nulls,
    list positions), and a patch applied to a spec that changed since it was computed."""
    install_crds(control_plane)
    custom = client.CustomObjectsApi(control_plane.api_client())
    first = node_rules_body(rules(100))
    created = perform(custom, Write("create", NODE_RULES, "patch-node", first))
    assert created.failure is None and created.answer is not None
    current: dict[str, Any] = dict(created.answer)

    desired = node_rules_body(rules(101))
    done = perform(custom, Write("replace", NODE_RULES, "patch-node", desired, current))
    assert done.failure is None, done.failure
    stored = custom.get_cluster_custom_object(GROUP, VERSION, NODE_RULES, "patch-node")
    assert same(stored, desired)
    whole = len(json.dumps(desired["spec"]))
    assert done.sent < whole / 20, (done.sent, whole)

    # ``current`` is now stale (generation moved on): the patch's test fails, the whole
    # desired spec goes out instead, and the result is still exactly the desired object.
    again = node_rules_body(rules(99))
    fallback = perform(custom, Write("replace", NODE_RULES, "patch-node", again, current))
    assert fallback.failure is None, fallback.failure
    stored = custom.get_cluster_custom_object(GROUP, VERSION, NODE_RULES, "patch-node")
    assert same(stored, again)
    assert fallback.sent >= whole * 0.9
    custom.delete_cluster_custom_object(GROUP, VERSION, NODE_RULES, "patch-node")
