"""Write planned custom-resource changes to the API server (runs in a worker thread)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.publish.plan import Key, Write
from controller.resources import ADDRESS_GROUPS, GROUP, MANAGED_BY, NODE_RULES, VERSION

log = logging.getLogger(__name__)

Done = list[tuple[Write, Mapping[str, Any] | None]]


def list_published(custom: client.CustomObjectsApi) -> dict[Key, Mapping[str, Any]]:
    """Every AddressGroup and NodeRules object we manage, by (plural, name)."""
    selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
    out: dict[Key, Mapping[str, Any]] = {}
    for plural in (ADDRESS_GROUPS, NODE_RULES):
        result = cast(
            dict[str, Any],
            custom.list_cluster_custom_object(GROUP, VERSION, plural, label_selector=selector),
        )
        for item in result.get("items", []):
            out[(plural, item["metadata"]["name"])] = item
    return out


def execute(custom: client.CustomObjectsApi, writes: list[Write]) -> tuple[Done, int]:
    """Perform ``writes`` in order, stopping at the first failure (the rest is retried by the
    next cycle). Returns what succeeded, with the API's answers, and the bytes sent."""
    done: Done = []
    sent = 0
    for w in writes:
        answer: Mapping[str, Any] | None = None
        try:
            if w.verb == "create":
                body = dict(w.body or {})
                answer = cast(
                    Mapping[str, Any],
                    custom.create_cluster_custom_object(GROUP, VERSION, w.plural, body),
                )
            elif w.verb == "replace":
                body = {
                    "metadata": {"labels": label_patch(w.current, w.body)},
                    "spec": (w.body or {}).get("spec"),
                }
                answer = cast(
                    Mapping[str, Any],
                    custom.patch_cluster_custom_object(GROUP, VERSION, w.plural, w.name, body),
                )
            else:
                body = {}
                custom.delete_cluster_custom_object(GROUP, VERSION, w.plural, w.name)
        except ApiException as e:
            if w.verb == "delete" and e.status == 404:
                done.append((w, None))
                continue
            log.warning("%s %s/%s failed: %s %s", w.verb, w.plural, w.name, e.status, e.reason)
            break
        sent += len(json.dumps(body))
        done.append((w, answer))
    return done, sent


def label_patch(
    current: Mapping[str, Any] | None, desired: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A JSON merge patch of labels: the desired ones, and ``None`` for each label to drop."""
    old = dict(((current or {}).get("metadata") or {}).get("labels") or {})
    new = dict(((desired or {}).get("metadata") or {}).get("labels") or {})
    return {**{k: None for k in old if k not in new}, **new}
