"""A client that calls an external scaler the way KEDA (v2.17-2.20) and the HPA do, for tests and benches.

Per poll: GetMetricSpec, GetMetrics and IsActive under one 3 s deadline; the HPA's AverageValue
arithmetic desired = ceil(value / target) with a 10% tolerance, bounded by min/max (at least 1 while
active); ``fallback.replicas`` after ``failureThreshold`` consecutive failed polls; scale to zero
``cooldownPeriod`` after the last active poll when ``minReplicaCount`` is 0 (an erroring trigger never
scales to zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc

from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc

HPA_TOLERANCE = 0.1
DEADLINE_S = 3.0


def _keda_value(raw: float) -> float:
    """KEDA rounds to 3 decimals and turns NaN/Inf/negative into 0."""
    if not math.isfinite(raw) or raw < 0:
        return 0.0
    return round(raw, 3)


@dataclass
class KedaLikeScaledObject:
    stub: pb_grpc.ExternalScalerStub
    name: str
    namespace: str
    metadata: dict[str, str]
    min_replicas: int = 0
    max_replicas: int = 100
    fallback_replicas: int = 4
    failure_threshold: int = 3
    cooldown_s: float = 300.0
    failures: int = 0
    last_active_s: float | None = None
    errors: list[grpc.StatusCode] = field(default_factory=list)

    def ref(self) -> pb.ScaledObjectRef:
        return pb.ScaledObjectRef(name=self.name, namespace=self.namespace, scalerMetadata=self.metadata)

    def fetch(self) -> tuple[float, float, bool]:
        """One KEDA poll: (metric value, target, active). Raises grpc.RpcError like KEDA sees it."""
        ref = self.ref()
        spec = self.stub.GetMetricSpec(ref, timeout=DEADLINE_S)
        assert len(spec.metricSpecs) >= 1
        s = spec.metricSpecs[0]
        target = _keda_value(s.targetSizeFloat if s.targetSizeFloat > 0 else float(s.targetSize))
        assert target > 0, "KEDA requires target > 0 after rounding"
        metrics = self.stub.GetMetrics(
            pb.GetMetricsRequest(scaledObjectRef=ref, metricName=s.metricName), timeout=3
        )
        value = sum(
            _keda_value(v.metricValueFloat if v.metricValueFloat > 0 else float(v.metricValue))
            for v in metrics.metricValues
        )
        active = self.stub.IsActive(ref, timeout=DEADLINE_S).result
        return value, target, active

    def poll(self, current: int, now_s: float) -> int:
        """The replica count KEDA + HPA would set after one poll at ``now_s``."""
        try:
            value, target, active = self.fetch()
        except grpc.RpcError as exc:
            self.errors.append(exc.code())
            self.failures += 1
            if self.failures >= self.failure_threshold:
                return self.fallback_replicas
            return current
        self.failures = 0
        if active:
            self.last_active_s = now_s
        if not active and self.min_replicas == 0:
            idle_since = self.last_active_s if self.last_active_s is not None else -math.inf
            if current == 0 or now_s - idle_since >= self.cooldown_s:
                return 0
        if current == 0:
            current = 1  # activation: KEDA scales 0 -> 1, then the HPA takes over
        desired = math.ceil(value / target)
        if abs(1.0 - value / (target * current)) <= HPA_TOLERANCE:
            desired = current
        return max(self.min_replicas, 1, min(self.max_replicas, desired))
