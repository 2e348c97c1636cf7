"""The KEDA ExternalScaler gRPC servicer: parse metadata, observe, decide, map errors to status codes.

- GetMetricSpec is computed from metadata alone (KEDA's HPA path gives it, GetMetrics and IsActive 3 s
  together): one MetricSpec, target 1, so the HPA's AverageValue arithmetic ceil(value / 1) makes the
  reported value the replica count.
- GetMetrics returns exactly one MetricValue: the desired replicas (the current count in advisory mode).
- Bad metadata -> INVALID_ARGUMENT naming the key; missing or stale data -> UNAVAILABLE, so KEDA's
  fallback engages after ``failureThreshold`` polls (never a made-up number).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator

import grpc

from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc
from scaler.kpi_source import KpiSource
from scaler.metadata import MetadataError, Mode, TriggerConfig, parse_metadata
from scaler.policy import ReplicaDecision, advisory, decide
from scaler.queries import KpiQueryRejected, KpiUnavailable
from scaler.telemetry import ScalerMetrics

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4096)
def _parse_cached(items: tuple[tuple[str, str], ...], namespace: str) -> TriggerConfig:
    """KEDA sends the same metadata on every poll; parsing is pure, so remember the answer.

    Errors are not cached by lru_cache (it only stores returns), so bad metadata is re-checked."""
    return parse_metadata(dict(items), default_namespace=namespace)


class ExternalScalerService(pb_grpc.ExternalScalerServicer):
    def __init__(
        self,
        kpi_source: KpiSource,
        metrics: ScalerMetrics,
        *,
        stream_interval_s: float = 15.0,
        shutdown: threading.Event | None = None,
    ) -> None:
        self.kpi_source = kpi_source
        self.metrics = metrics
        self.stream_interval_s = stream_interval_s
        self.shutdown = shutdown or threading.Event()

    def _abort(
        self, context: grpc.ServicerContext, ref: pb.ScaledObjectRef, code: grpc.StatusCode, msg: str
    ) -> None:
        meta = ref.scalerMetadata
        self.metrics.record_error(meta.get("namespace", ref.namespace), meta.get("workload", ""), code.name)
        log.info("%s/%s: %s: %s", ref.namespace, ref.name, code.name, msg)
        context.abort(code, msg)

    def _trigger(self, ref: pb.ScaledObjectRef, context: grpc.ServicerContext) -> TriggerConfig:
        try:
            return _parse_cached(tuple(sorted(ref.scalerMetadata.items())), ref.namespace)
        except MetadataError as exc:
            self._abort(context, ref, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises

    def _decide(
        self, ref: pb.ScaledObjectRef, context: grpc.ServicerContext
    ) -> tuple[TriggerConfig, ReplicaDecision]:
        trigger = self._trigger(ref, context)
        try:
            observation = self.kpi_source.observe(trigger)
        except KpiQueryRejected as exc:
            self._abort(context, ref, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        except KpiUnavailable as exc:
            self._abort(context, ref, grpc.StatusCode.UNAVAILABLE, str(exc))
            raise
        decision = decide(observation, trigger.policy_config())
        self.metrics.record_decision(trigger, decision, observation.current_replicas)
        if trigger.mode is Mode.ADVISORY:
            decision = advisory(decision, observation)
        return trigger, decision

    def IsActive(self, request: pb.ScaledObjectRef, context: grpc.ServicerContext) -> pb.IsActiveResponse:
        with self.metrics.request_duration.labels("IsActive").time():
            _, decision = self._decide(request, context)
            return pb.IsActiveResponse(result=decision.active)

    def StreamIsActive(
        self, request: pb.ScaledObjectRef, context: grpc.ServicerContext
    ) -> Iterator[pb.IsActiveResponse]:
        # Since KEDA v2.18 only `true` on this stream has an effect; sending every interval is harmless.
        while context.is_active() and not self.shutdown.is_set():
            _, decision = self._decide(request, context)
            yield pb.IsActiveResponse(result=decision.active)
            self.shutdown.wait(self.stream_interval_s)

    def _spec(self, trigger: TriggerConfig) -> pb.GetMetricSpecResponse:
        spec = pb.MetricSpec(metricName=trigger.metric_name, targetSize=1, targetSizeFloat=1.0)
        return pb.GetMetricSpecResponse(metricSpecs=[spec])

    def GetMetricSpec(
        self, request: pb.ScaledObjectRef, context: grpc.ServicerContext
    ) -> pb.GetMetricSpecResponse:
        with self.metrics.request_duration.labels("GetMetricSpec").time():
            return self._spec(self._trigger(request, context))

    def StreamMetricSpec(
        self, request: pb.ScaledObjectRef, context: grpc.ServicerContext
    ) -> Iterator[pb.GetMetricSpecResponse]:
        # The spec depends on metadata only, so it never changes while the stream is open: send it once
        # (KEDA expects the current spec on open) and hold the stream until KEDA or shutdown ends it.
        yield self._spec(self._trigger(request, context))
        while context.is_active() and not self.shutdown.wait(1.0):
            pass

    def GetMetrics(
        self, request: pb.GetMetricsRequest, context: grpc.ServicerContext
    ) -> pb.GetMetricsResponse:
        with self.metrics.request_duration.labels("GetMetrics").time():
            trigger, decision = self._decide(request.scaledObjectRef, context)
            value = pb.MetricValue(
                metricName=request.metricName or trigger.metric_name,
                metricValue=decision.replicas,
                metricValueFloat=float(decision.replicas),
            )
            return pb.GetMetricsResponse(metricValues=[value])
