"""A TCP proxy that can stop forwarding, and helpers for processes reached through it.

Used to put a connection that hangs (not one that fails) between a component and the API
server: what a dead proxy, a half-open TCP session or a network partition looks like.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from controller.testing.apiserver import TestControlPlane


class Proxy:
    """Forwards TCP connections from 127.0.0.1:``port`` to ``target``. ``freeze()`` stops
    forwarding in both directions (connections, new ones included, stay open and say
    nothing), ``hold_requests()`` only what clients send; ``release()`` forwards again,
    everything held included, in order."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()  # client -> server
        self._down = threading.Event()  # server -> client
        self._up.set()
        self._down.set()
        self._lock = threading.Lock()
        self._holding: set[int] = set()  # connections with client bytes held back
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    def freeze(self) -> None:
        self._up.clear()
        self._down.clear()

    def hold_requests(self) -> None:
        self._up.clear()

    def release(self) -> None:
        self._up.set()
        self._down.set()

    def holding(self) -> int:
        """How many connections have client bytes held back (a request waiting)."""
        with self._lock:
            return len(self._holding)

    def close(self) -> None:
        self._closed = True
        self.release()
        with self._lock:
            sockets = [self._listener, *self._sockets]
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        n = 0
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                continue
            n += 1
            with self._lock:
                self._sockets += [downstream, upstream]
            for src, dst, gate, up in (
                (downstream, upstream, self._up, True),
                (upstream, downstream, self._down, False),
            ):
                threading.Thread(
                    target=self._pump, args=(n, src, dst, gate, up), daemon=True
                ).start()

    def _pump(
        self, n: int, src: socket.socket, dst: socket.socket, gate: threading.Event, up: bool
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not gate.is_set():  # data, or the end of the stream: held alike
                    if up and data:
                        with self._lock:
                            self._holding.add(n)
                    gate.wait()
                    with self._lock:
                        self._holding.discard(n)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()


def proxied_kubeconfig(plane: TestControlPlane, proxy: Proxy, path: Path) -> Path:
    """The admin kubeconfig with the server replaced by the proxy (the serving certificate
    names 127.0.0.1, so TLS verifies as before)."""
    cfg = yaml.safe_load(plane.kubeconfig.read_text())
    for cluster in cfg["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health(port: int, path: str = "/healthz") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:  # not listening yet
        return 0, str(e)
