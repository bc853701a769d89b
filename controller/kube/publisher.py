"""The operator's API calls besides watching: one custom-resource write, and paged listings.

Everything here runs in worker threads, one call at a time per thread, and every call has a
client-side timeout (``controller/kube/timeouts.py``) so a connection that stops answering
costs one object one timeout, never a thread forever.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.kube import timeouts
from controller.publish import json_patch
from controller.publish.plan import Body, Key, Write
from controller.publish.queue import Failure, Outcome
from controller.resources import ADDRESS_GROUPS, GROUP, MANAGED_BY, NODE_RULES, VERSION

log = logging.getLogger(__name__)

ListFn = Callable[..., Any]
PAGE = 500  # objects per list request (client-go's default)
CR_PAGE = 50  # our objects can be large (a NodeRules of a busy node: hundreds of KB)
_MESSAGE_MAX = 300


def list_functions(api: client.ApiClient) -> dict[str, ListFn]:
    """Cluster-wide list calls of the kinds the operator compiles, by kind."""
    core = client.CoreV1Api(api)
    return {
        "Namespace": core.list_namespace,
        "Pod": core.list_pod_for_all_namespaces,
        "Node": core.list_node,
        "NetworkPolicy": client.NetworkingV1Api(api).list_network_policy_for_all_namespaces,
    }


def list_pages(
    list_fn: ListFn, limit: int = PAGE, **kwargs: Any
) -> Iterator[tuple[list[dict[str, Any]], str]]:
    """A consistent listing in pages: (items as raw JSON dicts, the listing's resourceVersion).

    Raw JSON (not the client's models) so items look exactly like kopf's watch events; every
    page belongs to the snapshot of the first (the API server's continue tokens)."""
    token: str | None = None
    version = ""
    while True:
        response = list_fn(
            limit=limit,
            _continue=token,
            _preload_content=False,
            _request_timeout=timeouts.REQUEST,
            **kwargs,
        )
        data = json.loads(response.data)
        meta = data.get("metadata") or {}
        version = version or str(meta.get("resourceVersion", ""))
        yield list(data.get("items") or ()), version
        token = meta.get("continue")
        if not token:
            return


def list_published(custom: client.CustomObjectsApi) -> tuple[dict[Key, Body], dict[str, str]]:
    """Every AddressGroup and NodeRules object we manage, by (plural, name), and the
    resourceVersion of each plural's listing."""
    selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
    out: dict[Key, Body] = {}
    versions: dict[str, str] = {}
    for plural in (ADDRESS_GROUPS, NODE_RULES):

        def list_fn(plural: str = plural, **kwargs: Any) -> Any:
            return custom.list_cluster_custom_object(GROUP, VERSION, plural, **kwargs)

        for items, version in list_pages(list_fn, CR_PAGE, label_selector=selector):
            versions[plural] = version
            for item in items:
                out[(plural, item["metadata"]["name"])] = item
    return out, versions


def perform(custom: client.CustomObjectsApi, w: Write) -> Outcome:
    """Send one write; never raises. A delete of something already gone succeeds; a create
    that finds the object already there (409) reads it, so the caller can compare with what is
    really published."""
    body: dict[str, Any] = {}
    try:
        if w.verb == "create":
            body = dict(w.body or {})
            answer = custom.create_cluster_custom_object(
                GROUP, VERSION, w.plural, body, _request_timeout=timeouts.REQUEST
            )
        elif w.verb == "replace":
            body = {
                "metadata": {"labels": label_patch(w.current, w.body)},
                "spec": (w.body or {}).get("spec"),
            }
            ops = _json_patch(w.current, w.body)
            if ops is not None and len(json.dumps(ops)) < len(json.dumps(body)):
                try:
                    answer = custom.patch_cluster_custom_object(
                        GROUP,
                        VERSION,
                        w.plural,
                        w.name,
                        ops,
                        _content_type="application/json-patch+json",
                        _request_timeout=timeouts.REQUEST,
                    )
                    return Outcome(answer=cast(Body | None, answer), sent=len(json.dumps(ops)))
                except ApiException as e:
                    # 422: the spec moved on since ``current`` (the generation test failed):
                    # send it whole. Anything else is this write's failure.
                    if e.status != 422:
                        raise
            answer = custom.patch_cluster_custom_object(
                GROUP, VERSION, w.plural, w.name, body, _request_timeout=timeouts.REQUEST
            )
        else:
            custom.delete_cluster_custom_object(
                GROUP, VERSION, w.plural, w.name, _request_timeout=timeouts.REQUEST
            )
            answer = None
    except Exception as e:  # noqa: BLE001 - every failure is this object's alone
        failure = failure_of(e)
        if w.verb == "delete" and failure.status == 404:
            return Outcome()  # gone already: done
        if w.verb == "create" and failure.status == 409:
            return _read_instead(custom, w, failure)
        return Outcome(failure=failure)
    return Outcome(answer=cast(Body | None, answer), sent=len(json.dumps(body)))


def _read_instead(custom: client.CustomObjectsApi, w: Write, conflict: Failure) -> Outcome:
    try:
        current = custom.get_cluster_custom_object(
            GROUP, VERSION, w.plural, w.name, _request_timeout=timeouts.REQUEST
        )
    except Exception as e:  # noqa: BLE001
        failure = failure_of(e)
        # gone again already: the next create will tell
        return Outcome(failure=conflict if failure.status == 404 else failure)
    return Outcome(failure=conflict, current=cast(Body, current))


def failure_of(e: Exception) -> Failure:
    """Classify an exception from a write: the HTTP status and the API's own message."""
    if not isinstance(e, ApiException):
        kind = (
            "unreachable"
            if isinstance(e, urllib3.exceptions.HTTPError | OSError | TimeoutError)
            else "other"
        )
        return Failure(None, kind, _one_line(f"{type(e).__name__}: {e}"))
    message = str(e.reason or "")
    try:
        status = json.loads(e.body or "")
        message = f"{status.get('reason') or e.reason}: {status.get('message') or ''}"
    except (ValueError, AttributeError):
        pass
    return Failure(e.status, status_kind(e.status, message), _one_line(message))


def status_kind(status: int | None, message: str) -> str:
    """A small fixed set of failure classes, for metrics."""
    lowered = message.lower()
    if status == 413 or "too large" in lowered or "exceeds the maximum" in lowered:
        return "too_large"
    return {
        400: "invalid",
        422: "invalid",
        401: "forbidden",
        403: "forbidden",
        404: "not_found",
        409: "conflict",
        429: "throttled",
    }.get(status or 0, "server" if status and status >= 500 else "other")


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MESSAGE_MAX else line[: _MESSAGE_MAX - 3] + "..."


def _json_patch(
    current: Mapping[str, Any] | None, desired: Mapping[str, Any] | None
) -> list[dict[str, Any]] | None:
    """A JSON Patch from ``current`` to ``desired`` (labels and spec) that applies only to the
    spec ``current`` has: guarded by a test of its ``metadata.generation``, which changes with
    every spec change (``None``: no generation known, send a merge patch)."""
    meta = (current or {}).get("metadata") or {}
    generation = meta.get("generation")
    if current is None or desired is None or generation is None:
        return None
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/generation", "value": generation}
    ]
    old_labels = meta.get("labels")
    new_labels = dict((desired.get("metadata") or {}).get("labels") or {})
    if old_labels is None:
        ops.append({"op": "add", "path": "/metadata/labels", "value": new_labels})
    else:
        ops += json_patch.diff(dict(old_labels), new_labels, "/metadata/labels")
    if current.get("spec") is None:
        ops.append({"op": "add", "path": "/spec", "value": desired.get("spec")})
    else:
        ops += json_patch.diff(current.get("spec"), desired.get("spec"), "/spec")
    return ops


def label_patch(
    current: Mapping[str, Any] | None, desired: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A JSON merge patch of labels: the desired ones, and ``None`` for each label to drop."""
    old = dict(((current or {}).get("metadata") or {}).get("labels") or {})
    new = dict(((desired or {}).get("metadata") or {}).get("labels") or {})
    return {**{k: None for k in old if k not in new}, **new}
