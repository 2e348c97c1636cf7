"""The scaler's own Prometheus metrics (served on ``/metrics``, HTTP 9103 by default).

Names follow the project-wide list in the common brief; labels ``namespace`` and ``workload`` unless
noted. One ``ScalerMetrics`` per server, on a private registry so tests and in-process demos can run
several servers side by side.

Label values never come from raw metadata: they are validated Kubernetes names (the trigger's, or the
ScaledObjectRef's when the metadata is invalid), and at most ``MAX_WORKLOAD_LABEL_SETS`` (namespace,
workload) pairs are kept; the least recently used pair's series are dropped beyond that, so neither a
long value nor many distinct ones can grow ``/metrics`` without bound.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import OrderedDict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from scaler.metadata import TriggerConfig
from scaler.policy import Reason, ReplicaDecision

_WL = ("namespace", "workload")
MAX_WORKLOAD_LABEL_SETS = 1000
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
ERROR_CODES = ("INVALID_ARGUMENT", "UNAVAILABLE", "INTERNAL")
MODES = ("enforce", "advisory")
PROMETHEUS_FAILURES = ("unavailable", "rejected", "busy")


def label_value(value: str, pattern: re.Pattern[str]) -> str:
    """``value`` when it is a valid Kubernetes name of that kind, else ``""``: never raw input."""
    return value if len(value) <= 253 and pattern.fullmatch(value) else ""


def ref_labels(namespace: str, name: str) -> tuple[str, str]:
    """Labels for a ScaledObjectRef (or the metadata's namespace/workload), validated."""
    return label_value(namespace, _NAMESPACE_RE), label_value(name, _NAME_RE)


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
        self.prometheus_failures = Counter(
            "eo_scaler_prometheus_failures",
            "Prometheus queries that failed: unavailable (unreachable, too slow, too big, not an answer), "
            "rejected (bad PromQL) or busy (the server's in-flight limit was full for the whole deadline).",
            ("kind",),
            registry=r,
        )
        for kind in PROMETHEUS_FAILURES:
            self.prometheus_failures.labels(kind)
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

        self._label_sets: OrderedDict[tuple[str, str], None] = OrderedDict()
        # The trigger settings last published per label set (latency SLO, power budget, mode).
        self._settings: dict[tuple[str, str], tuple[float | None, float | None, str]] = {}
        self._label_lock = threading.Lock()

    def labels_for(self, namespace: str, workload: str) -> tuple[str, str]:
        """Validated labels, recorded as recently used; the oldest pair is dropped beyond the limit."""
        key = ref_labels(namespace, workload)
        with self._label_lock:
            self._label_sets[key] = None
            self._label_sets.move_to_end(key)
            while len(self._label_sets) > MAX_WORKLOAD_LABEL_SETS:
                old, _ = self._label_sets.popitem(last=False)
                self._forget(old)
        return key

    def workload_labels(self, trigger: TriggerConfig) -> tuple[str, str]:
        return self.labels_for(trigger.namespace, trigger.workload)

    def _forget(self, labels: tuple[str, str]) -> None:
        self._settings.pop(labels, None)
        plain = (
            self.desired_replicas,
            self.current_replicas,
            self.latency_slo,
            self.power_budget,
            self.prometheus_queries,
            self.cache_hits,
            self.cache_misses,
        )
        extra: tuple[tuple[Counter | Gauge, tuple[str, ...]], ...] = (
            (self.decisions, tuple(r.value for r in Reason)),
            (self.mode_info, MODES),
            (self.errors, ERROR_CODES),
        )
        for metric in plain:
            _remove(metric, labels)
        for metric, values in extra:
            for value in values:
                _remove(metric, (*labels, value))

    def record_decision(
        self, trigger: TriggerConfig, decision: ReplicaDecision, current_replicas: int
    ) -> None:
        ns, wl = self.workload_labels(trigger)
        self.desired_replicas.labels(ns, wl).set(decision.replicas)
        self.current_replicas.labels(ns, wl).set(current_replicas)
        self.decisions.labels(ns, wl, decision.reason.value).inc()
        # The trigger's settings change only with its metadata: set them when they do, not on every
        # poll (they were a third of the time a cache hit spends here).
        settings = (trigger.latency_slo_s, trigger.power_budget_watts, trigger.mode.value)
        if self._settings.get((ns, wl)) == settings:
            return
        if trigger.latency_slo_s is not None:  # the end-to-end SLO is optional next to TTFT/ITL ones
            self.latency_slo.labels(ns, wl).set(trigger.latency_slo_s)
        if trigger.power_budget_watts is not None:
            self.power_budget.labels(ns, wl).set(trigger.power_budget_watts)
        for mode in MODES:
            self.mode_info.labels(ns, wl, mode).set(1 if trigger.mode.value == mode else 0)
        with self._label_lock:
            if (ns, wl) in self._label_sets:  # not dropped meanwhile: then it is published again next time
                self._settings[(ns, wl)] = settings

    def record_error(self, namespace: str, workload: str, code: str) -> None:
        """Count an error; ``namespace``/``workload`` are validated here (never raw metadata)."""
        ns, wl = self.labels_for(namespace, workload)
        self.errors.labels(ns, wl, code if code in ERROR_CODES else "INTERNAL").inc()


def _remove(metric: Counter | Gauge, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
