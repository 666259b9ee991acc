"""The daemon's small HTTP endpoint: ``/metrics`` (Prometheus) and ``/healthz``.

``start_http_server(port, metrics, health)`` serves in a daemon thread and returns an
`HttpEndpoint` (``.port`` is the bound port, useful with ``port=0``; ``.stop()``).

``health`` is a callable supplied by the daemon returning a dict (`edge.health.health_report`);
its ``"http_status"`` decides the status code when present, else its ``"ok"`` key: **200**
when truthy, **503** otherwise. The whole dict is
returned as JSON so an operator sees *why* (e.g. ``{"ok": false, "mqtt": {...}}``).
A health callable that raises yields 503 with the error text.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge.metrics import Metrics

log = structlog.get_logger(__name__)

HealthFn = Callable[[], dict[str, Any]]


class HttpEndpoint:
    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_http_server(
    port: int, metrics: Metrics, health: HealthFn | None = None, host: str = "0.0.0.0"
) -> HttpEndpoint:
    health_fn: HealthFn = health or (lambda: {"ok": True})

    class Handler(BaseHTTPRequestHandler):
        server_version = "flamingo-edge"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/health"):
                try:
                    info = dict(health_fn())
                    code = int(info.get("http_status") or (200 if info.get("ok") else 503))
                except Exception as e:  # noqa: BLE001 - report, don't crash the endpoint
                    info, code = {"ok": False, "error": f"{type(e).__name__}: {e}"}, 503
                self._send(code, json.dumps(info, default=str).encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("http request", line=fmt % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    t.start()
    log.info("http endpoint listening", host=host, port=server.server_address[1])
    return HttpEndpoint(server, t)
