"""The query layer against a REAL Prometheus scraping a fixture exporter whose series the test sets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from common.settings import from_values
from demo.prometheus import Prometheus
from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc
from scaler import signals as sig
from scaler.kpi_source import PrometheusAuth, PrometheusKpiSource
from scaler.metadata import TriggerConfig, parse_metadata
from scaler.queries import KpiUnavailable, capacity_sample_expr, parts, replicas_expr, selector, slo_signals
from scaler.server import ScalerHandle, start_scaler
from scaler.settings import ScalerSettings

# The scaler reads these KPIs by name (the contract); the real rules (recording_rules/) use 5m windows.
# The fixture uses 10s so that a rate is exact seconds after start instead of after five minutes.
RULES = {
    "groups": [
        {
            "name": "eo-test-kpis",
            "rules": [
                {
                    "record": "namespace_workload:eo_pod_requests:rate5m",
                    "expr": "sum by (namespace, workload) (rate(eo_pod_requests_total[10s]))",
                },
                {
                    "record": "namespace_workload:eo_pod_energy_joules:rate5m",
                    "expr": "sum by (namespace, workload) (rate(eo_pod_energy_joules_total[10s]))",
                },
            ],
        }
    ]
}


@dataclass
class Workload:
    """Pods of one workload on one fixture node."""

    pods: int
    rps: float = 10.0
    watts: float = 400.0
    latency_s: float = 0.3
    stale_age_s: float = 0.0  # samples timestamped this far in the past
    readable: bool = True  # eo_pod_metrics_up: the exporter could read the pod's inference server
    counters: bool = True  # the exporter publishes the pod's mirrored counters
    request_itl_s: float | None = None  # each request's mean ITL, where the server publishes it (vLLM)
    waiting: float = 0.0  # requests waiting per pod (vLLM num_requests_waiting)


class FixtureExporter(Collector):
    """One node's exporter: counters that grow at set rates, computed at scrape time (so rates are
    exact), the PodResources view (``eo_gpu_pod_info``), ``eo_pod_metrics_up`` and the pods heartbeat."""

    def __init__(self, node: str, workloads: dict[tuple[str, str], Workload]) -> None:
        self.t0 = time.time()
        self.node = node
        self.workloads = workloads

    def collect(self) -> Iterator[Any]:
        now = time.time()
        elapsed = now - self.t0
        up = GaugeMetricFamily("eo_exporter_collector_up", "fixture", labels=["collector"])
        up.add_metric(["pods"], 1)
        yield up
        labels = ["node", "namespace", "pod", "workload"]
        info = GaugeMetricFamily("eo_gpu_pod_info", "fixture", labels=[*labels, "uuid"])
        app_up = GaugeMetricFamily("eo_pod_metrics_up", "fixture", labels=labels)
        requests = CounterMetricFamily("eo_pod_requests", "fixture", labels=labels)
        energy = CounterMetricFamily("eo_pod_energy_joules", "fixture", labels=labels)
        latency = HistogramMetricFamily("eo_pod_request_latency_seconds", "fixture", labels=labels)
        tokens = CounterMetricFamily("eo_pod_tokens", "fixture", labels=[*labels, "kind"])
        ttft = HistogramMetricFamily("eo_pod_time_to_first_token_seconds", "fixture", labels=labels)
        itl = HistogramMetricFamily("eo_pod_inter_token_latency_seconds", "fixture", labels=labels)
        request_itl = HistogramMetricFamily(
            "eo_pod_request_time_per_output_token_seconds", "fixture", labels=labels
        )
        waiting = GaugeMetricFamily("eo_pod_requests_waiting", "fixture", labels=labels)
        running = GaugeMetricFamily("eo_pod_requests_running", "fixture", labels=labels)
        kv = GaugeMetricFamily("eo_pod_kv_cache_usage_ratio", "fixture", labels=labels)
        for (ns, wl), w in list(self.workloads.items()):
            for i in range(w.pods):
                lv = [self.node, ns, f"{wl}-{self.node}-{i}", wl]
                info.add_metric([*lv, f"GPU-{wl}-{i}"], 1)
                app_up.add_metric(lv, 1 if w.readable else 0)
                if not w.counters:
                    continue
                # A stale workload: its samples carry a timestamp stale_age seconds in the past.
                ts = self.t0 - w.stale_age_s if w.stale_age_s else None
                count = w.rps * elapsed if not w.stale_age_s and w.readable else 100.0
                requests.add_metric(lv, count, timestamp=ts)
                energy.add_metric(lv, w.watts * elapsed, timestamp=ts)
                buckets = [("0.25", 0.0 if w.latency_s > 0.25 else count), ("0.5", count), ("+Inf", count)]
                latency.add_metric(lv, buckets, sum_value=count * w.latency_s, timestamp=ts)
                # 500 tokens per request (400 prompt, 100 generated); every first token within
                # (0.1, 0.25] s, every inter-token interval within (0.01, 0.025] s.
                tokens.add_metric([*lv, "prompt"], 400 * count, timestamp=ts)
                tokens.add_metric([*lv, "generation"], 100 * count, timestamp=ts)
                ttft.add_metric(lv, [("0.1", 0.0), ("0.25", count), ("+Inf", count)], sum_value=0.2 * count,
                                timestamp=ts)  # fmt: skip
                generated = 99 * count
                itl.add_metric(lv, [("0.01", 0.0), ("0.025", generated), ("+Inf", generated)],
                               sum_value=0.02 * generated, timestamp=ts)  # fmt: skip
                if w.request_itl_s is not None:
                    within = 0.0 if w.request_itl_s > 0.025 else count
                    request_itl.add_metric(lv, [("0.025", within), ("0.05", count), ("+Inf", count)],
                                           sum_value=w.request_itl_s * count, timestamp=ts)  # fmt: skip
                waiting.add_metric(lv, w.waiting, timestamp=ts)
                running.add_metric(lv, 8.0, timestamp=ts)
                kv.add_metric(lv, 0.4, timestamp=ts)
        yield from (
            info,
            app_up,
            requests,
            energy,
            latency,
            tokens,
            ttft,
            itl,
            request_itl,
            waiting,
            running,
            kv,
        )


def _serve(exporter: FixtureExporter) -> Any:
    registry = CollectorRegistry()
    registry.register(exporter)
    http, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    return http


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    node1 = FixtureExporter(
        "n1",
        {
            ("demo", "llama"): Workload(pods=2),
            ("demo", "old"): Workload(pods=1, rps=5.0, watts=300.0, stale_age_s=200.0),
            # The exporter cannot read these pods' servers: counters frozen (still published), up 0.
            ("demo", "mute"): Workload(pods=2, readable=False),
            # Pods hold GPUs, but the exporter publishes no counters for them (and up 0).
            ("demo", "silent"): Workload(pods=1, readable=False, counters=False),
            ("demo", "gone"): Workload(pods=1),
            ("demo", "queued"): Workload(pods=2, waiting=2.0),  # a queue all along
            # Every token within 25 ms, but each request's mean ITL 40 ms (its few tokens shared an
            # iteration with a long prefill): the per-request histogram is the one the SLO reads.
            ("demo", "short"): Workload(pods=1, request_itl_s=0.04),
        },
    )
    node2 = FixtureExporter("n2", {("demo", "moved"): Workload(pods=1)})
    http1, http2 = _serve(node1), _serve(node2)
    rules = tmp_path_factory.mktemp("rules") / "kpis.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    targets = [f"127.0.0.1:{http1.server_port}", f"127.0.0.1:{http2.server_port}"]
    prom = Prometheus(targets=targets, scrape_interval_s=0.5, rule_files=[rules])
    try:
        prom.start()
    except Exception as exc:  # PrometheusNotInstalled and friends
        for http in (http1, http2):
            http.shutdown()
            http.server_close()
        pytest.skip(f"cannot run Prometheus: {exc}")
    try:
        # The policy's short window is one minute: wait until it holds a full minute of samples.
        prom.wait_for('sum(rate(eo_pod_requests_total{workload="llama"}[60s])) > 19.5', timeout_s=120)
        prom.wait_for('eo_gpu_pod_info{workload="moved"}', timeout_s=30)
        prom.http = http1  # type: ignore[attr-defined]
        prom.http2 = http2  # type: ignore[attr-defined]
        prom.node1 = node1  # type: ignore[attr-defined]
        yield prom
    finally:
        prom.stop()
        for http in (http1, http2):
            http.shutdown()
            http.server_close()


@pytest.fixture(scope="module")
def scaler(prometheus: Prometheus) -> Iterator[ScalerHandle]:
    settings = from_values(
        ScalerSettings,
        {
            "listen_address": "127.0.0.1",
            "port": 0,
            "metrics_address": "127.0.0.1",
            "metrics_port": 0,
            "prometheus_url": prometheus.url,
            "cache_ttl_s": 60,
        },
        environ={},
    )
    handle = start_scaler(settings)
    yield handle
    handle.stop(0.5)


def _status(scaler: ScalerHandle, metadata: dict[str, str]) -> tuple[grpc.StatusCode, float | None, str]:
    """``(code, value, details)`` of one GetMetrics call."""
    with grpc.insecure_channel(f"127.0.0.1:{scaler.port}") as channel:
        try:
            value = _metrics(pb_grpc.ExternalScalerStub(channel), metadata)
        except grpc.RpcError as exc:
            return exc.code(), None, exc.details() or ""
    return grpc.StatusCode.OK, value, ""


def _metrics(stub: pb_grpc.ExternalScalerStub, metadata: dict[str, str]) -> float:
    ref = pb.ScaledObjectRef(name="so", namespace="demo", scalerMetadata=metadata)
    return (
        stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref), timeout=3).metricValues[0].metricValueFloat
    )


def test_observation_from_real_prometheus(prometheus: Prometheus) -> None:
    source = PrometheusKpiSource(PrometheusAuth(url=prometheus.url))
    trigger = parse_metadata(
        {"workload": "llama", "latencySloSeconds": "2", "powerBudgetWatts": "5000"}, "demo"
    )
    o = source.observe(trigger)
    assert o.current_replicas == 2
    assert o.load_rps == pytest.approx(20.0, rel=0.1)
    assert o.peak_load_rps >= o.load_rps
    assert o.latency_s == pytest.approx(0.25 + 0.95 * 0.25, rel=0.02)  # histogram_quantile interpolation
    assert o.workload_power_watts == pytest.approx(800.0, rel=0.1)
    assert o.idle_for_s == 0.0
    assert o.settled_replicas in (None, 2)  # None until the first 15-s subquery step has data


def test_llm_signals_from_real_prometheus(prometheus: Prometheus) -> None:
    source = PrometheusKpiSource(PrometheusAuth(url=prometheus.url))
    trigger = parse_metadata({"workload": "llama", "ttftSloSeconds": "0.5", "itlSloSeconds": "0.05"}, "demo")
    o = source.observe(trigger)
    assert o.latency_s is None
    assert o.ttft_s == pytest.approx(0.1 + 0.9 * 0.15, rel=0.02)  # P90 by default
    assert o.itl_s == pytest.approx(0.01 + 0.9 * 0.015, rel=0.02)
    assert o.load_tps == pytest.approx(20 * 500, rel=0.1)
    assert (o.waiting_requests, o.running_requests, o.kv_usage_ratio) == (0.0, 16.0, 0.4)
    assert o.burst_rise is None or o.burst_rise == pytest.approx(1.0, rel=0.1)  # a constant rate
    assert o.forecast_rps is None  # the trend needs ten minutes of history, the season a day


def test_the_itl_slo_reads_each_requests_mean_where_the_server_publishes_it(prometheus: Prometheus) -> None:
    source = PrometheusKpiSource(PrometheusAuth(url=prometheus.url))
    metadata = {"ttftSloSeconds": "0.5", "itlSloSeconds": "0.025"}
    short = source.observe(parse_metadata({"workload": "short", **metadata}, "demo"))
    # Every request's mean is in (0.025, 0.05]: P90 interpolates there, and the whole budget is spent
    # ten times over (every request missed, 10% allowed), although no token was slower than 25 ms.
    assert short.itl_s == pytest.approx(0.025 + 0.9 * 0.025, rel=0.02)
    assert short.itl_ratio == pytest.approx(10.0, rel=0.02)
    # Without the per-request histogram the token histogram is read: every token within 25 ms.
    llama = source.observe(parse_metadata({"workload": "llama", **metadata}, "demo"))
    assert llama.itl_s == pytest.approx(0.01 + 0.9 * 0.015, rel=0.02) and llama.itl_ratio == 0.0


def test_learned_capacity_and_settled_replicas_in_real_promql(prometheus: Prometheus) -> None:
    trigger = parse_metadata({"workload": "llama", "latencySloSeconds": "2"}, "demo")
    # 5,000 tokens/s per pod at p95 0.4875 s (2 s is no bucket bound: the quantile ratio, 0.244):
    # 5,000 / sqrt(0.244) per replica.
    sample = prometheus.query(capacity_sample_expr(trigger))
    assert len(sample) == 1 and float(sample[0]["value"][1]) == pytest.approx(
        5000 / 0.4875**0.5 * 2**0.5, rel=0.05
    )
    # Every SLO held, worst at 47% (quantile ratios): 5,000 / sqrt(0.47); one SLO broken: no sample.
    llm = parse_metadata({"workload": "llama", "ttftSloSeconds": "0.5", "itlSloSeconds": "0.05"}, "demo")
    sample = prometheus.query(capacity_sample_expr(llm))
    assert float(sample[0]["value"][1]) == pytest.approx(5000 / 0.47**0.5, rel=0.05)
    # SLOs on bucket bounds: nothing above them, no error budget used: at most 2.5 x what was served.
    bounds = parse_metadata({"workload": "llama", "ttftSloSeconds": "0.25", "itlSloSeconds": "0.025"}, "demo")
    assert float(prometheus.query(capacity_sample_expr(bounds))[0]["value"][1]) == pytest.approx(
        12500, rel=0.05
    )
    # Capped at the burst headroom (a scalar to PromQL; under 1 counts as 1; absent: the fixed cap).
    slos, replicas = slo_signals(bounds), sig.Replicas(replicas_expr(bounds))
    for headroom, expected in (("vector(1.6)", 8000), ("vector(0.5)", 5000), ("absent_metric_eo", 12500)):
        capped = sig.capacity_sample(slos, replicas, headroom=sig.Raw(headroom))
        answer = prometheus.query(capped.promql(selector("demo", "llama")))
        assert float(answer[0]["value"][1]) == pytest.approx(expected, rel=0.05), headroom
    o = PrometheusKpiSource(PrometheusAuth(url=prometheus.url)).observe(bounds)
    assert (o.ttft_ratio, o.itl_ratio) == (0.0, 0.0) and o.ttft_s is not None
    broken = parse_metadata({"workload": "llama", "ttftSloSeconds": "0.5", "itlSloSeconds": "0.02"}, "demo")
    assert prometheus.query(capacity_sample_expr(broken)) == []
    # Latency above the SLO: no sample (the minute does not count).
    strict = parse_metadata({"workload": "llama", "latencySloSeconds": "0.4"}, "demo")
    assert prometheus.query(capacity_sample_expr(strict)) == []
    # The full parts are valid PromQL for the real engine (the subqueries evaluate without error).
    for name in (
        "capacity",
        "settled_replicas",
        "burst_rise",
        "forecast_trend",
        "forecast_season",
        "waiting",
    ):
        prometheus.query(parts(trigger)[name])
    prometheus.wait_for(f"{parts(trigger)['settled_replicas']} == 2", timeout_s=30)
    # A queue (waiting requests) sustained for 30 s keeps the minute out of the capacity.
    queued = parse_metadata({"workload": "queued", "ttftSloSeconds": "0.5", "itlSloSeconds": "0.05"}, "demo")
    prometheus.wait_for(f"{parts(queued)['waiting']} >= 4", timeout_s=30)
    assert prometheus.query(capacity_sample_expr(queued)) == []
    assert PrometheusKpiSource(PrometheusAuth(url=prometheus.url)).observe(queued).waiting_requests == 4.0


def test_getmetrics_answers_the_policy_value_and_caches(prometheus: Prometheus, scaler: ScalerHandle) -> None:
    meta = {"workload": "llama", "latencySloSeconds": "2", "replicaCapacityRps": "5", "maxReplicas": "10"}
    with grpc.insecure_channel(f"127.0.0.1:{scaler.port}") as channel:
        stub = pb_grpc.ExternalScalerStub(channel)
        # ceil(20 rps x 1.3 / (5 rps x 0.9)): a young workload (minutes of history) gets the usual margin
        assert _metrics(stub, meta) == 6.0
        for _ in range(50):
            assert _metrics(stub, meta) == 6.0
        budget = {**meta, "powerBudgetWatts": "1000"}  # 400 W per replica observed -> at most 2
        assert _metrics(stub, budget) == 2.0
    queries = scaler.metrics.registry.get_sample_value(
        "eo_scaler_prometheus_queries_total", {"namespace": "demo", "workload": "llama"}
    )
    assert queries == 2.0  # one per distinct query set, not one per poll


def test_stale_workload_series_are_unavailable(prometheus: Prometheus, scaler: ScalerHandle) -> None:
    meta = {"workload": "old", "latencySloSeconds": "2", "replicaCapacityRps": "5", "stalenessSeconds": "60"}
    with grpc.insecure_channel(f"127.0.0.1:{scaler.port}") as channel, pytest.raises(grpc.RpcError) as info:
        _metrics(pb_grpc.ExternalScalerStub(channel), meta)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "stale" in (info.value.details() or "")


def test_injection_in_label_values_is_harmless(prometheus: Prometheus, scaler: ScalerHandle) -> None:
    evil = 'nomatch"} or vector(42) or eo_pod_requests_total{workload="nomatch'
    # Unescaped, this value would change the query's structure (the test can fail):
    raw = f'count(eo_pod_requests_total{{namespace="demo",workload="{evil}"}})'
    assert prometheus.query(raw) != []
    # Escaped, it is just a label value that matches nothing.
    assert prometheus.query(f"count(eo_pod_requests_total{selector('demo', evil)})") == []
    # Through the query layer (validation bypassed on purpose): zero pods, never 42 or llama's data.
    trigger = TriggerConfig(namespace="demo", workload=evil, latency_slo_s=2.0, replica_capacity_rps=5.0)
    o = PrometheusKpiSource(PrometheusAuth(url=prometheus.url)).observe(trigger)
    assert o.current_replicas == 0 and o.load_rps == 0.0
    # Through gRPC the metadata is refused before any query.
    meta = {"workload": evil, "latencySloSeconds": "2"}
    with grpc.insecure_channel(f"127.0.0.1:{scaler.port}") as channel, pytest.raises(grpc.RpcError) as info:
        _metrics(pb_grpc.ExternalScalerStub(channel), meta)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "workload" in (
        info.value.details() or ""
    )


def test_bad_custom_query_is_invalid_argument(prometheus: Prometheus, scaler: ScalerHandle) -> None:
    meta = {"workload": "llama", "latencySloSeconds": "2", "latencyQuery": "sum(rate(x[5m]"}
    with grpc.insecure_channel(f"127.0.0.1:{scaler.port}") as channel, pytest.raises(grpc.RpcError) as info:
        _metrics(pb_grpc.ExternalScalerStub(channel), meta)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_pods_whose_server_cannot_be_read_are_unavailable_not_zero(
    prometheus: Prometheus, scaler: ScalerHandle
) -> None:
    """The exporter sees the pods (PodResources) but cannot read their inference servers: "mute" has
    frozen counters re-published with fresh timestamps, "silent" none at all. Neither is a number."""
    for workload in ("mute", "silent"):
        meta = {"workload": workload, "latencySloSeconds": "2", "replicaCapacityRps": "5"}
        code, value, details = _status(scaler, meta)
        assert code == grpc.StatusCode.UNAVAILABLE, (workload, code, value)
        assert "none is serving" in details


def test_custom_query_cannot_add_parts_to_the_combined_query(
    prometheus: Prometheus, scaler: ScalerHandle
) -> None:
    # Closes the max((...)) wrapper and adds its own demand part to the combined query (old code: a
    # workload with no pods woke to 22 replicas on demand 99).
    inject = (
        'vector(1))), "eo_part", "latency", "", "") or label_replace(vector(99), "eo_part", "demand", "", "")'
        " or label_replace(max((vector(1)"
    )
    meta = {
        "workload": "nothing",
        "latencySloSeconds": "2",
        "replicaCapacityRps": "5",
        "latencyQuery": inject,
    }
    code, value, _ = _status(scaler, meta)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, value)
    # A custom query that answers many labelled series is one value, labels ignored (the highest).
    many = 'label_replace(vector(0.3), "eo_part", "replicas", "", "") or label_replace(vector(0.4), "x", "y", "", "")'
    source = PrometheusKpiSource(PrometheusAuth(url=prometheus.url))
    trigger = parse_metadata({"workload": "llama", "latencySloSeconds": "2", "latencyQuery": many}, "demo")
    o = source.observe(trigger)
    assert o.current_replicas == 2 and o.latency_s == pytest.approx(0.4)


def test_zero_pods_with_evidence_is_zero(prometheus: Prometheus) -> None:
    source = PrometheusKpiSource(PrometheusAuth(url=prometheus.url))
    trigger = parse_metadata(
        {"workload": "gone", "latencySloSeconds": "2", "replicaCapacityRps": "5"}, "demo"
    )
    assert source.observe(trigger).current_replicas == 1
    del prometheus.node1.workloads[("demo", "gone")]  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while (o := source.observe(trigger)).current_replicas != 0:
        assert time.monotonic() < deadline, "the workload never went to zero pods"
        time.sleep(0.3)
    assert o.load_rps == 0.0


def test_workload_on_a_node_whose_exporter_died_is_unavailable_not_zero(prometheus: Prometheus) -> None:
    """Another node's exporter is alive (old code: 0 replicas, inactive, within seconds)."""
    source = PrometheusKpiSource(PrometheusAuth(url=prometheus.url))
    base = {"workload": "moved", "latencySloSeconds": "2", "replicaCapacityRps": "5"}
    trigger = parse_metadata(base, "demo")
    with_demand = parse_metadata({**base, "activationQuery": "count(up) * 7"}, "demo")
    assert source.observe(trigger).current_replicas == 1
    prometheus.http2.shutdown()  # type: ignore[attr-defined]
    prometheus.http2.server_close()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while prometheus.query('eo_gpu_pod_info{workload="moved"}'):
        assert time.monotonic() < deadline, "node n2's series never went stale"
        time.sleep(0.3)
    for t in (trigger, with_demand):
        with pytest.raises(KpiUnavailable, match="no fresh pods heartbeat"):
            source.observe(t)
    # The workloads of the live node are still answered.
    assert source.observe(parse_metadata({**base, "workload": "llama"}, "demo")).current_replicas == 2


