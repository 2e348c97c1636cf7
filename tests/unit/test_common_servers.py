"""The inference-server registry (common.servers): names per server, older names, units, and that both
readers (the exporter's pod profiles and the sidecar's presets) take their names from it."""

from __future__ import annotations

import dataclasses

import pytest

from common import servers
from common.servers import Histogram, Metric
from exporter.pods import appmetrics
from powercap import latency


@pytest.mark.parametrize(
    ("server", "kind", "expected"),
    [
        ("vllm", "e2e", Histogram("vllm:e2e_request_latency_seconds")),
        ("vllm", "ttft", Histogram("vllm:time_to_first_token_seconds")),
        (
            "vllm",
            "itl",
            Histogram("vllm:inter_token_latency_seconds", older=("vllm:time_per_output_token_seconds",)),
        ),
        ("sglang", "e2e", Histogram("sglang:e2e_request_latency_seconds")),
        ("sglang", "ttft", Histogram("sglang:time_to_first_token_seconds")),
        (
            "sglang",
            "itl",
            Histogram("sglang:inter_token_latency_seconds", older=("sglang:time_per_output_token_seconds",)),
        ),
        ("tgi", "e2e", Histogram("tgi_request_duration")),
        ("tgi", "ttft", None),
        ("tgi", "itl", Histogram("tgi_request_mean_time_per_token_duration")),
        ("triton", "e2e", None),
        ("triton", "ttft", Histogram("nv_inference_first_response_histogram_ms", to_seconds=0.001)),
        ("triton", "itl", None),
    ],
)
def test_latency_histograms_per_server(server: str, kind: str, expected: Histogram | None) -> None:
    assert servers.latency_histogram(server, kind) == expected


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        # One observation per finished request: its mean time per output token. No older names: the
        # older vLLM and SGLang time_per_output_token histograms counted tokens (or, in SGLang, the
        # end-to-end latency over the tokens), not a request's mean ITL.
        ("vllm", Histogram("vllm:request_time_per_output_token_seconds")),
        ("sglang", Histogram("sglang:request_time_per_output_token_seconds")),
        ("tgi", Histogram("tgi_request_mean_time_per_token_duration")),
        ("triton", None),
    ],
)
def test_per_request_itl_histogram_per_server(server: str, expected: Histogram | None) -> None:
    assert servers.server(server).request_itl == expected


@pytest.mark.parametrize(
    ("server", "waiting", "running", "kv"),
    [
        (
            "vllm",
            Metric("vllm:num_requests_waiting"),
            Metric("vllm:num_requests_running"),
            Metric("vllm:kv_cache_usage_perc", older=("vllm:gpu_cache_usage_perc",)),
        ),
        (
            "sglang",
            Metric("sglang:num_queue_reqs"),
            Metric("sglang:num_running_reqs"),
            Metric("sglang:token_usage"),
        ),
        ("tgi", Metric("tgi_queue_size"), Metric("tgi_batch_current_size"), None),
        (
            "triton",
            Metric("nv_inference_pending_request_count"),
            Metric("nv_trt_llm_request_metrics", (("request_type", "active"),)),
            Metric("nv_trt_llm_kv_cache_block_metrics", (("kv_cache_block_type", "fraction"),)),
        ),
    ],
)
def test_queue_and_saturation_gauges_per_server(
    server: str, waiting: Metric, running: Metric, kv: Metric | None
) -> None:
    entry = servers.server(server)
    assert (entry.requests_waiting, entry.requests_running, entry.kv_cache_usage) == (waiting, running, kv)


def test_older_names_come_after_the_newest() -> None:
    itl = servers.server("vllm").itl
    kv = servers.server("vllm").kv_cache_usage
    assert itl is not None and itl.names == (
        "vllm:inter_token_latency_seconds",
        "vllm:time_per_output_token_seconds",
    )
    assert kv is not None and kv.names == ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


