"""A client that calls an external scaler the way KEDA (v2.17-2.20) and the HPA do, for tests and benches.

Per poll: GetMetricSpec, GetMetrics and IsActive (``demo.keda.fetch``, shared with the demo); the
HPA's AverageValue arithmetic (``sim.keda.hpa_recommendation``: ceil(value / target) with a 10%
tolerance), bounded by min/max (at least 1 while active); ``fallback.replicas`` after ``failureThreshold`` consecutive failed polls; scale to zero
``cooldownPeriod`` after the last active poll when ``minReplicaCount`` is 0 (an erroring trigger never
scales to zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc

from demo.keda import fetch
from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc
from sim.keda import hpa_recommendation

HPA_TOLERANCE = 0.1


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
        value, target, active = fetch(self.stub, self.ref())
        assert target > 0, "KEDA requires target > 0 after rounding"
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
        desired = hpa_recommendation(value, target, current, HPA_TOLERANCE)
        return max(self.min_replicas, 1, min(self.max_replicas, desired))
