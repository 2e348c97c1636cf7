"""Kubernetes Events for every cap change, posted from a background queue that never blocks control.

The control loop only enqueues (non-blocking; a full queue drops the event with a log line). A worker
thread posts each event to the API server through ``common.kube.KubeClient`` (a total deadline per
post, a capped answer, no redirects, the service-account token re-read when it rotates); a failed post
is logged with its status and the API's reason, and dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from common.kube import (
    SERVICE_ACCOUNT_DIR,
    KubeClient,
    KubeConfig,
    KubeError,
    in_cluster_server,
    path_segment,
)

log = logging.getLogger(__name__)

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
        self._path = f"/api/v1/namespaces/{path_segment(pod.namespace)}/events"
        self._pod = pod
        self._config = KubeConfig(
            server=api_url,
            source=f"--kube-api-url {api_url}",
            # An absent file means no token (a test API server, or one behind a proxy that adds it).
            token_file=token_file,
            ca_file=ca_file if ca_file is not None and ca_file.exists() else None,
        )
        self._timeout_s = timeout_s
        # Built by the worker on its first post: an unreadable CA costs the events, never the start.
        self._api: KubeClient | None = None
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
        if not self._thread.is_alive() and self._api is not None:
            self._api.close()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                self._post(event)
                self.posted += 1
            except (KubeError, OSError, ValueError) as exc:
                self.dropped += 1
                log.warning("could not post Kubernetes Event %s (dropped): %s", event.reason, exc)

    def _post(self, event: CapEvent) -> None:
        if self._api is None:
            # ``timeout_s`` is the total deadline of one post (connect, send, answer).
            self._api = KubeClient(
                self._config, deadline_s=self._timeout_s, max_body_bytes=ANSWER_MAX_BYTES, pool_maxsize=1
            )
        # A status >= 300 raises KubeApiError: its status and the API's reason, never the peer's body.
        self._api.post_json(self._path, event_body(event, self._pod))


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
    return in_cluster_server()
