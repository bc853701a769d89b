"""A minimal Prometheus text endpoint (/metrics) and health checks (/healthz, /readyz).

Counters and gauges are plain numbers behind a lock. Nothing here depends on a metrics
library, so the image stays small.

The HTTP server is one thread with one selector for every connection: the agent's port is open
on every node's network, and a thread per connection (``ThreadingHTTPServer``) let any client
that opens connections and sends nothing pin one thread each, for ever. Here an idle connection
costs a socket and a few bytes; each one is closed ``timeout`` seconds after it was accepted
whatever it did meanwhile (so one byte at a time buys nothing), and past ``max_connections`` the
oldest is closed to make room, so a flood of idle clients cannot keep the kubelet's probes or
Prometheus out. Requests are answered in that thread: the checks and ``render`` are in-memory.

Health is a list of named checks, each a function returning ``None`` when fine or one line
saying what is wrong. ``/healthz`` runs the liveness checks, ``/readyz`` the liveness and the
readiness checks; a failing endpoint answers 503 with one ``name: problem`` line per failing
check, so ``curl`` (or the probe's event) says why.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

Check = Callable[[], str | None]  # None: fine; else one line saying what is wrong


@dataclass
class _Histogram:
    help_text: str
    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)  # per bound, not cumulative; the last: +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        index = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[index] += 1
        self.total += value

    def render(self, full: str) -> list[str]:
        lines = [f"# HELP {full} {self.help_text}", f"# TYPE {full} histogram"]
        cumulative = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            cumulative += count
            lines.append(f'{full}_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f"{full}_sum {self.total:g}")
        lines.append(f"{full}_count {cumulative}")
        return lines


class Metrics:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._values: dict[str, tuple[str, str, float]] = {}  # name -> (type, help, value)
        self._checks: list[tuple[str, bool, Check]] = []  # (name, liveness?, check)
        self._histograms: dict[str, _Histogram] = {}

    def describe(self, name: str, kind: str, help_text: str) -> None:
        with self._lock:
            self._values.setdefault(name, (kind, help_text, 0.0))

    def inc(self, name: str, amount: float = 1.0) -> None:
        with self._lock:
            kind, text, value = self._values.get(name, ("counter", "", 0.0))
            self._values[name] = (kind, text, value + amount)

    def set(self, name: str, value: float) -> None:
        with self._lock:
            kind, text, _ = self._values.get(name, ("gauge", "", 0.0))
            self._values[name] = (kind, text, value)

    def describe_histogram(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        """A histogram with these upper bounds (``+Inf`` is added)."""
        with self._lock:
            self._histograms.setdefault(name, _Histogram(help_text, tuple(sorted(buckets))))

    def observe(self, name: str, value: float) -> None:
        with self._lock:
            self._histograms[name].observe(value)

    def add_check(self, name: str, check: Check, liveness: bool = True) -> None:
        """Register a health check: liveness checks fail /healthz and /readyz, readiness-only
        checks (``liveness=False``) fail /readyz alone."""
        self._checks.append((name, liveness, check))

    def problems(self, readiness: bool) -> list[str]:
        """``name: problem`` for every failing check (liveness, plus readiness if asked)."""
        out = []
        for name, liveness, check in self._checks:
            if not liveness and not readiness:
                continue
            try:
                problem = check()
            except Exception as e:  # noqa: BLE001 - a broken check is a failing check
                problem = f"check raised {type(e).__name__}: {e}"
            if problem:
                out.append(f"{name}: {problem}")
        return out

    def render(self) -> str:
        lines = []
        with self._lock:
            for name, (kind, text, value) in sorted(self._values.items()):
                full = f"{self.prefix}_{name}"
                if text:
                    lines.append(f"# HELP {full} {text}")
                lines.append(f"# TYPE {full} {kind}")
                lines.append(f"{full} {value:g}")
            for name, histogram in sorted(self._histograms.items()):
                lines.extend(histogram.render(f"{self.prefix}_{name}"))
        return "\n".join(lines) + "\n"

    def serve(self, port: int, host: str = "0.0.0.0", timeout: float = 5.0) -> HttpServer:
        """Serve /metrics, /healthz and /readyz on ``host``:``port`` (a numeric address; port 0
        picks a free one) from a daemon thread; ``timeout`` bounds each connection's life."""
        server = HttpServer(self.answer, host, port, timeout=timeout)
        server.start()
        return server

    def answer(self, path: str) -> tuple[int, str]:
        """Status and body for a GET of ``path``."""
        if path == "/metrics":
            return 200, self.render()
        if path in ("/healthz", "/readyz"):
            problems = self.problems(readiness=path == "/readyz")
            return (503, "".join(f"{p}\n" for p in problems)) if problems else (200, "ok\n")
        return 404, "not found\n"


