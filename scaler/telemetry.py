"""The scaler's own Prometheus metrics (served on ``/metrics``, HTTP 9103 by default).

Names follow the project-wide list in the common brief; labels ``namespace`` and ``workload`` unless
noted. One ``ScalerMetrics`` per server, on a private registry so tests and in-process demos can run
several servers side by side.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from scaler.metadata import TriggerConfig
from scaler.policy import ReplicaDecision

_WL = ("namespace", "workload")


class ScalerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.desired_replicas = Gauge(
            "eo_scaler_desired_replicas",
            "Replicas the policy wants (also in advisory mode).",
            _WL,
            registry=r,
        )
        self.current_replicas = Gauge(
            "eo_scaler_current_replicas", "Replicas observed serving in Prometheus.", _WL, registry=r
        )
        self.decisions = Counter(
            "eo_scaler_decisions_total", "Policy decisions by reason.", (*_WL, "reason"), registry=r
        )
        self.latency_slo = Gauge(
            "eo_scaler_latency_slo_seconds", "Latency SLO from the trigger metadata.", _WL, registry=r
        )
        self.power_budget = Gauge(
            "eo_scaler_power_budget_watts",
            "Power budget from the trigger metadata (when set).",
            _WL,
            registry=r,
        )
        self.mode_info = Gauge("eo_scaler_mode_info", "1 for the trigger's mode.", (*_WL, "mode"), registry=r)
        self.errors = Counter(
            "eo_scaler_errors_total",
            "gRPC errors returned to KEDA by status code (KEDA's fallback is near).",
            (*_WL, "code"),
            registry=r,
        )
        self.prometheus_queries = Counter(
            "eo_scaler_prometheus_queries", "Queries sent to Prometheus.", _WL, registry=r
        )
        self.cache_hits = Counter(
            "eo_scaler_cache_hits", "Observations served from the cache.", _WL, registry=r
        )
        self.cache_misses = Counter(
            "eo_scaler_cache_misses", "Observations that waited for Prometheus.", _WL, registry=r
        )
        self.query_duration = Histogram(
            "eo_scaler_query_duration_seconds",
            "Duration of Prometheus queries.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )

        self.request_duration = Histogram(
            "eo_scaler_request_duration_seconds",
            "Time eo-scaler took to answer a KEDA call, by gRPC method (cache hits are the fast bulk).",
            ("method",),
            buckets=(0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.1, 0.5, 1.0, 3.0),
            registry=r,
        )

    def record_decision(
        self, trigger: TriggerConfig, decision: ReplicaDecision, current_replicas: int
    ) -> None:
        ns, wl = trigger.namespace, trigger.workload
        self.desired_replicas.labels(ns, wl).set(decision.replicas)
        self.current_replicas.labels(ns, wl).set(current_replicas)
        self.decisions.labels(ns, wl, decision.reason.value).inc()
        self.latency_slo.labels(ns, wl).set(trigger.latency_slo_s)
        if trigger.power_budget_watts is not None:
            self.power_budget.labels(ns, wl).set(trigger.power_budget_watts)
        for mode in ("enforce", "advisory"):
            self.mode_info.labels(ns, wl, mode).set(1 if trigger.mode.value == mode else 0)

    def record_error(self, namespace: str, workload: str, code: str) -> None:
        self.errors.labels(namespace or "", workload or "", code).inc()
