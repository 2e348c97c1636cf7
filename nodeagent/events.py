"""Kubernetes Events on the pod a change is for, posted from a background queue that never blocks.

Unlike the sidecar's sink (one pod, its own), the agent writes Events on the pods that asked, in their
namespaces: the agent's service account needs ``create`` on ``events`` there (a RoleBinding per
namespace the operator lists, manifests/examples/vllm/rbac.yaml). Posts go through
``common.kube.KubeClient`` (a total deadline, a capped answer, no redirects) by the sidecar's queue and
worker (``powercap.events.EventQueue``); a failed post is logged with its status and the API's reason,
and dropped.
"""

from __future__ import annotations

import logging
from typing import Protocol

from common.kube import KubeClient
from nodeagent.decide import Pod
from powercap.events import CapEvent, EventQueue, EventSource, PodRef

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


class KubernetesPodEvents(EventQueue):
    """The agent's Events, each on the pod it is for (``powercap.events.EventQueue``, one post path)."""

    def __init__(self, api: KubeClient, node: str, max_queue: int = 100, deadline_s: float = 2.0) -> None:
        self._node = node
        source = EventSource(
            COMPONENT, "energy-orchestrator.io/node-agent", "node-agent", node, node or COMPONENT
        )
        super().__init__(
            lambda: api,
            source,
            thread_name="eo-node-agent-events",
            max_queue=max_queue,
            deadline_s=deadline_s,
        )

    def emit(self, pod: Pod, event: CapEvent) -> None:
        self.put(PodRef(pod.name, pod.namespace, pod.uid, self._node), event)
