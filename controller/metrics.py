"""A minimal Prometheus text endpoint (/metrics) and health checks (/healthz, /readyz).

Counters and gauges are plain numbers behind a lock; the HTTP server runs in a daemon thread.
Nothing here depends on a metrics library, so the image stays small.

Health is a list of named checks, each a function returning ``None`` when fine or one line
saying what is wrong. ``/healthz`` runs the liveness checks, ``/readyz`` the liveness and the
readiness checks; a failing endpoint answers 503 with one ``name: problem`` line per failing
check, so ``curl`` (or the probe's event) says why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Check = Callable[[], str | None]  # None: fine; else one line saying what is wrong


class Metrics:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._values: dict[str, tuple[str, str, float]] = {}  # name -> (type, help, value)
        self._checks: list[tuple[str, bool, Check]] = []  # (name, liveness?, check)

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
        return "\n".join(lines) + "\n"

    def serve(self, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path == "/metrics":
                    status, body = 200, metrics.render()
                elif self.path in ("/healthz", "/readyz"):
                    problems = metrics.problems(readiness=self.path == "/readyz")
                    status = 503 if problems else 200
                    body = "".join(f"{p}\n" for p in problems) if problems else "ok\n"
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