Handler = Callable[[str], tuple[int, str]]  # path -> (status, body)


class ListenError(RuntimeError):
    """The metrics address is not an IP address, or cannot be listened on."""


_MAX_REQUEST = 8192  # bytes of request line and headers; more is refused (431)


@dataclass
class _Connection:
    sock: socket.socket
    deadline: float
    received: bytearray = field(default_factory=bytearray)
    reply: bytes = b""  # set once the request is complete; then only written


class HttpServer:
    """A GET-only HTTP/1.1 server on one thread and one selector (see the module docstring).

    Every answer closes its connection (``Connection: close``): the clients are probes and
    scrapers that make one request per interval.
    """

    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        *,
        timeout: float = 5.0,
        max_connections: int = 64,
    ) -> None:
        try:
            # Numeric only: a listen address is never looked up in DNS.
            info = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST
            )
        except socket.gaierror as e:
            raise ListenError(f"metrics listen address {host!r} is not an IP address") from e
        family, kind, proto, _, sockaddr = info[0]
        self._listener = socket.socket(family, kind, proto)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind(sockaddr)
        except OSError as e:
            self._listener.close()
            raise ListenError(f"cannot listen on {host} port {port} for metrics: {e}") from e
        self._listener.listen(128)
        self._listener.setblocking(False)
        self._handler = handler
        self._timeout = timeout
        self._max = max_connections
        self._conns: dict[int, _Connection] = {}  # by fd, in accept order (oldest first)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)

    @property
    def server_address(self) -> tuple[str, int]:
        """The address and port actually bound (port 0 chose one)."""
        host, port = self._listener.getsockname()[:2]
        return host, port

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the thread and close every socket."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)

    def connections(self) -> int:
        """Open client connections (for tests and debugging)."""
        return len(self._conns)

    def _run(self) -> None:
        try:
            while not self._stopping:
                now = time.monotonic()
                soonest = min((c.deadline for c in self._conns.values()), default=now + 1.0)
                for key, mask in self._selector.select(max(0.0, min(soonest - now, 1.0))):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is not self._wake_r:
                        conn = self._conns.get(key.fd)
                        if conn is not None:
                            self._serve(conn, mask)
                now = time.monotonic()
                for conn in [c for c in self._conns.values() if c.deadline <= now]:
                    self._close(conn)
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._selector.close()
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: make room, try at the next event
                self._evict_oldest()
                return
            if len(self._conns) >= self._max:
                self._evict_oldest()
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic() + self._timeout)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ)

    def _evict_oldest(self) -> None:
        if self._conns:
            self._close(next(iter(self._conns.values())))

    def _serve(self, conn: _Connection, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ and not conn.reply:
                data = conn.sock.recv(4096)
                if not data:
                    self._close(conn)
                    return
                conn.received += data
                end = conn.received.find(b"\r\n\r\n")
                if end < 0 and len(conn.received) < _MAX_REQUEST:
                    return
                conn.reply = self._reply(bytes(conn.received[:end]) if end >= 0 else None)
                self._selector.modify(conn.sock, selectors.EVENT_WRITE)
            if mask & selectors.EVENT_WRITE or conn.reply:
                sent = conn.sock.send(conn.reply)
                conn.reply = conn.reply[sent:]
                if not conn.reply:
                    self._close(conn)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)

    def _reply(self, head: bytes | None) -> bytes:
        """The whole response to a request head (``None``: the head was too long)."""
        if head is None:
            status, body = 431, "request header too large\n"
        else:
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method != "GET":
                status, body = 405, "only GET\n"
            else:
                try:
                    status, body = self._handler(path)
                except Exception as e:  # noqa: BLE001 - one bad answer must not stop the server
                    status, body = 500, f"{type(e).__name__}: {e}\n"
        data = body.encode()
        reason = HTTPStatus(status).phrase
        head_out = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: text/plain; version=0.0.4\r\n"
            f"Content-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n"
        )
        return head_out.encode() + data

    def _close(self, conn: _Connection) -> None:
        self._conns.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()
