"""Bounded fuzzing of the real gRPC service: random metadata and random Prometheus answers.

The KPI source is a stub whose answer the test draws, read by the real ``to_observation``; the server
is a real eo-scaler on port 0. Whatever arrives, the service answers only OK, INVALID_ARGUMENT or
UNAVAILABLE, never a number without a fresh heartbeat, and its memory and ``/metrics`` stay bounded.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc
from scaler.metadata import KNOWN_KEYS, TriggerConfig
from scaler.policy import Observation
from scaler.queries import all_parts, to_observation
from scaler.server import ScalerHandle, start_scaler
from scaler.settings import ScalerSettings

EXAMPLES = 2000
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE}
META = {"workload": "llama", "latencySloSeconds": "2", "replicaCapacityRps": "10", "maxReplicas": "10"}
PART_NAMES = ["heartbeat_age", "visible_pods", "replicas", "unwatched_nodes", "load", "peak", "latency"]
PART_NAMES += ["latency_rate", "recent_requests", "settled_replicas", "capacity", "demand", "power", "jpr"]
PART_NAMES += [
    "ttft",
    "ttft_rate",
    "itl",
    "itl_rate",
    "tokens",
    "peak_tokens",
    "waiting",
    "running",
    "kv_usage",
]
PART_NAMES += ["burst_rise", "rise_minutes", "forecast_trend", "forecast_season"]
PART_NAMES += ["ttft_ratio", "itl_ratio", "latency_ratio"]


class StubSource:
    """Answers with whatever the current example drew, through the real answer checks."""

    def __init__(self) -> None:
        self.answer: Any = []
        self.custom: dict[str, float | None] = {}

    def observe(self, trigger: TriggerConfig) -> Observation:
        return to_observation(trigger, self.answer, self.custom)


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ScalerHandle, StubSource]]:
    source = StubSource()
    settings_ = ScalerSettings(
        listen_address="127.0.0.1", port=0, metrics_address="127.0.0.1", metrics_port=0
    )
    handle = start_scaler(settings_, kpi_source=source)
    yield handle, source
    handle.stop(0.5)


_numbers = st.sampled_from(
    ["0", "1", "2", "3", "-3", "1e19", "NaN", "+Inf", "-Inf", "2.5", "100", "119", "121", "abc", "", "1e-300"]
)
_value = st.one_of(_numbers, st.integers(-5, 5), st.none(), st.lists(st.just("1"), max_size=2))
_series = st.fixed_dictionaries(
    {
        "metric": st.one_of(
            st.fixed_dictionaries({"eo_part": st.sampled_from(PART_NAMES)}),
            st.just({}),
            st.just([]),
            st.fixed_dictionaries({"eo_part": st.integers()}),
        ),
        "value": st.one_of(st.tuples(st.just(1.0), _value).map(list), _value),
    }
)
# A well-formed answer with up to three parts changed: the path to an OK answer gets exercised too.
GOOD = {"heartbeat_age": "1", "visible_pods": "2", "replicas": "2", "unwatched_nodes": "0", "load": "16"}
_near_good = st.dictionaries(st.sampled_from(PART_NAMES), _numbers, max_size=3).map(
    lambda changed: [{"metric": {"eo_part": k}, "value": [1.0, v]} for k, v in {**GOOD, **changed}.items()]
)
_answer = st.one_of(
    _near_good,
    st.lists(_series, max_size=12),
    st.dictionaries(st.sampled_from(PART_NAMES), _numbers, max_size=14).map(
        lambda parts: [{"metric": {"eo_part": k}, "value": [1.0, v]} for k, v in parts.items()]
    ),
    st.sampled_from([None, "x", 3, {"a": 1}, ["a", "b"], [[1, "1"]]]),
)
_meta_keys = st.one_of(st.sampled_from(sorted(KNOWN_KEYS)), st.text(max_size=12))
_meta_values = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ["0", "1", "-1", "2.5", "nan", "inf", "1e309", "advisory", "X-Scope-OrgID=a", "http://x"]
    ),
    st.integers(1, 6000).map(lambda n: "y" * n),
)


def _fresh_heartbeat(answer: Any) -> bool:
    """True when the drawn answer carries a heartbeat the service may trust (0 <= age <= 120 s)."""
    if not isinstance(answer, list):
        return False
    for series in answer:
        if isinstance(series, dict) and series.get("metric") == {"eo_part": "heartbeat_age"}:
            value = series.get("value")
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], str):
                try:
                    age = float(value[1])
                except ValueError:
                    return False
                return math.isfinite(age) and 0 <= age <= 120
    return False


def test_fuzzed_calls_answer_only_allowed_codes_and_stay_bounded(
    served: tuple[ScalerHandle, StubSource],
) -> None:
    handle, source = served
    channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}")
    stub = pb_grpc.ExternalScalerStub(channel)
    every = TriggerConfig(
        "n", "w", 1.0, latency_query="q", activation_query="q", ttft_slo_s=1.0, itl_slo_s=0.1
    )
    assert set(all_parts(every)) <= set(PART_NAMES)
    rss_before = _rss_bytes()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        overrides=st.dictionaries(_meta_keys, _meta_values, max_size=4),
        answer=_answer,
        demand=st.one_of(st.none(), st.sampled_from([0.0, 7.0, -1.0, math.nan, math.inf])),
        method=st.sampled_from(["GetMetrics", "IsActive", "GetMetricSpec"]),
    )
    def one_call(overrides: dict[str, str], answer: Any, demand: float | None, method: str) -> None:
        meta = {**META, **overrides}
        source.answer = answer
        source.custom = {"demand": demand}
        ref = pb.ScaledObjectRef(name="fuzz", namespace="inference", scalerMetadata=meta)
        try:
            if method == "GetMetrics":
                reply = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref), timeout=5)
                assert len(reply.metricValues) == 1
                value = reply.metricValues[0].metricValueFloat
                assert math.isfinite(value) and 0 <= value <= 100_000
                assert _fresh_heartbeat(answer), ("a number without a fresh heartbeat", answer, value)
            elif method == "IsActive":
                stub.IsActive(ref, timeout=5)
                assert _fresh_heartbeat(answer), ("an IsActive answer without a fresh heartbeat", answer)
            else:
                stub.GetMetricSpec(ref, timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() in ALLOWED, (exc.code(), exc.details(), meta, answer)
            assert len(exc.details() or "") <= 1000

    try:
        one_call()
    finally:
        channel.close()
    # The fuzzing reached both sides: numbers answered, and refusals.
    answered = sum(
        sample.value
        for family in handle.metrics.registry.collect()
        if family.name == "eo_scaler_decisions"
        for sample in family.samples
        if sample.name.endswith("_total")
    )
    assert answered > 10, answered
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{handle.metrics_port}/metrics", timeout=10).read()
    assert len(metrics) < 1_000_000
    # Generous bound (the fuzzing itself allocates): the scaler keeps nothing per distinct input.
    assert _rss_bytes() - rss_before < 100 * 1024 * 1024
