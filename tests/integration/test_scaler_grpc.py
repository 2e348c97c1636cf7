"""A real eo-scaler gRPC server on port 0, driven the way KEDA drives it, against a KPI source we control."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.settings import from_values
from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc
from scaler.metadata import KNOWN_KEYS, TriggerConfig
from scaler.policy import Observation
from scaler.queries import KpiUnavailable
from scaler.server import ScalerHandle, start_scaler
from scaler.settings import ScalerSettings
from tests.support.keda import KedaLikeScaledObject

META = {
    "workload": "llama",
    "latencySloSeconds": "2",
    "replicaCapacityRps": "10",
    "minReplicas": "0",
    "maxReplicas": "10",
    # Round numbers for the worked replica counts (the defaults are 1.0 and 8/9 of it).
    "targetUtilization": "0.9",
    "scaleDownUtilization": "0.8",
}


class FakeKpis:
    """The Prometheus edge, under the test's control: an observation or an outage."""

    def __init__(self) -> None:
        self.observation = Observation(current_replicas=2, load_rps=16.0, peak_load_rps=16.0, latency_s=1.0)
        self.error: Exception | None = None
        self.calls = 0
        self.lock = threading.Lock()

    def observe(self, trigger: TriggerConfig) -> Observation:
        with self.lock:
            self.calls += 1
        if self.error is not None:
            raise self.error
        return self.observation


def _settings(**kw: object) -> ScalerSettings:
    base: dict[str, object] = {"listen_address": "127.0.0.1", "port": 0, "metrics_address": "127.0.0.1"}
    base["metrics_port"] = 0
    base.update(kw)
    return from_values(ScalerSettings, base, environ={})


@pytest.fixture(scope="module")
def kpis() -> FakeKpis:
    return FakeKpis()


@pytest.fixture(scope="module")
def server(kpis: FakeKpis) -> Iterator[ScalerHandle]:
    handle = start_scaler(_settings(stream_interval_s=0.2), kpi_source=kpis)
    yield handle
    handle.stop(1.0)


@pytest.fixture(scope="module")
def stub(server: ScalerHandle) -> Iterator[pb_grpc.ExternalScalerStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.ExternalScalerStub(channel)


@pytest.fixture
def fresh(kpis: FakeKpis) -> Iterator[FakeKpis]:
    saved = kpis.observation
    yield kpis
    kpis.observation, kpis.error = saved, None


def _so(stub: pb_grpc.ExternalScalerStub, **kw: object) -> KedaLikeScaledObject:
    meta = {**META, **kw.pop("metadata", {})}  # type: ignore[dict-item]
    return KedaLikeScaledObject(stub, "llama-so", "inference", meta, min_replicas=0, max_replicas=10, **kw)  # type: ignore[arg-type]


def test_keda_poll_loop_drives_replicas(stub: pb_grpc.ExternalScalerStub, fresh: FakeKpis) -> None:
    so = _so(stub, cooldown_s=300)
    replicas, now = 2, 0.0

    def poll(load: float, latency: float | None, peak: float | None = None, idle_for: float = 0.0) -> int:
        nonlocal replicas, now
        fresh.observation = Observation(
            current_replicas=replicas,
            load_rps=load,
            peak_load_rps=peak if peak is not None else load,
            latency_s=latency,
            idle_for_s=idle_for,
        )
        replicas = so.poll(replicas, now)
        now += 30
        return replicas

    assert poll(60.0, 1.2) == 7  # ceil(60 / (10 * 0.9))
    assert poll(60.0, 1.2) == 7  # constant load: no change
    assert poll(60.0, 1.2) == 7
    assert poll(20.0, 1.2, peak=60.0) == 7  # the window's peak holds replicas
    assert poll(20.0, 1.2) == 3  # window clear: consolidate to ceil(20 / (10 * 0.8))
    assert poll(20.0, 3.0) == 4  # SLO breach while 3 carry the load at 90%: one more at once
    assert poll(0.0, None, idle_for=100) == 1  # quiet but not idle long enough: one replica stays
    assert poll(0.0, None, idle_for=400) >= 1  # inactive, but KEDA waits for the cooldown
    for _ in range(10):
        poll(0.0, None, idle_for=400)
    assert replicas == 0


def test_fallback_after_failure_threshold(stub: pb_grpc.ExternalScalerStub, fresh: FakeKpis) -> None:
    so = _so(stub, fallback_replicas=5, failure_threshold=3)
    fresh.error = KpiUnavailable("exporter heartbeat is 500s old")
    assert so.poll(2, 0) == 2
    assert so.poll(2, 30) == 2
    assert so.poll(2, 60) == 5
    assert so.errors == [grpc.StatusCode.UNAVAILABLE] * 3
    fresh.error = None
    assert so.poll(5, 90) == 2  # data back: ceil(16 / 8)


def test_metric_spec_and_exactly_one_value(stub: pb_grpc.ExternalScalerStub, fresh: FakeKpis) -> None:
    ref = pb.ScaledObjectRef(name="x", namespace="inference", scalerMetadata=META)
    spec = stub.GetMetricSpec(ref)
    assert [(s.metricName, s.targetSize, s.targetSizeFloat) for s in spec.metricSpecs] == [
        ("eo-desired-replicas-llama", 1, 1.0)
    ]
    calls = fresh.calls
    stub.GetMetricSpec(ref)
    assert fresh.calls == calls, "GetMetricSpec must not touch the KPI source"
    values = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName="s0-eo")).metricValues
    assert len(values) == 1 and values[0].metricValueFloat == 2.0 and values[0].metricValue == 2


