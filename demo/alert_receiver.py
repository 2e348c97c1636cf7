"""A webhook receiver on loopback for the demo: Alertmanager delivers the demo's alerts here, and each
one is handed to a callback (the demo prints it) and remembered for the summary.

The payload is Alertmanager's webhook format (version 4): ``{"alerts": [{"status", "labels",
"annotations", ...}], ...}``. Only loopback peers reach it; a body over ``MAX_BODY_BYTES`` or one that is
not that JSON is refused with 400/413 and never raises in the demo.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1 << 20  # Alertmanager batches alerts of one group; the demo's are a few kB
READ_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class DeliveredAlert:
    """One alert of one webhook call, as Alertmanager sent it."""

    name: str
    severity: str
    status: str
    """``firing`` or ``resolved``."""
    summary: str

    def line(self) -> str:
        return (
            f"alert delivered by Alertmanager: {self.name} ({self.severity}, {self.status}): {self.summary}"
        )


def parse_webhook(body: bytes) -> list[DeliveredAlert]:
    """The alerts of one Alertmanager webhook body; ``ValueError`` if it is not one."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not JSON: {err}") from None
    alerts = payload.get("alerts") if isinstance(payload, dict) else None
    if not isinstance(alerts, list):
        raise ValueError("no 'alerts' list: not an Alertmanager webhook body")
    out = []
    for alert in alerts:
        labels = alert.get("labels") if isinstance(alert, dict) else None
        if not isinstance(labels, dict) or "alertname" not in labels:
            raise ValueError("an alert without labels.alertname")
        annotations = alert.get("annotations") or {}
        out.append(
            DeliveredAlert(
                name=str(labels["alertname"]),
                severity=str(labels.get("severity", "-")),
                status=str(alert.get("status", "-")),
                summary=str(annotations.get("summary", "")) if isinstance(annotations, dict) else "",
            )
        )
    return out


class WebhookReceiver:
    """``with WebhookReceiver(on_alert) as receiver:`` serves ``receiver.url`` until the block ends."""

    def __init__(self, on_alert: Callable[[DeliveredAlert], None] = lambda _alert: None) -> None:
        self._on_alert = on_alert
        self._lock = threading.Lock()
        self._delivered: list[DeliveredAlert] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="alert-webhook", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def delivered(self) -> list[DeliveredAlert]:
        with self._lock:
            return list(self._delivered)

    def _receive(self, alerts: list[DeliveredAlert]) -> None:
        with self._lock:
            self._delivered.extend(alerts)
        for alert in alerts:
            log.info("%s", alert.line())
            try:
                self._on_alert(alert)
            except Exception:  # the callback prints; a broken terminal must not fail the delivery
                log.exception("alert callback failed")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT_S  # a peer that stalls mid-request is dropped

            def do_POST(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    self._answer(411, "Content-Length required")
                    return
                if not 0 <= length <= MAX_BODY_BYTES:
                    self._answer(413, f"body over {MAX_BODY_BYTES} bytes")
                    return
                try:
                    alerts = parse_webhook(self.rfile.read(length))
                except ValueError as err:
                    self._answer(400, str(err))
                    return
                receiver._receive(alerts)
                self._answer(200, "ok")

            def _answer(self, status: int, text: str) -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("webhook %s", format % args)

        return Handler

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
