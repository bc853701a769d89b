"""Pure diff between desired and published custom resources.

Only ``metadata.labels`` and ``spec`` are compared: everything else on a published object
(status, resourceVersion, managed fields) belongs to the API server or the agents. A restart
that computes the same desired state therefore plans no writes at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Key = tuple[str, str]  # (plural, name)


@dataclass(frozen=True)
class Write:
    verb: Literal["create", "replace", "delete"]
    plural: str
    name: str
    body: Mapping[str, Any] | None = None  # create/replace: the desired object
    current: Mapping[str, Any] | None = None  # replace: what is published now


def _comparable(body: Mapping[str, Any]) -> tuple[Any, Any]:
    return (dict(body.get("metadata", {}).get("labels") or {}), body.get("spec"))


def plan(
    desired: Mapping[Key, Mapping[str, Any] | None],
    published: Mapping[Key, Mapping[str, Any]],
) -> list[Write]:
    """Writes for every key in ``desired`` (``None`` = should not exist).

    Creates come before replaces and deletes last, so that a NodeRules object never refers
    to a group that is not published yet, and a group is only deleted after the rules that
    referred to it have moved on. Groups go before node rules within each verb.
    """
    writes: list[Write] = []
    for (plural, name), body in desired.items():
        current = published.get((plural, name))
        if body is None:
            if current is not None:
                writes.append(Write("delete", plural, name))
        elif current is None:
            writes.append(Write("create", plural, name, body))
        elif _comparable(current) != _comparable(body):
            writes.append(Write("replace", plural, name, body, current))
    order = {"create": 0, "replace": 1, "delete": 2}
    kinds = {"addressgroups": 0, "noderules": 1}
    writes.sort(
        key=lambda w: (
            order[w.verb],
            kinds.get(w.plural, 2) if w.verb != "delete" else -kinds.get(w.plural, 2),
            w.name,
        )
    )
    return writes
