"""The leading signals the pod mirrors add: the ITL histogram, the queue and saturation gauges, older
server names read as fallbacks, units converted to seconds, and the annotations that override them."""

from __future__ import annotations

import math

import pytest

from exporter.pods.accounting import Accountant, Holding, PodKey, Tick
from exporter.pods.appmetrics import (
    MAX_SERIES_PER_METRIC,
    SERVERS,
    AppReading,
    HistogramReading,
    HistogramSeries,
    Sample,
    TooManySeries,
    extract,
    parse_annotations,
    wanted_sample_names,
)
from exporter.pods.devices import BoardShare, Sharing

ITL = "vllm:inter_token_latency_seconds"
OLD_ITL = "vllm:time_per_output_token_seconds"


def hist(name: str, buckets: dict[str, float], total_s: float, **labels: str) -> list[Sample]:
    out = [Sample(f"{name}_bucket", {**labels, "le": le}, v) for le, v in buckets.items()]
    count = buckets["+Inf"]
    return [*out, Sample(f"{name}_count", labels, count), Sample(f"{name}_sum", labels, total_s)]


def gauge(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, labels, value)


# -- ITL ------------------------------------------------------------------------------------------------
def test_vllm_itl_is_read_under_its_current_name() -> None:
    reading = extract(hist(ITL, {"0.01": 90, "0.1": 99, "+Inf": 100}, 2.0, model_name="m"), SERVERS["vllm"])
    assert reading.itl is not None
    assert list(reading.itl.values()) == [
        HistogramReading(((0.01, 90), (0.1, 99), (math.inf, 100)), 2.0, 100)
    ]


def test_older_vllm_itl_name_is_the_fallback() -> None:
    reading = extract(hist(OLD_ITL, {"0.05": 7, "+Inf": 8}, 0.3), SERVERS["vllm"])
    assert reading.itl is not None and [h.count for h in reading.itl.values()] == [8]


def test_when_both_names_are_published_only_the_current_one_is_read() -> None:
    # vLLM 0.9+ still publishes the deprecated copy: summing both would count every token twice.
    samples = [*hist(ITL, {"0.05": 7, "+Inf": 8}, 0.3), *hist(OLD_ITL, {"0.05": 7, "+Inf": 8}, 0.3)]
    reading = extract(samples, SERVERS["vllm"])
    assert reading.itl is not None and [key[0] for key in reading.itl] == [ITL]


def test_a_nan_current_name_is_missing_not_replaced_by_the_older_one() -> None:
    samples = [*hist(ITL, {"0.05": math.nan, "+Inf": 8}, 0.3), *hist(OLD_ITL, {"0.05": 7, "+Inf": 8}, 0.3)]
    assert extract(samples, SERVERS["vllm"]).itl is None


def test_sglang_and_tgi_itl() -> None:
    sglang = hist("sglang:inter_token_latency_seconds", {"0.02": 40, "+Inf": 50}, 1.0, model_name="m")
    assert extract(sglang, SERVERS["sglang"]).itl is not None
    old_sglang = hist("sglang:time_per_output_token_seconds", {"0.02": 40, "+Inf": 50}, 1.0)
    assert extract(old_sglang, SERVERS["sglang"]).itl is not None
    tgi = hist("tgi_request_mean_time_per_token_duration", {"0.05": 3, "+Inf": 4}, 0.1)
    assert extract(tgi, SERVERS["tgi"]).itl is not None


def test_triton_first_response_histogram_is_converted_from_milliseconds() -> None:
    samples = hist(
        "nv_inference_first_response_histogram_ms", {"9": 1, "300": 5, "+Inf": 6}, 2500.0, model="a"
    )
    reading = extract(samples, SERVERS["triton"])
    assert reading.ttft is not None
    (got,) = reading.ttft.values()
    assert got == HistogramReading(((0.009, 1), (0.3, 5), (math.inf, 6)), 2.5, 6)