def test_counters_ports_and_signatures() -> None:
    assert servers.SERVER_NAMES == ("vllm", "tgi", "triton", "sglang")
    sglang = servers.server("sglang")
    assert (sglang.requests, sglang.prompt_tokens, sglang.generation_tokens) == (
        Metric("sglang:num_requests_total"),
        Metric("sglang:prompt_tokens_total"),
        Metric("sglang:generation_tokens_total"),
    )
    assert {name: s.metrics_port for name, s in servers.SERVERS.items()} == {
        "vllm": 8000,
        "tgi": 80,
        "triton": 8002,
        "sglang": 30000,
    }
    assert dict(servers.SIGNATURES) == {
        "vllm:": "vllm",
        "tgi_": "tgi",
        "nv_inference_": "triton",
        "sglang:": "sglang",
    }


def test_unknown_server_or_kind_is_a_value_error_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'ollama' is not one of vllm\|tgi\|triton\|sglang"):
        servers.server("ollama")
    with pytest.raises(ValueError, match=r"'tpot' is not one of e2e\|ttft\|itl"):
        servers.latency_histogram("vllm", "tpot")


def test_the_registry_cannot_be_changed_by_a_reader() -> None:
    with pytest.raises(TypeError):
        servers.SERVERS["custom"] = servers.SERVERS["vllm"]  # type: ignore[index]


def test_the_exporter_profiles_are_built_from_the_registry() -> None:
    assert set(appmetrics.SERVERS) == set(servers.SERVERS)
    for name, entry in servers.SERVERS.items():
        profile = appmetrics.SERVERS[name]
        signals = profile.server
        assert (profile.port, signals.e2e_latency, signals.ttft, signals.itl) == (
            entry.metrics_port,
            entry.e2e_latency,
            entry.ttft,
            entry.itl,
        )
        for selector, metric in (
            (signals.requests, entry.requests),
            (signals.requests_waiting, entry.requests_waiting),
            (signals.requests_running, entry.requests_running),
            (signals.kv_cache_usage, entry.kv_cache_usage),
        ):
            got = None if selector is None else (selector.name, selector.labels, selector.older)
            assert got == (None if metric is None else (metric.name, metric.labels, metric.older))
    assert appmetrics.SIGNATURES == servers.SIGNATURES


def test_the_sidecar_presets_read_the_registry_and_now_know_sglang() -> None:
    assert latency.SERVERS == servers.SERVER_NAMES
    assert latency.preset("vllm", "itl") == ("vllm:inter_token_latency_seconds", 1.0)
    assert latency.preset("sglang", "ttft") == ("sglang:time_to_first_token_seconds", 1.0)
    assert latency.preset("triton", "ttft") == ("nv_inference_first_response_histogram_ms", 0.001)
    message = (
        "no default histogram for server 'triton' and latency kind 'e2e'; "
        "name one with --latency-metric (and --latency-scale for non-second units)"
    )
    with pytest.raises(ValueError) as err:
        latency.preset("triton", "e2e")
    assert str(err.value) == message
    with pytest.raises(ValueError, match="no default histogram for server 'ollama'"):
        latency.preset("ollama", "e2e")


def test_the_signal_kinds_name_every_signal_of_a_server_once() -> None:
    signal_fields = {
        f.name
        for f in dataclasses.fields(servers.InferenceServer)
        if f.name not in ("name", "metrics_port", "signature")
    }
    assert sorted(servers.SIGNALS) == sorted(signal_fields)
    assert len(set(servers.SIGNALS)) == len(servers.SIGNALS)
    for entry in servers.SERVERS.values():
        assert all(isinstance(getattr(entry, name), Histogram | None) for name in servers.HISTOGRAMS)
        assert all(
            isinstance(getattr(entry, name), Metric | None) for name in servers.COUNTERS + servers.GAUGES
        )


def test_a_metric_asks_for_its_label_values_only() -> None:
    metric = Metric("m", (("request_type", "active"),))
    assert metric.has_labels({"request_type": "active", "model": "x"})
    assert not metric.has_labels({"request_type": "done"})
    assert not metric.has_labels({})
    assert Metric("m").has_labels({"anything": "goes"})
