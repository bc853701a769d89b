"""A minimal Prometheus text endpoint (/metrics) and liveness check (/healthz).

Counters and gauges are plain numbers behind a lock; the HTTP server runs in a daemon thread.
Nothing here depends on a metrics library, so the image stays small.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Metrics:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._values: dict[str, tuple[str, str, float]] = {}  # name -> (type, help, value)
        self.healthy: Callable[[], bool] = lambda: True

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

    def render(self) -> str:
        lines = []
        with self._lock:
            for name, (kind, text, value) in sorted(self._values.items()):
                full = f"{self.prefix}_{name}"
                if text:
                    lines.append(f"# HELP {full} {text}")
                lines.append(f"# TYPE {full} {kind}")
                lines.append(f"{full} {value:g}")
        return "\n".join(lines) + "\n"

    def serve(self, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path == "/metrics":
                    status, body = 200, metrics.render()
                elif self.path == "/healthz":
                    ok = metrics.healthy()
                    status, body = (200, "ok\n") if ok else (503, "unhealthy\n")
                else:
                    status, body = 404, "not found\n"
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: object) -> None:  # keep the logs for the product
                return

        server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return server