# -- gauges -------------------------------------------------------------------------------------------------
def test_vllm_queue_gauges_are_summed_and_kv_usage_is_the_highest() -> None:
    samples = [
        gauge("vllm:num_requests_waiting", 3, model_name="a", engine="0"),
        gauge("vllm:num_requests_waiting", 4, model_name="a", engine="1"),
        gauge("vllm:num_requests_running", 16, model_name="a", engine="0"),
        gauge("vllm:kv_cache_usage_perc", 0.5, model_name="a", engine="0"),
        gauge("vllm:kv_cache_usage_perc", 0.9, model_name="a", engine="1"),
    ]
    reading = extract(samples, SERVERS["vllm"])
    assert (reading.requests_waiting, reading.requests_running, reading.kv_cache_usage) == (7, 16, 0.9)


def test_older_vllm_kv_name_is_the_fallback() -> None:
    assert extract([gauge("vllm:gpu_cache_usage_perc", 0.25)], SERVERS["vllm"]).kv_cache_usage == 0.25
    both = [gauge("vllm:kv_cache_usage_perc", 0.5), gauge("vllm:gpu_cache_usage_perc", 0.25)]
    assert extract(both, SERVERS["vllm"]).kv_cache_usage == 0.5


def test_sglang_tgi_and_triton_gauges() -> None:
    sglang = [
        gauge("sglang:num_queue_reqs", 5, model_name="m"),
        gauge("sglang:num_running_reqs", 12, model_name="m"),
        gauge("sglang:token_usage", 0.28, model_name="m"),
    ]
    got = extract(sglang, SERVERS["sglang"])
    assert (got.requests_waiting, got.requests_running, got.kv_cache_usage) == (5, 12, 0.28)
    tgi = extract([gauge("tgi_queue_size", 2), gauge("tgi_batch_current_size", 8)], SERVERS["tgi"])
    assert (tgi.requests_waiting, tgi.requests_running, tgi.kv_cache_usage) == (2, 8, None)
    triton = [
        gauge("nv_inference_pending_request_count", 1, model="a", version="1"),
        gauge("nv_inference_pending_request_count", 2, model="b", version="1"),
        gauge("nv_trt_llm_request_metrics", 64, model="a", request_type="max"),
        gauge("nv_trt_llm_request_metrics", 6, model="a", request_type="active"),
        gauge("nv_trt_llm_kv_cache_block_metrics", 110, model="a", kv_cache_block_type="used"),
        gauge("nv_trt_llm_kv_cache_block_metrics", 0.55, model="a", kv_cache_block_type="fraction"),
    ]
    got = extract(triton, SERVERS["triton"])
    assert (got.requests_waiting, got.requests_running, got.kv_cache_usage) == (3, 6, 0.55)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0])
def test_a_gauge_with_an_unusable_series_is_missing_whole(bad: float) -> None:
    samples = [
        gauge("vllm:num_requests_waiting", 3, engine="0"),
        gauge("vllm:num_requests_waiting", bad, engine="1"),
        gauge("vllm:kv_cache_usage_perc", bad),
        gauge("vllm:num_requests_running", 4),
    ]
    reading = extract(samples, SERVERS["vllm"])
    # A queue of which one part is unknown is unknown, not 3.
    assert (reading.requests_waiting, reading.kv_cache_usage, reading.requests_running) == (None, None, 4)


def test_a_duplicated_gauge_line_counts_once() -> None:
    samples = [gauge("vllm:num_requests_waiting", 3, model_name="m")] * 2
    assert extract(samples, SERVERS["vllm"]).requests_waiting == 3


def test_absent_gauges_are_none() -> None:
    reading = extract([Sample("vllm:request_success_total", {}, 1)], SERVERS["vllm"])
    assert (reading.itl, reading.requests_waiting, reading.requests_running, reading.kv_cache_usage) == (
        None,
        None,
        None,
        None,
    )


def test_a_gauge_past_the_series_limit_refuses_the_read() -> None:
    samples = [gauge("vllm:num_requests_waiting", 1, lora=str(i)) for i in range(MAX_SERIES_PER_METRIC + 1)]
    with pytest.raises(TooManySeries):
        extract(samples, SERVERS["vllm"])


