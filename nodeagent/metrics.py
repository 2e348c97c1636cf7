"""The agent's own metrics, served by ``common.metrics_server`` on ``--port`` (9105)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from nodeagent.decide import REFUSAL_REASONS

ADAPTER_REFUSALS = ("gpu_busy", "gpu_error")
"""Refusals the adapter adds: another writer holds the GPU, or the GPU failed."""


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.changes = Counter(
            "eo_node_agent_changes",
            "Setpoints the agent put in force for a pod (reason: lowered, raised).",
            ("uuid", "reason"),
            registry=registry,
        )
        self.restores = Counter(
            "eo_node_agent_restores",
            "GPUs the agent put back to their original setting, by reason.",
            ("uuid", "reason"),
            registry=registry,
        )
        self.refusals = Counter(
            "eo_node_agent_refusals",
            "Requests the agent refused (nothing applied), by reason.",
            ("reason",),
            registry=registry,
        )
        for reason in (*REFUSAL_REASONS, *ADAPTER_REFUSALS):
            self.refusals.labels(reason=reason)
        self.controlled = Gauge(
            "eo_node_agent_controlled",
            "1 while a setting of the agent's is in force on the GPU for that pod.",
            ("uuid", "namespace", "pod", "actuator"),
            registry=registry,
        )
        self.setpoint_watts = Gauge(
            "eo_node_agent_setpoint_watts",
            "Power limit the agent put in force (W).",
            ("uuid",),
            registry=registry,
        )
        self.setpoint_clock = Gauge(
            "eo_node_agent_setpoint_sm_clock_hertz",
            "Highest SM clock the agent allows (Hz).",
            ("uuid",),
            registry=registry,
        )
        self.kubelet_up = Gauge(
            "eo_node_agent_kubelet_up", "1 when the last PodResources read succeeded.", registry=registry
        )
        self.frozen = Gauge(
            "eo_node_agent_frozen",
            "1 while the agent cannot see the kubelet: it applies nothing new, holds the last known good "
            "settings, and still restores on stale requests and on shutdown.",
            registry=registry,
        )
        self.restore_pending = Gauge(
            "eo_node_agent_restore_pending",
            "GPUs whose restore failed and is retried every cycle.",
            registry=registry,
        )