def test_advisory_reports_current_and_publishes_the_decision(
    server: ScalerHandle, stub: pb_grpc.ExternalScalerStub, fresh: FakeKpis
) -> None:
    fresh.observation = Observation(current_replicas=3, load_rps=60.0, peak_load_rps=60.0, latency_s=1.0)
    meta = {**META, "mode": "advisory", "workload": "advised"}
    ref = pb.ScaledObjectRef(name="x", namespace="inference", scalerMetadata=meta)
    value = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref)).metricValues[0].metricValueFloat
    assert value == 3.0
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    )
    assert 'eo_scaler_desired_replicas{namespace="inference",workload="advised"} 7.0' in text
    assert 'eo_scaler_current_replicas{namespace="inference",workload="advised"} 3.0' in text
    assert 'eo_scaler_mode_info{mode="advisory",namespace="inference",workload="advised"} 1.0' in text
    assert (
        'eo_scaler_decisions_total{namespace="inference",reason="scale_up_load",workload="advised"}' in text
    )


def test_invalid_metadata_names_the_key_and_is_counted(
    server: ScalerHandle, stub: pb_grpc.ExternalScalerStub
) -> None:
    ref = pb.ScaledObjectRef(
        name="x", namespace="inference", scalerMetadata={**META, "latencySloSeconds": "soon"}
    )
    for call in (stub.GetMetricSpec, stub.IsActive):
        with pytest.raises(grpc.RpcError) as info:
            call(ref)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "latencySloSeconds" in (info.value.details() or "")
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    )
    assert 'eo_scaler_errors_total{code="INVALID_ARGUMENT",namespace="inference",workload="llama"}' in text
    # Failed calls are timed too: the duration histogram is what operators watch for slow answers.
    for method in ("GetMetricSpec", "IsActive"):
        assert f'eo_scaler_request_duration_seconds_count{{method="{method}"}}' in text
    assert 'eo_scaler_request_duration_seconds_count{method="IsActive"} 0.0' not in text


def test_stream_is_active_sends_on_open(stub: pb_grpc.ExternalScalerStub, fresh: FakeKpis) -> None:
    ref = pb.ScaledObjectRef(name="x", namespace="inference", scalerMetadata=META)
    stream = stub.StreamIsActive(ref, timeout=5)
    assert next(stream).result is True
    fresh.observation = replace(
        fresh.observation, load_rps=0.0, peak_load_rps=0.0, latency_s=None, idle_for_s=900
    )
    assert any(not msg.result for _, msg in zip(range(5), stream, strict=False))
    stream.cancel()
    spec_stream = stub.StreamMetricSpec(ref, timeout=5)
    assert next(spec_stream).metricSpecs[0].targetSizeFloat == 1.0
    spec_stream.cancel()


def test_health_and_reflection(server: ScalerHandle) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "externalscaler.ExternalScaler"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(refl.ServerReflectionInfo(iter([request]), timeout=5)))
        names = {s.name for s in response.list_services_response.service}
        assert {"externalscaler.ExternalScaler", "grpc.health.v1.Health"} <= names


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class BlockingKpis(FakeKpis):
    """Holds every observe() until released: a poll in flight while the scaler stops."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def observe(self, trigger: TriggerConfig) -> Observation:
        self.entered.set()
        self.release.wait(10)
        return super().observe(trigger)


def test_metrics_server_paths_and_healthz_follow_shutdown() -> None:
    kpis = BlockingKpis()
    handle = start_scaler(_settings(), kpi_source=kpis)
    base = f"http://127.0.0.1:{handle.metrics_port}"
    stopper = threading.Thread(target=handle.stop, args=(10.0,))
    try:
        assert _get(f"{base}/healthz") == (200, "ok\n")
        status, text = _get(f"{base}/metrics")
        assert status == 200 and "eo_scaler_request_duration_seconds" in text
        assert _get(f"{base}/other")[0] == 404
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            ref = pb.ScaledObjectRef(name="x", namespace="inference", scalerMetadata=META)
            call = pb_grpc.ExternalScalerStub(channel).GetMetrics.future(
                pb.GetMetricsRequest(scaledObjectRef=ref), timeout=10
            )
            assert kpis.entered.wait(5)
            stopper.start()  # NOT_SERVING first; the grace waits for the poll in flight
            for _ in range(100):
                if _get(f"{base}/healthz")[0] == 503:
                    break
                threading.Event().wait(0.05)
            assert _get(f"{base}/healthz") == (503, "stopping\n")
            kpis.release.set()
            assert call.result().metricValues[0].metricValue == 2
    finally:
        kpis.release.set()
        if stopper.ident is None:
            handle.stop(0.5)
        else:
            stopper.join(15)


_keys = st.one_of(st.sampled_from(sorted(KNOWN_KEYS)), st.text(max_size=20))
_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["0", "1", "-1", "2.5", "nan", "inf", "1e309", "enforce", "advisory", "llama", "a=b"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metadata=st.dictionaries(_keys, _values, max_size=8), with_base=st.booleans())
def test_fuzzed_metadata_never_crashes(
    stub: pb_grpc.ExternalScalerStub, metadata: dict[str, str], with_base: bool
) -> None:
    meta = {**META, **metadata} if with_base else metadata
    ref = pb.ScaledObjectRef(name="fuzz", namespace="inference", scalerMetadata=meta)
    for call in (
        lambda: stub.GetMetricSpec(ref, timeout=5),
        lambda: stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref), timeout=5),
        lambda: stub.IsActive(ref, timeout=5),
    ):
        try:
            call()
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details(), meta)
