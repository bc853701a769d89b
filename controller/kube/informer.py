"""List-then-watch one kind of object, keeping a local copy, like client-go's informers.

The informer lists (getting a resourceVersion), then watches from there; when the watch ends
it resumes from the last version seen, and when the API server says that version is gone
(410) it lists again and reports the complete new state, so deletions missed while away are
not lost. When the API server cannot be reached it retries with capped exponential backoff,
logging once per outage rather than once per attempt, and lists again once it is back (which
is also when it logs that it is).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Obj = Mapping[str, Any]
ListFn = Callable[..., Any]

BACKOFF_START = 0.2
BACKOFF_MAX = 10.0
WATCH_TIMEOUT = 240  # seconds the server keeps a watch open before we renew it


class Informer:
    """Calls ``on_sync(objects)`` after every (re)list and ``on_event(type, obj)`` after."""

    def __init__(
        self,
        name: str,
        list_fn: ListFn,
        on_sync: Callable[[dict[str, Obj]], None],
        on_event: Callable[[str, Obj], None],
        **list_kwargs: Any,
    ) -> None:
        self.name = name
        self._list = list_fn
        self._kwargs = list_kwargs
        self._on_sync = on_sync
        self._on_event = on_event
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{name}", daemon=True)

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = BACKOFF_START
        outage_since: float | None = None
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist()
                    if outage_since is not None:
                        # Said here, when the first request after the outage succeeded: the
                        # watch that follows only returns when it ends, minutes later.
                        log.warning(
                            "%s: API server reachable again after %.1f s",
                            self.name,
                            time.monotonic() - outage_since,
                        )
                        outage_since = None
                version = self._watch_from(version)
                backoff = BACKOFF_START
            except ApiException as e:
                if e.status == 410:
                    log.info("%s: watch version expired, listing again", self.name)
                    version = None
                    continue
                if e.status in (401, 403):
                    # not an outage: say what to fix, every time (it will not heal by itself)
                    log.error(
                        "%s: %s %s: this identity lacks RBAC to list/watch %s "
                        "(check the ServiceAccount's ClusterRoleBinding)",
                        self.name,
                        e.status,
                        "Unauthorized" if e.status == 401 else "Forbidden",
                        self.name,
                    )
                else:
                    outage_since = self._outage(outage_since, f"API error {e.status}: {e.reason}")
                version = None  # list again once back (a restarted server may not have it)
            except Exception as e:  # connection refused/reset, timeouts: the API is away
                outage_since = self._outage(outage_since, f"{type(e).__name__}: {e}")
                version = None
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _outage(self, since: float | None, why: str) -> float:
        if since is None:
            log.warning(
                "%s: cannot reach the API server (%s); keeping the last state, retrying",
                self.name,
                why,
            )
            return time.monotonic()
        log.debug("%s: still unreachable: %s", self.name, why)
        return since

    def _relist(self) -> str:
        result = self._list(**self._kwargs)
        items, version = _items_and_version(result)
        self._on_sync({_name(o): o for o in items})
        self.synced.set()
        return version

    def _watch_from(self, version: str) -> str:
        self._watch = watch.Watch()
        try:
            for event in self._watch.stream(
                self._list,
                resource_version=version,
                timeout_seconds=WATCH_TIMEOUT,
                allow_watch_bookmarks=True,
                **self._kwargs,
            ):
                kind, obj = event["type"], event["object"]
                if not isinstance(obj, Mapping):
                    obj = _to_dict(obj)
                if kind == "ERROR":
                    code = obj.get("code")
                    if code == 410:
                        raise ApiException(status=410, reason="Gone")
                    raise ApiException(status=code or 500, reason=str(obj.get("message")))
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if kind != "BOOKMARK":
                    self._on_event(kind, obj)
                if self._stop.is_set():
                    break
        finally:
            self._watch = None
        return version


def _name(obj: Obj) -> str:
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


def _to_dict(obj: Any) -> dict[str, Any]:
    from kubernetes.client import ApiClient

    data: dict[str, Any] = ApiClient().sanitize_for_serialization(obj)
    return data


def _items_and_version(result: Any) -> tuple[list[Obj], str]:
    if isinstance(result, Mapping):
        return list(result.get("items") or []), str(result["metadata"]["resourceVersion"])
    data = _to_dict(result)
    return list(data.get("items") or []), str(data["metadata"]["resourceVersion"])
