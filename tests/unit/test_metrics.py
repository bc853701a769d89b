"""The metrics endpoint speaks Prometheus text and reports health."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from controller.metrics import ListenError, Metrics


def test_render_and_serve() -> None:
    m = Metrics("nftpolicy_agent")
    m.describe("applies_total", "counter", "transactions committed")
    m.inc("applies_total")
    m.inc("applies_total", 2)
    m.set("pods", 7)
    text = m.render()
    assert "# TYPE nftpolicy_agent_applies_total counter\nnftpolicy_agent_applies_total 3\n" in text
    assert "# HELP nftpolicy_agent_applies_total transactions committed" in text
    assert "nftpolicy_agent_pods 7" in text
    server = m.serve(0, host="127.0.0.1")
    port = server.server_address[1]
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "nftpolicy_agent_applies_total 3" in body
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
        problem: list[str | None] = [None]
        m.add_check("watch", lambda: problem[0])
        m.add_check("sync", lambda: "initial listing not complete", liveness=False)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert err.value.code == 503
        assert err.value.read().decode() == "sync: initial listing not complete\n"
        problem[0] = "no event for 300 s"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert err.value.code == 503
        assert err.value.read().decode() == "watch: no event for 300 s\n"
    finally:
        server.shutdown()


@contextlib.contextmanager
def _idle_clients(port: int, count: int) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_connections_take_no_thread_and_do_not_block_scraping() -> None:
    m = Metrics("nftpolicy_agent")
    m.set("pods", 3)
    threads_before = threading.active_count()
    server = m.serve(0, host="127.0.0.1", timeout=30.0)
    port = server.server_address[1]
    try:
        with _idle_clients(port, 200) as idle:
            # An idle client holding 200 connections costs no thread ...
            assert threading.active_count() <= threads_before + 1
            # ... and scraping still answers at once, however busy the machine (the bound is
            # far below the 30 s the idle connections are kept at most).
            start = time.monotonic()
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
            assert b"nftpolicy_agent_pods 3" in body
            assert time.monotonic() - start < 10
            assert threading.active_count() <= threads_before + 1
            # Past max_connections (64) the oldest were closed to make room.
            assert server.connections() <= 64
            assert _closed_by_peer(idle[0], within=10)
    finally:
        server.shutdown()


def test_a_connection_is_closed_after_its_timeout_even_when_it_trickles() -> None:
    server = Metrics("x").serve(0, host="127.0.0.1", timeout=1.0)
    port = server.server_address[1]
    try:
        with _idle_clients(port, 2) as (silent, trickling):
            start = time.monotonic()
            for _ in range(4):  # one byte every 0.5 s: never a whole request
                try:
                    trickling.send(b"G")
                except (BrokenPipeError, ConnectionResetError):
                    break  # already closed (a busy machine: the 2 s of trickling ran long)
                time.sleep(0.5)
            assert _closed_by_peer(silent, within=10)
            assert _closed_by_peer(trickling, within=10)
            assert time.monotonic() - start < 15
    finally:
        server.shutdown()


def test_bad_requests_get_an_answer() -> None:
    server = Metrics("x").serve(0, host="127.0.0.1")
    port = server.server_address[1]
    try:
        for request, status in (
            (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
            (b"GET /nothing HTTP/1.1\r\n\r\n", b"404"),
            (b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", b"200"),
            (b"GET /" + b"a" * 9000, b"431"),
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request)
                assert sock.recv(100).split(b" ")[1] == status, request[:30]
    finally:
        server.shutdown()


def test_listen_address_is_numeric_and_configurable() -> None:
    server = Metrics("x").serve(0, host="::1")
    try:
        assert server.server_address[0] == "::1"
        port = server.server_address[1]
        assert urllib.request.urlopen(f"http://[::1]:{port}/healthz", timeout=10).status == 200
        with pytest.raises(OSError):  # not on IPv4 loopback
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
    finally:
        server.shutdown()
    with pytest.raises(ListenError, match="'localhost' is not an IP address"):
        Metrics("x").serve(0, host="localhost")
