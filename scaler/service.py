"""The KEDA ExternalScaler gRPC servicer: parse metadata, observe, decide, map errors to status codes.

- GetMetricSpec is computed from metadata alone (KEDA's HPA path gives it, GetMetrics and IsActive 3 s
  together): one MetricSpec, target 1, so the HPA's AverageValue arithmetic ceil(value / 1) makes the
  reported value the replica count.
- GetMetrics returns exactly one MetricValue: the desired replicas (the current count in advisory mode).
- Bad metadata -> INVALID_ARGUMENT naming the key; missing or stale data -> UNAVAILABLE, so KEDA's
  fallback engages after ``failureThreshold`` polls (never a made-up number). A replica count outside
  ``[0, MAX_COUNT]`` is never sent: UNAVAILABLE instead.
- Status messages are at most ``MAX_STATUS_CHARS`` characters (whatever they quote), far below gRPC's
  trailer limit, so a long bad value is INVALID_ARGUMENT with a short message.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator, Mapping

import grpc

from common.prometheus import truncate
from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc
from scaler.bounded import BoundedCache
from scaler.kpi_source import KpiSource
from scaler.metadata import MetadataError, Mode, TriggerConfig, check_limits, parse_metadata
from scaler.policy import ReplicaDecision, advisory, decide
from scaler.queries import MAX_COUNT, KpiQueryRejected, KpiUnavailable
from scaler.telemetry import ScalerMetrics

log = logging.getLogger(__name__)

MAX_STATUS_CHARS = 400
# Parsed metadata, by a digest of it: KEDA sends the same metadata on every poll. Errors are not kept,
# so bad metadata is re-checked (and costs nothing to keep). As many as the answers the cache keeps:
# KEDA polls its ScaledObjects in turn, so an LRU smaller than their number misses on every poll (at
# 1,000 ScaledObjects a 512-entry one made each poll parse and render its trigger again: 5x the time).
MAX_TRIGGERS = 4096
_PARSED: BoundedCache[bytes, TriggerConfig] = BoundedCache(MAX_TRIGGERS, 600.0)


def _parse_cached(metadata: Mapping[str, str], namespace: str) -> TriggerConfig:
    check_limits(metadata)  # before hashing or copying anything an author sent
    digest = hashlib.sha256(namespace.encode("utf-8", errors="surrogatepass"))
    for key, value in sorted(metadata.items()):
        for text in (key, value):
            digest.update(b"\0" + text.encode("utf-8", errors="surrogatepass"))
    return _PARSED.get_or_compute(
        digest.digest(), lambda: parse_metadata(dict(metadata), default_namespace=namespace)
    )


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
        self,
        context: grpc.ServicerContext,
        ref: pb.ScaledObjectRef,
        code: grpc.StatusCode,
        msg: str,
        trigger: TriggerConfig | None = None,
    ) -> None:
        if trigger is not None:
            namespace, workload = trigger.namespace, trigger.workload
        else:
            # Invalid metadata: its namespace/workload only if they are valid names, else the ref's.
            meta = ref.scalerMetadata
            namespace, workload = meta.get("namespace", ref.namespace), meta.get("workload", ref.name)
            if self.metrics.labels_for(namespace, workload)[1] == "":
                namespace, workload = ref.namespace, ref.name
        self.metrics.record_error(namespace, workload, code.name)
        msg = truncate(msg, MAX_STATUS_CHARS)
        log.info("%s/%s: %s: %s", truncate(ref.namespace, 63), truncate(ref.name, 253), code.name, msg)
        context.abort(code, msg)

    def _trigger(self, ref: pb.ScaledObjectRef, context: grpc.ServicerContext) -> TriggerConfig:
        try:
            return _parse_cached(ref.scalerMetadata, ref.namespace)
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
            self._abort(context, ref, grpc.StatusCode.INVALID_ARGUMENT, str(exc), trigger)
            raise
        except KpiUnavailable as exc:
            self._abort(context, ref, grpc.StatusCode.UNAVAILABLE, str(exc), trigger)
            raise
        wanted = decide(observation, trigger.policy_config())
        decision = advisory(wanted, observation) if trigger.mode is Mode.ADVISORY else wanted
        if not 0 <= decision.replicas <= MAX_COUNT:
            # The sources validate their counts; this is the last lock before KEDA sees a number.
            msg = f"refusing to answer {decision.replicas} replicas (outside [0, {MAX_COUNT}])"
            self._abort(context, ref, grpc.StatusCode.UNAVAILABLE, msg, trigger)
        self.metrics.record_decision(trigger, wanted, observation.current_replicas)
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
