"""The sidecar's own metrics (names fixed by the project brief) and its small /metrics + /healthz server.

Per-GPU series carry ``uuid``; pod-level ones (latency, target latency, dry-run) carry none; namespace
and pod come from the PodMonitor's target labels.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

log = logging.getLogger(__name__)

STATES: tuple[str, ...] = ("controlling", "holding", "restored", "dry_run", "error")


class PowercapMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("uuid",)) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        self.target_watts = gauge(
            "eo_powercap_target_watts", "Power limit the controller wants in force (W)."
        )
        self.applied_watts = gauge("eo_powercap_applied_watts", "Power limit in force on the GPU (W).")
        self.floor_watts = gauge("eo_powercap_floor_watts", "Lowest power limit the sidecar may set (W).")
        self.ceiling_watts = gauge(
            "eo_powercap_ceiling_watts", "Highest power limit the sidecar may set (W)."
        )
        self.original_watts = gauge(
            "eo_powercap_original_watts", "The GPU's power limit before the sidecar touched it (W)."
        )
        self.target_clock = gauge(
            "eo_powercap_target_sm_clock_hertz", "Highest SM clock the controller wants allowed (Hz)."
        )
        self.applied_clock = gauge(
            "eo_powercap_applied_sm_clock_hertz",
            "Highest SM clock allowed: the locked maximum, or the GPU's maximum when unlocked (Hz).",
        )
        self.changes = Counter(
            "eo_powercap_changes",
            "Changes the sidecar made (or, in dry-run, would make).",
            ("uuid", "reason"),
            registry=registry,
        )
        self.dry_run = Gauge("eo_powercap_dry_run", "1 when the sidecar sets nothing.", registry=registry)
        self.state = gauge("eo_powercap_state", "1 for the GPU's current state.", ("uuid", "state"))
        self.latency = Gauge(
            "eo_powercap_latency_seconds", "Observed latency quantile over the window (s).", registry=registry
        )
        self.latency_target = Gauge(
            "eo_powercap_latency_target_seconds", "Latency the controller holds under (s).", registry=registry
        )

    def set_state(self, uuid: str, state: str) -> None:
        for s in STATES:
            self.state.labels(uuid=uuid, state=s).set(1.0 if s == state else 0.0)


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    healthy: Callable[[], bool]

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = type(self).healthy()
            self._send(200 if ok else 503, b"ok\n" if ok else b"control loop stalled\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http: " + format, *args)


class MetricsServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        address: str = "0.0.0.0",
        port: int = 9104,
    ) -> None:
        handler = type(
            "PowercapHandler", (_Handler,), {"registry": registry, "healthy": staticmethod(healthy)}
        )
        self._server = ThreadingHTTPServer((address, port), handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="eo-powercap-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
