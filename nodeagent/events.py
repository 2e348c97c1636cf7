"""Kubernetes Events on the pod a change is for, posted from a background queue that never blocks.

Unlike the sidecar's sink (one pod, its own), the agent writes Events on the pods that asked, in their
namespaces: the agent's service account needs ``create`` on ``events`` there (a RoleBinding per
namespace the operator lists, manifests/examples/vllm/rbac.yaml). Posts go through
``common.kube.KubeClient`` (a total deadline, a capped answer, no redirects); a failed post is logged
with its status and the API's reason, and dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from common.kube import KubeClient, KubeError, path_segment
from nodeagent.decide import Pod
from powercap.events import CapEvent

log = logging.getLogger(__name__)

COMPONENT = "eo-node-agent"


class PodEvents(Protocol):
    def emit(self, pod: Pod, event: CapEvent) -> None:
        """Queue ``event`` for ``pod``; never blocks, never raises."""
        ...

    def close(self) -> None: ...


class NullPodEvents:
    """Events off (outside Kubernetes, or --kube-events off): log only."""

    def emit(self, pod: Pod, event: CapEvent) -> None:
        log.debug("event (not posted) on %s %s: %s", pod, event.reason, event.message)

    def close(self) -> None:
        return None


class KubernetesPodEvents:
    def __init__(self, api: KubeClient, node: str, max_queue: int = 100, deadline_s: float = 2.0) -> None:
        self._api = api
        self._node = node
        self._deadline_s = deadline_s
        self._queue: queue.Queue[tuple[Pod, CapEvent] | None] = queue.Queue(maxsize=max_queue)
        self.posted = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="eo-node-agent-events", daemon=True)
        self._thread.start()

    def emit(self, pod: Pod, event: CapEvent) -> None:
        try:
            self._queue.put_nowait((pod, event))
        except queue.Full:
            self.dropped += 1
            log.warning("event queue full, dropping event %s on %s", event.reason, pod)

    def close(self, timeout_s: float = 2.0) -> None:
        """Post what is queued, within ``timeout_s`` in all; then stop."""
        end = time.monotonic() + timeout_s
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(max(0.0, end - time.monotonic()))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            pod, event = item
            path = f"/api/v1/namespaces/{path_segment(pod.namespace)}/events"
            try:
                self._api.post_json(path, event_body(pod, event, self._node), deadline_s=self._deadline_s)
                self.posted += 1
            except (KubeError, OSError, ValueError) as exc:
                self.dropped += 1
                log.warning("could not post Kubernetes Event %s on %s (dropped): %s", event.reason, pod, exc)


def event_body(pod: Pod, event: CapEvent, node: str) -> dict[str, Any]:
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
        "metadata": {"generateName": f"{pod.name}.node-agent-", "namespace": pod.namespace},
        "involvedObject": involved,
        "reason": event.reason,
        "message": event.message,
        "type": "Warning" if event.warning else "Normal",
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": "energy-orchestrator.io/node-agent",
        "reportingInstance": node or COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
