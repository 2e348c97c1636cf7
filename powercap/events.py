"""Kubernetes Events for every cap change, posted from a background queue that never blocks control.

The control loop only enqueues (non-blocking; a full queue drops the event with a log line). A worker
thread posts each event to the API server through ``common.http.BoundedHttpClient`` (a total deadline
per post, a capped answer, no redirects); a failed post is logged and dropped. The adapter speaks the
core/v1 Events REST call directly with the pod's service-account token, which keeps it a few lines and
lets tests answer it from a real HTTP server with recorded API responses.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from common.http import BoundedHttpClient, HttpError

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
COMPONENT = "eo-powercap"
# The API server answers the created Event (a few KiB); nothing an Event post needs is larger.
ANSWER_MAX_BYTES = 256 * 1024


@dataclass(frozen=True)
class PodRef:
    name: str
    namespace: str
    uid: str = ""
    node: str = ""


@dataclass(frozen=True)
class CapEvent:
    reason: str
    """CamelCase Event reason, e.g. PowerCapLowered, PowerCapRestored, PowerCapForeignWrite."""
    message: str
    warning: bool = False


class EventSink(Protocol):
    def emit(self, event: CapEvent) -> None:
        """Queue ``event``; never blocks, never raises."""
        ...

    def close(self) -> None: ...


class NullEventSink:
    """Events disabled (outside Kubernetes, or --kube-events off): log only."""

    def emit(self, event: CapEvent) -> None:
        log.debug("event (not posted) %s: %s", event.reason, event.message)

    def close(self) -> None:
        return None


class KubernetesEventSink:
    def __init__(
        self,
        api_url: str,
        pod: PodRef,
        token_file: Path | None = SERVICE_ACCOUNT_DIR / "token",
        ca_file: Path | None = SERVICE_ACCOUNT_DIR / "ca.crt",
        timeout_s: float = 2.0,
        max_queue: int = 100,
    ) -> None:
        self._url = f"{api_url.rstrip('/')}/api/v1/namespaces/{pod.namespace}/events"
        self._pod = pod
        self._token_file = token_file
        ca = str(ca_file) if ca_file is not None and ca_file.exists() else None
        # ``timeout_s`` is the total deadline of one post (connect, send, answer).
        self._http = BoundedHttpClient(
            deadline_s=timeout_s, max_body_bytes=ANSWER_MAX_BYTES, ca_file=ca, num_pools=2, pool_maxsize=1
        )
        self._queue: queue.Queue[CapEvent | None] = queue.Queue(maxsize=max_queue)
        self.posted = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="eo-powercap-events", daemon=True)
        self._thread.start()

    def emit(self, event: CapEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            log.warning("event queue full, dropping event %s: %s", event.reason, event.message)

    def close(self, timeout_s: float = 2.0) -> None:
        """Post what is queued, then stop the worker; returns within ``timeout_s`` in all (what is not
        posted by then is dropped with the process)."""
        end = time.monotonic() + timeout_s
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(max(0.0, end - time.monotonic()))
        if not self._thread.is_alive():
            self._http.close()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                self._post(event)
                self.posted += 1
            except (HttpError, OSError, ValueError) as exc:
                self.dropped += 1
                log.warning("could not post Kubernetes Event %s (dropped): %s", event.reason, exc)

    def _post(self, event: CapEvent) -> None:
        headers = {"Content-Type": "application/json"}
        if self._token_file is not None and self._token_file.exists():
            headers["Authorization"] = "Bearer " + self._token_file.read_text().strip()
        resp = self._http.post(
            self._url, body=json.dumps(event_body(event, self._pod)).encode(), headers=headers
        )
        if resp.status >= 300:
            # The status only: what a peer sent never reaches a log line.
            raise ValueError(f"API server answered HTTP {resp.status}")


def event_body(event: CapEvent, pod: PodRef) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    involved: dict[str, str] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod.name,
        "namespace": pod.namespace,
    }
    if pod.uid:
        involved["uid"] = pod.uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{pod.name}.powercap-", "namespace": pod.namespace},
        "involvedObject": involved,
        "reason": event.reason,
        "message": event.message,
        "type": "Warning" if event.warning else "Normal",
        "source": {"component": COMPONENT, "host": pod.node},
        "reportingComponent": "energy-orchestrator.io/powercap",
        "reportingInstance": pod.name,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def in_cluster_api_url() -> str | None:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
