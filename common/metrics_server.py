"""The one ``/metrics`` + ``/healthz`` HTTP server of the exporter, the scaler and the sidecar.

``serve_metrics(render, health, address, port)`` starts a threaded server and returns a handle with the
bound ``port`` (pass 0 in tests) and ``stop()``. ``render`` produces the exposition bytes (a registry's
``generate_latest`` or the exporter's cached renderer); ``health`` answers ``(healthy, body)``, served as
200 or 503 with a JSON or text body. A scraper that hangs up mid-answer is logged at debug, not as a
traceback.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Health = Callable[[], tuple[bool, "dict[str, object] | str"]]


def registry_renderer(registry: CollectorRegistry) -> Callable[[], bytes]:
    return lambda: generate_latest(registry)


def always_healthy() -> tuple[bool, str]:
    return True, "ok\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("HTTP client %s went away", client_address, exc_info=True)


def _handler(name: str, render: Callable[[], bytes], health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = name

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, render())
            elif path == "/healthz":
                ok, body = health()
                if isinstance(body, str):
                    self._send(200 if ok else 503, "text/plain; charset=utf-8", body.encode())
                else:
                    self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


@dataclass
class MetricsServerHandle:
    """A running ``/metrics`` server; ``port`` is the bound port."""

    port: int
    address: str
    _server: ThreadingHTTPServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(
    render: Callable[[], bytes],
    health: Health = always_healthy,
    *,
    address: str = "0.0.0.0",
    port: int = 0,
    name: str = "energy-orchestrator",
) -> MetricsServerHandle:
    """Start serving ``/metrics`` and ``/healthz`` on ``address:port`` (0: a free port)."""
    server = _Server((address, port), _handler(name, render, health))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=f"{name}-http", daemon=True)
    thread.start()
    return MetricsServerHandle(int(server.server_address[1]), address, server, thread)
