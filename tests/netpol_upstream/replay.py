"""Replay a case's actions as model objects, for any enforcement back end.

``Replay`` keeps the model cluster (namespaces, pods, policies) as API dicts, applies case
actions to it, and returns the changed objects already parsed, so a caller can feed them to
the incremental compiler (as watch events would) or build a ``semantics.Snapshot``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.model import ApiObject, parse_object
from tests.netpol_upstream import model
from tests.netpol_upstream.cases import (
    Action,
    ApplyPolicy,
    DeletePolicy,
    SetNamespaceLabels,
    SetPodLabels,
)
from tests.netpol_upstream.model import Addresses


@dataclass(frozen=True)
class Deleted:
    """A NetworkPolicy that an action deleted (key ``namespace/name``)."""

    key: str


Event = ApiObject | Deleted


class Replay:
    def __init__(self, pods: list[dict[str, Any]], addresses: Addresses) -> None:
        self.addresses = addresses
        self._namespaces = {ns["metadata"]["name"]: ns for ns in model.namespaces()}
        self._pods = {
            f"{p['metadata']['namespace']}/{p['metadata']['name']}": copy.deepcopy(p) for p in pods
        }
        self._policies: dict[str, dict[str, Any]] = {}

    def objects(self) -> list[ApiObject]:
        raws = [*self._namespaces.values(), *self._pods.values(), *self._policies.values()]
        return [parse_object(r) for r in raws]

    def apply(self, action: Action) -> Event:
        if isinstance(action, ApplyPolicy):
            policy = action.render(self.addresses)
            policy.setdefault("apiVersion", "networking.k8s.io/v1")
            policy.setdefault("kind", "NetworkPolicy")
            meta = policy["metadata"]
            self._policies[f"{meta['namespace']}/{meta['name']}"] = policy
            return parse_object(policy)
        if isinstance(action, DeletePolicy):
            key = f"{action.namespace}/{action.name}"
            del self._policies[key]
            return Deleted(key)
        if isinstance(action, SetNamespaceLabels):
            return parse_object(_relabel(self._namespaces[action.namespace], action.labels))
        if isinstance(action, SetPodLabels):
            key = model.pod_string(action.namespace, action.pod)
            return parse_object(_relabel(self._pods[key], action.labels))
        raise TypeError(f"unknown action {action!r}")


def _relabel(raw: dict[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    raw["metadata"]["labels"] = dict(labels)
    return raw
