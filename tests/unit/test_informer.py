"""The informer against a scripted HTTP server on 127.0.0.1, through the real kubernetes client
and urllib3: client-side timeouts end silent watches and unanswered lists, an outage is logged
once, a re-list reports the complete state, and ``health()`` says when nothing came for too
long (controller/kube/informer.py)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client

from controller.kube.config import ONE_ATTEMPT
from controller.kube.informer import Informer, WatchTimeouts

PATH = "/apis/nftpolicy.io/v1alpha1/addressgroups"
SHORT = WatchTimeouts(request=(1.0, 0.5), watch_server=30, watch_read=0.5)


def obj(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}}


@dataclass
class Script:
    """What the server answers: ``lists[i]`` to the i-th list (None: headers never come),
    ``watches[i]`` to the i-th watch: events, then "silent" (keep the stream open and say
    nothing) or "end" (the server ends the watch). The last entry repeats."""

    lists: list[list[dict[str, Any]] | None]
    watches: list[tuple[list[dict[str, Any]], str]]
    requests: list[dict[str, list[str]]] = field(default_factory=list)


@pytest.fixture
def api() -> Iterator[Callable[[Script], client.CustomObjectsApi]]:
    servers: list[ThreadingHTTPServer] = []
    done = threading.Event()

    def start(script: Script) -> client.CustomObjectsApi:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                query = parse_qs(urlparse(self.path).query)
                assert urlparse(self.path).path == PATH
                script.requests.append(query)
                if query.get("watch") == ["true"]:
                    n = sum(1 for q in script.requests if q.get("watch") == ["true"])
                    self._watch(*script.watches[min(n, len(script.watches)) - 1])
                else:
                    n = sum(1 for q in script.requests if q.get("watch") != ["true"])
                    self._list(script.lists[min(n, len(script.lists)) - 1], n)

            def _list(self, items: list[dict[str, Any]] | None, n: int) -> None:
                if items is None:
                    done.wait(30)
                    return
                data = json.dumps({"metadata": {"resourceVersion": str(n)}, "items": items})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

            def _watch(self, events: list[dict[str, Any]], then: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in events:
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                if then == "silent":
                    done.wait(30)
                    self.close_connection = True
                else:
                    self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *_: object) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        config = client.Configuration()
        config.host = f"http://127.0.0.1:{server.server_address[1]}"
        config.retries = ONE_ATTEMPT  # as controller/kube/config.py makes the real client
        return client.CustomObjectsApi(client.ApiClient(config))

    yield start
    done.set()
    for server in servers:
        server.shutdown()
        server.server_close()


class Recorder:
    def __init__(self) -> None:
        self.syncs: list[set[str]] = []
        self.events: list[tuple[str, str]] = []

    def sync(self, objects: dict[str, Any]) -> None:
        self.syncs.append(set(objects))

    def event(self, kind: str, body: Any) -> None:
        self.events.append((kind, body["metadata"]["name"]))


def informer(api: client.CustomObjectsApi, rec: Recorder, limits: WatchTimeouts) -> Informer:
    return Informer(
        "addressgroups",
        api.list_cluster_custom_object,
        rec.sync,
        rec.event,
        limits=limits,
        group="nftpolicy.io",
        version="v1alpha1",
        plural="addressgroups",
    )


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_silent_watch_is_given_up_and_the_informer_lists_again(
    api: Callable[[Script], client.CustomObjectsApi], caplog: pytest.LogCaptureFixture
) -> None:
    """Catches: a watch without a read timeout, which waits forever on a connection that
    stopped forwarding (the agent stayed on an old generation for minutes)."""
    script = Script(
        lists=[[obj("a", "1")], [obj("a", "1"), obj("b", "3")]],
        watches=[([{"type": "ADDED", "object": obj("c", "2")}], "silent"), ([], "silent")],
    )
    rec = Recorder()
    inf = informer(api(script), rec, SHORT).start()
    try:
        wait_until(lambda: rec.events == [("ADDED", "c")], 10, "the first event")
        silent_from = time.monotonic()
        took = wait_until(lambda: len(rec.syncs) >= 2, 10, "a second list")
        assert took >= SHORT.watch_read * 0.8  # given up for its silence, not at once
        assert rec.syncs == [{"a"}, {"a", "b"}]  # the re-list's complete state
        watch = next(q for q in script.requests if q.get("watch") == ["true"])
        assert watch["timeoutSeconds"] == ["30"]  # the server is asked to end it too
        assert watch["resourceVersion"] == ["1"]
        print(f"silent watch given up and re-listed after {time.monotonic() - silent_from:.2f} s")
    finally:
        inf.stop()
    assert "ReadTimeoutError" in caplog.text


def test_unanswered_requests_are_one_outage_and_make_the_informer_stale(
    api: Callable[[Script], client.CustomObjectsApi], caplog: pytest.LogCaptureFixture
) -> None:
    """Catches: a list without a timeout (blocks forever, the outage is never noticed), an
    outage logged once per attempt, and a health check that stays quiet meanwhile."""
    script = Script(lists=[[obj("a", "1")], None], watches=[([], "silent")])
    rec = Recorder()
    inf = informer(api(script), rec, SHORT)
    with caplog.at_level(logging.DEBUG, logger="controller.kube.informer"):
        inf.start()
        try:
            wait_until(lambda: inf.synced.is_set(), 10, "the first list")
            assert inf.health(stale_after=2.0) is None
            wait_until(lambda: inf.health(stale_after=2.0) is not None, 20, "a stale informer")
            problem = inf.health(stale_after=2.0)
            assert problem is not None
            assert problem.startswith("addressgroups: not listed or watched anything for ")
            assert "ReadTimeoutError" in problem
        finally:
            inf.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "cannot reach the API server" in w]) == 1, warnings
    # the silent watch, then each list: every failed attempt was one request that gave up
    # after its read timeout (urllib3 did not retry it behind the informer's back, which made
    # one attempt last four timeouts)
    failed = [
        r for r in caplog.records if "unreachable" in r.getMessage() or "cannot" in r.getMessage()
    ]
    lists = [q for q in script.requests if q.get("watch") != ["true"]]
    assert 1 + len(lists) - 1 == len(failed) >= 3
    assert rec.syncs == [{"a"}]  # the last state is kept


def test_a_watch_the_server_ends_resumes_and_a_410_lists_again(
    api: Callable[[Script], client.CustomObjectsApi],
) -> None:
    """Catches: a re-list that merges into the old state instead of replacing it (an object
    deleted while the watch was away would be kept), and a resume that lists every time."""
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    script = Script(
        lists=[[obj("a", "1"), obj("b", "1")], [obj("a", "5")]],
        watches=[
            ([{"type": "BOOKMARK", "object": obj("", "4")}], "end"),
            ([gone], "end"),
            ([], "silent"),
        ],
    )
    rec = Recorder()
    inf = informer(api(script), rec, SHORT).start()
    try:
        wait_until(lambda: len(rec.syncs) >= 2, 10, "a re-list after the 410")
        assert rec.syncs == [{"a", "b"}, {"a"}]  # b is forgotten
        watches = [q for q in script.requests if q.get("watch") == ["true"]]
        assert watches[1]["resourceVersion"] == ["4"]  # resumed from the bookmark, no list
        assert inf.health(stale_after=5.0) is None
    finally:
        inf.stop()
