"""KEDA and the HPA in front of the demo's Deployment: real gRPC calls to eo-scaler, KEDA's arithmetic.

Every poll calls GetMetricSpec, GetMetrics and IsActive under KEDA's 3 s deadline, then applies the
HPA's AverageValue arithmetic, stabilisation and bounds and KEDA's activation and cooldown
(``sim.keda.Autoscaler``, shared with the simulator). After ``failure_threshold`` failed polls in a row
it applies ``fallback_replicas``, as KEDA does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import grpc

from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc
from sim.keda import Autoscaler, HpaConfig

log = logging.getLogger(__name__)
DEADLINE_S = 3.0


def keda_value(raw: float) -> float:
    """KEDA rounds to 3 decimals and turns NaN, Inf and negative values into 0."""
    return round(raw, 3) if math.isfinite(raw) and raw >= 0 else 0.0


def fetch(stub: pb_grpc.ExternalScalerStub, ref: pb.ScaledObjectRef) -> tuple[float, float, bool]:
    """One KEDA poll of an external scaler: (metric value, target, active). Raises grpc.RpcError."""
    spec = stub.GetMetricSpec(ref, timeout=DEADLINE_S).metricSpecs[0]
    target = keda_value(spec.targetSizeFloat or float(spec.targetSize))
    request = pb.GetMetricsRequest(scaledObjectRef=ref, metricName=spec.metricName)
    values = stub.GetMetrics(request, timeout=DEADLINE_S).metricValues
    value = sum(keda_value(v.metricValueFloat or float(v.metricValue)) for v in values)
    active = stub.IsActive(ref, timeout=DEADLINE_S).result
    return value, target, active


@dataclass(frozen=True)
class Poll:
    """One poll's outcome: the metric and activity KEDA saw (None after an error) and the replicas set."""

    value: float | None
    target: float | None
    active: bool | None
    replicas: int
    error: str | None = None
    fallback: bool = False


class KedaDriver:
    """One ScaledObject with one external trigger pointing at ``address``."""

    def __init__(
        self,
        address: str,
        name: str,
        namespace: str,
        metadata: dict[str, str],
        hpa: HpaConfig,
        initial_replicas: int,
        fallback_replicas: int,
        failure_threshold: int = 3,
    ) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.ExternalScalerStub(self._channel)
        self._ref = pb.ScaledObjectRef(name=name, namespace=namespace, scalerMetadata=metadata)
        self.autoscaler = Autoscaler(hpa, initial_replicas)
        self.fallback_replicas = fallback_replicas
        self.failure_threshold = failure_threshold
        self.failures = 0

    def poll(self, now_s: float) -> Poll:
        try:
            value, target, active = fetch(self._stub, self._ref)
        except grpc.RpcError as err:
            self.failures += 1
            message = f"{err.code().name}: {err.details()}"
            if self.failures >= self.failure_threshold:
                log.warning("scaler failing %d polls in a row (%s): fallback to %d replicas",
                            self.failures, message, self.fallback_replicas)  # fmt: skip
                self.autoscaler.replicas = self.fallback_replicas
                return Poll(None, None, None, self.fallback_replicas, message, fallback=True)
            return Poll(None, None, None, self.autoscaler.replicas, message)
        self.failures = 0
        self.autoscaler.keda_poll(now_s, active)
        replicas = self.autoscaler.hpa_sync(now_s, value, target) if target > 0 else self.autoscaler.replicas
        return Poll(value, target, active, replicas)

    def close(self) -> None:
        self._channel.close()
