"""The kernel's own listing of our table loads again (``nft -c -f``) whatever the names.

Policy and pod names reach rule, set and map element comments (render.py ``_comment``), and
``nft list`` prints comments between double quotes without escaping. Names come from custom
resources, so any text is possible there: quotes, backslashes, newlines, other control
characters, non-ASCII, far more than the comment length. Each example renames the policies and
pods of the examples' node-1 ruleset, applies it in a scratch namespace, lists the table and
checks the listing with ``nft -c -f``.
"""

from __future__ import annotations

import dataclasses
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.agent.kernel import Kernel
from controller.agent.render import FAMILY, TABLE, RenderOptions, render
from controller.compiler import compile_objects, groups_for
from controller.compiler.ir import Group, NodeRules
from controller.manifests import load_objects
from controller.model.config import DefaultDeny
from controller.model.direction import parse_direction_set
from controller.testing.netns import unavailable_reason

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HOSTILE = [
    '"',
    "\\",
    "\n",
    "\r",
    "\t",
    "\x00",
    "'",
    ";",
    "#",
    "{",
    "}",
    "$",
    "@",
    "é",
    "漢",
    "\u2028",
]

names = st.text(
    alphabet=st.one_of(st.sampled_from(HOSTILE), st.characters(codec="utf-8")),
    min_size=1,
    max_size=300,
)


@pytest.fixture(scope="module")
def scratch_netns() -> Iterator[str]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    name = f"npc-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module")
def node_rules() -> tuple[NodeRules, dict[str, Group]]:
    objects = load_objects([str(EXAMPLES)], lambda _: None)
    compiler = compile_objects(objects, DefaultDeny(directions=parse_direction_set("all", "", "")))
    rules = compiler.node_rules("node-1")
    assert rules.policies and rules.pods
    return rules, groups_for(compiler, rules)


def _renamed(rules: NodeRules, name: str) -> NodeRules:
    """Every pod and policy key replaced by ``name`` (numbered: keys stay distinct)."""
    pods = {p.key: f"{name}{i}" for i, p in enumerate(rules.pods)}
    return dataclasses.replace(
        rules,
        pods=tuple(dataclasses.replace(p, key=pods[p.key]) for p in rules.pods),
        policies=tuple(
            dataclasses.replace(
                p, key=f"{name}/{i}", applied_to=tuple(pods.get(k, k) for k in p.applied_to)
            )
            for i, p in enumerate(rules.policies)
        ),
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=names)
def test_listing_reloads_with_hostile_names(
    scratch_netns: str, node_rules: tuple[NodeRules, dict[str, Group]], name: str
) -> None:
    rules, groups = node_rules
    ruleset = render(_renamed(rules, name), groups, RenderOptions())
    Kernel(scratch_netns).apply(ruleset)
    listed = subprocess.run(
        ["ip", "netns", "exec", scratch_netns, "nft", "list", "table", FAMILY, TABLE],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert b"comment" in listed
    check = subprocess.run(
        ["ip", "netns", "exec", scratch_netns, "nft", "-c", "-f", "-"],
        input=listed,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, (name, check.stderr.decode(errors="replace")[-2000:])