def test_dead_exporter_pipeline_is_unavailable(prometheus: Prometheus) -> None:
    """Last in the module: stops the fixture exporter, so Prometheus marks every series stale."""
    prometheus.http.shutdown()  # type: ignore[attr-defined]
    prometheus.http.server_close()  # type: ignore[attr-defined]
    source = PrometheusKpiSource(PrometheusAuth(url=prometheus.url))
    trigger = parse_metadata({"workload": "llama", "latencySloSeconds": "2"}, "demo")
    deadline = time.monotonic() + 20
    while True:
        try:
            source.observe(trigger)
        except KpiUnavailable as exc:
            assert "heartbeat" in str(exc)
            break
        assert time.monotonic() < deadline, "series never went stale"
        time.sleep(0.3)
    # Custom PromQL answers from Prometheus' own series, which stay alive: still no answer.
    for activation in ("count(up) * 7", "vector(7)"):
        custom = parse_metadata(
            {"workload": "nothing", "latencySloSeconds": "2", "activationQuery": activation}, "demo"
        )
        with pytest.raises(KpiUnavailable, match="heartbeat"):
            source.observe(custom)


def test_unreachable_prometheus_is_unavailable() -> None:
    trigger = parse_metadata({"workload": "llama", "latencySloSeconds": "2"}, "demo")
    with pytest.raises(KpiUnavailable, match="unreachable"):
        PrometheusKpiSource(PrometheusAuth(url="http://127.0.0.1:1", timeout_s=0.5)).observe(trigger)