# -- annotations and the line filter's names ------------------------------------------------------------
def test_annotations_override_itl_and_the_gauges() -> None:
    config = parse_annotations(
        {
            "energy-orchestrator.io/server": "vllm",
            "energy-orchestrator.io/itl-histogram": "my_itl_seconds",
            "energy-orchestrator.io/waiting-metric": 'my_queue{pool="a"}',
            "energy-orchestrator.io/running-metric": "my_running",
            "energy-orchestrator.io/kv-cache-usage-metric": "my_kv_ratio",
        }
    )
    assert config.problems == ()
    profile = config.profile(None)
    assert profile is not None
    samples = [
        *hist("my_itl_seconds", {"0.1": 1, "+Inf": 2}, 0.3),
        *hist(ITL, {"0.1": 10, "+Inf": 20}, 3.0),  # the profile's own name is replaced, not added
        gauge("my_queue", 4, pool="a"),
        gauge("my_queue", 100, pool="b"),
        gauge("my_running", 9),
        gauge("my_kv_ratio", 0.75),
        gauge("vllm:num_requests_waiting", 50),
    ]
    reading = extract(samples, profile)
    assert reading.itl is not None and [h.count for h in reading.itl.values()] == [2]
    assert (reading.requests_waiting, reading.requests_running, reading.kv_cache_usage) == (4, 9, 0.75)
    names = wanted_sample_names(config)
    assert {"my_itl_seconds_bucket", "my_queue", "my_running", "my_kv_ratio"} <= names


def test_a_bad_gauge_annotation_is_reported_and_ignored() -> None:
    config = parse_annotations({"energy-orchestrator.io/waiting-metric": "queue{pool}"})
    assert config.requests_waiting is None
    assert len(config.problems) == 1 and "waiting-metric" in config.problems[0]


def test_wanted_names_include_every_signal_and_older_name() -> None:
    names = wanted_sample_names(parse_annotations({}))
    assert {
        f"{ITL}_bucket",
        f"{OLD_ITL}_count",
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "sglang:num_queue_reqs",
        "sglang:token_usage",
        "tgi_queue_size",
        "nv_trt_llm_kv_cache_block_metrics",
        "nv_inference_first_response_histogram_ms_bucket",
    } <= names


# -- accounting ------------------------------------------------------------------------------------------
G0 = "GPU-00000000-0000-4000-8000-000000000000"
A = PodKey("ml", "a")


def _tick(now: float, reading: AppReading | None, read: bool = True) -> Tick:
    holding = Holding(A, "server", BoardShare(G0, G0, Sharing.EXCLUSIVE, 1.0))
    return Tick(now, [holding], {G0: now}, {A: reading} if read else {}, {A: "wa"})


def _reading(count: float, waiting: float | None = 2.0) -> AppReading:
    itl: HistogramSeries = {(ITL, ()): HistogramReading(((0.1, count), (math.inf, count)), count / 10, count)}
    return AppReading(
        {("c", ()): count}, itl=itl, requests_waiting=waiting, requests_running=5.0, kv_cache_usage=0.5
    )


def test_itl_is_mirrored_across_a_server_restart_and_gauges_are_published_as_read() -> None:
    acc = Accountant()
    acc.step(_tick(0, _reading(100)))
    acc.step(_tick(5, _reading(3)))  # the server restarted: 3 since
    (view,) = acc.pods()
    assert view.itl is not None and view.itl.count == 103
    assert (view.requests_waiting, view.requests_running, view.kv_cache_usage) == (2.0, 5.0, 0.5)
    acc.step(_tick(10, _reading(4, waiting=None)))
    assert acc.pods()[0].requests_waiting is None  # missing in this read: omitted, not the last value


@pytest.mark.parametrize("read", [True, False], ids=["read-failed", "no-address"])
def test_gauges_and_itl_are_omitted_when_the_pod_is_not_read(read: bool) -> None:
    acc = Accountant()
    acc.step(_tick(0, _reading(10)))
    acc.step(_tick(5, None, read=read))
    (view,) = acc.pods()
    assert (view.itl, view.requests_waiting, view.requests_running, view.kv_cache_usage) == (None,) * 4
    assert view.app_up is False
    acc.step(_tick(10, _reading(12)))
    view = acc.pods()[0]
    assert view.itl is not None and view.itl.count == 12 and view.requests_waiting == 2.0
