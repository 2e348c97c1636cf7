"""Kubernetes Events for every cap change, posted from a background queue that never blocks control.

The control loop only enqueues (non-blocking; a full queue drops the event with a log line). A worker
thread posts each event to the API server through ``common.kube.KubeClient`` (a total deadline per
post, a capped answer, no redirects, the service-account token re-read when it rotates); a failed post
is logged with its status and the API's reason, and dropped. ``EventQueue`` is that queue and worker,
shared with the node agent (``nodeagent.events``), which posts on the pods that asked.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
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


@dataclass(frozen=True)
class EventSource:
    """Who posts an Event: its ``source`` and ``reporting*`` fields and the suffix of its generated name."""

    component: str
    """``source.component``, e.g. eo-powercap."""
    reporting_component: str
    """``reportingComponent``, e.g. energy-orchestrator.io/powercap."""
    name_suffix: str
    """The Event's generated name is ``<pod>.<name_suffix>-<random>``."""
    host: str
    """``source.host``: the node."""
    instance: str
    """``reportingInstance``: the pod or node that posts."""


class EventQueue:
    """A bounded queue of (pod, event) and one worker thread that posts each as a Kubernetes Event on
    that pod, in its namespace. ``put`` never blocks (a full queue drops the event with a log line); a
    failed post is logged and dropped. ``connect`` builds the API client on the worker's first post, so
    an unreadable CA costs the Events, never the start; the queue closes that client when it stops."""

    def __init__(
        self,
        connect: Callable[[], KubeClient],
        source: EventSource,
        *,
        thread_name: str,
        max_queue: int = 100,
        deadline_s: float = 2.0,
    ) -> None:
        self._connect = connect
        self._source = source
        self._deadline_s = deadline_s
        self._api: KubeClient | None = None
        self._queue: queue.Queue[tuple[PodRef, CapEvent] | None] = queue.Queue(maxsize=max_queue)
        self.posted = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    def put(self, pod: PodRef, event: CapEvent) -> None:
        """Queue ``event`` for ``pod``; never blocks, never raises."""
        try:
            self._queue.put_nowait((pod, event))
        except queue.Full:
            self.dropped += 1
            where = _where(pod)
            log.warning("event queue full, dropping event %s on %s: %s", event.reason, where, event.message)

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
            item = self._queue.get()
            if item is None:
                return
            pod, event = item
            try:
                if self._api is None:
                    self._api = self._connect()
                # A status >= 300 raises KubeApiError: its status and the API's reason, never the body.
                path = f"/api/v1/namespaces/{path_segment(pod.namespace)}/events"
                self._api.post_json(path, event_body(event, pod, self._source), deadline_s=self._deadline_s)
                self.posted += 1
            except (KubeError, OSError, ValueError) as exc:
                self.dropped += 1
                where = f"{pod.namespace}/{pod.name}"
                log.warning(
                    "could not post Kubernetes Event %s on %s (dropped): %s", event.reason, where, exc
                )


class KubernetesEventSink(EventQueue):
    """The sidecar's Events, all on its own pod."""

    def __init__(
        self,
        api_url: str,
        pod: PodRef,
        token_file: Path | None = SERVICE_ACCOUNT_DIR / "token",
        ca_file: Path | None = SERVICE_ACCOUNT_DIR / "ca.crt",
        timeout_s: float = 2.0,
        max_queue: int = 100,
    ) -> None:
        self._pod = pod
        config = KubeConfig(
            server=api_url,
            source=f"--kube-api-url {api_url}",
            # An absent file means no token (a test API server, or one behind a proxy that adds it).
            token_file=token_file,
            ca_file=ca_file if ca_file is not None and ca_file.exists() else None,
        )

        def connect() -> KubeClient:
            # ``timeout_s`` is the total deadline of one post (connect, send, answer).
            return KubeClient(config, deadline_s=timeout_s, max_body_bytes=ANSWER_MAX_BYTES, pool_maxsize=1)

        source = EventSource(COMPONENT, "energy-orchestrator.io/powercap", "powercap", pod.node, pod.name)
        super().__init__(
            connect, source, thread_name="eo-powercap-events", max_queue=max_queue, deadline_s=timeout_s
        )

    def emit(self, event: CapEvent) -> None:
        self.put(self._pod, event)


def event_body(event: CapEvent, pod: PodRef, source: EventSource) -> dict[str, Any]:
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
        "metadata": {"generateName": f"{pod.name}.{source.name_suffix}-", "namespace": pod.namespace},
        "involvedObject": involved,
        "reason": event.reason,
        "message": event.message,
        "type": "Warning" if event.warning else "Normal",
        "source": {"component": source.component, "host": source.host},
        "reportingComponent": source.reporting_component,
        "reportingInstance": source.instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def _where(pod: PodRef) -> str:
    return f"{pod.namespace}/{pod.name}"


def in_cluster_api_url() -> str | None:
    return in_cluster_server()
