"""List-then-watch one kind of object, keeping a local copy, like client-go's informers.

The informer lists (getting a resourceVersion), then watches from there; when the watch ends
it resumes from the last version seen, and when the API server says that version is gone
(410) it lists again and reports the complete new state, so deletions missed while away are
not lost. When the API server cannot be reached it retries with capped exponential backoff,
logging once per outage rather than once per attempt, and lists again once it is back (which
is also when it logs that it is).

Every request has a client-side timeout (``controller/kube/timeouts.py``): a list gives up
after ``REQUEST``; a watch asks the server to end it after ``WATCH_SERVER`` seconds and gives
up after ``WATCH_READ`` seconds without a byte, so a connection that silently stops forwarding
(a dead proxy, a half-open TCP session) ends in a timeout, counted as an outage, instead of
leaving the informer waiting forever on a stream that will never say anything again.
``health()`` says when nothing has come from the API server for too long.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError

from controller.kube import timeouts

log = logging.getLogger(__name__)

Obj = Mapping[str, Any]
ListFn = Callable[..., Any]

BACKOFF_START = 0.2
BACKOFF_MAX = 10.0


@dataclass(frozen=True)
class WatchTimeouts:
    """Client-side timeouts of one informer (tests shorten them)."""

    request: tuple[float, float] = timeouts.REQUEST  # a list: (connect, read)
    watch_server: int = timeouts.WATCH_SERVER  # the server ends each watch after this
    watch_read: float = timeouts.WATCH_READ  # a watch silent this long is given up


class Informer:
    """Calls ``on_sync(objects)`` after every (re)list and ``on_event(type, obj)`` after."""

    def __init__(
        self,
        name: str,
        list_fn: ListFn,
        on_sync: Callable[[dict[str, Obj]], None],
        on_event: Callable[[str, Obj], None],
        *,
        limits: WatchTimeouts = WatchTimeouts(),
        **list_kwargs: Any,
    ) -> None:
        self.name = name
        self._list = list_fn
        self._kwargs = list_kwargs
        self._on_sync = on_sync
        self._on_event = on_event
        self.limits = limits
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self.synced = threading.Event()
        # When the API server last answered us (a list, a watch opened, an event, a watch
        # ended by the server), and why the last attempt failed if it did. Starting the
        # clock at creation makes a first list that never answers count as silence too.
        self._answered_at = time.monotonic()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"informer-{name}", daemon=True)

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(timeout=5)

    def health(self, stale_after: float) -> str | None:
        """One line when the API server has not answered for more than ``stale_after``
        seconds (the local copy may then be missing any number of changes), else None.

        A healthy informer hears from the server at least every ``watch_server`` seconds
        (the server ends each watch then and the next one opens), and a stuck one gives up
        its watch after ``watch_read`` seconds and lists again, so ``stale_after`` should
        exceed ``watch_read`` by the time a list may take."""
        silent = time.monotonic() - self._answered_at
        if silent <= stale_after:
            return None
        what = "listed or watched anything" if self.synced.is_set() else "listed anything yet"
        why = f" (last error: {self._error})" if self._error else ""
        return f"{self.name}: not {what} for {silent:.0f} s{why}"

    def _answered(self) -> None:
        self._answered_at = time.monotonic()
        self._error = None

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
                        # watch that follows only returns when it ends, a minute later.
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
                self._error = f"API error {e.status}: {e.reason}"
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
                    outage_since = self._outage(outage_since, self._error)
                version = None  # list again once back (a restarted server may not have it)
            except Exception as e:  # refused, reset, timed out (a silent watch): the API is away
                cause = e.reason if isinstance(e, MaxRetryError) and e.reason else e
                self._error = f"{type(cause).__name__}: {cause}"
                outage_since = self._outage(outage_since, self._error)
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
        result = self._list(_request_timeout=self.limits.request, **self._kwargs)
        self._answered()
        items, version = _items_and_version(result)
        self._on_sync({_name(o): o for o in items})
        self.synced.set()
        return version

    def _open_watch(self, **kwargs: Any) -> Any:
        """The list call in watch mode, noting that the server answered (the response
        headers arrived) before the first event, which may be a minute away."""
        response = self._list(**kwargs)
        self._answered()
        return response

    def _watch_from(self, version: str) -> str:
        self._watch = watch.Watch()
        try:
            for event in self._watch.stream(
                self._open_watch,
                resource_version=version,
                timeout_seconds=self.limits.watch_server,
                # No read timeout would wait forever on a connection that stopped forwarding.
                _request_timeout=(self.limits.request[0], self.limits.watch_read),
                allow_watch_bookmarks=True,
                **self._kwargs,
            ):
                self._answered()
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
            else:
                self._answered()  # the server ended the watch (timeout_seconds): it is there
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
