"""The new mirrored signals end to end: real vLLM- and SGLang-format HTTP servers on 127.0.0.1 read by
the pod sampler, the ITL histogram and the queue and saturation gauges read back from the collector."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.inference import SimulatedVllmServer
from tests.support.pods import RIG_G0 as G0
from tests.support.pods import RIG_G1 as G1
from tests.support.pods import SGLANG, VLLM, PodRig, ServerNames, pod_rig, set_value

SIGNALS = ("eo_pod_requests_waiting", "eo_pod_requests_running", "eo_pod_kv_cache_usage_ratio")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[PodRig]:
    with pod_rig(tmp_path) as r:
        yield r


def gauges(rig: PodRig, pod: str) -> tuple[float | None, ...]:
    return tuple(rig.value(name, pod) for name in SIGNALS)


@pytest.mark.parametrize("names", [VLLM, SGLANG], ids=["vllm", "sglang"])
def test_itl_and_queue_gauges_are_mirrored(rig: PodRig, names: ServerNames) -> None:
    rig.add_pod("a", [G0], names=names)
    rig.sample()
    server = rig.servers["a"]
    server.finish(6, itl_s=0.02)
    server.finish(4, itl_s=0.08)
    server.set_load(waiting=7, running=32, kv_cache_usage=0.875)
    rig.sample()
    assert rig.value("eo_pod_inter_token_latency_seconds_bucket", "a", le="0.025") == 6
    assert rig.value("eo_pod_inter_token_latency_seconds_bucket", "a", le="0.1") == 10
    assert rig.value("eo_pod_inter_token_latency_seconds_count", "a") == 10
    assert rig.value("eo_pod_inter_token_latency_seconds_sum", "a") == pytest.approx(6 * 0.02 + 4 * 0.08)
    assert gauges(rig, "a") == (7, 32, 0.875)
    assert rig.value("eo_pod_requests_total", "a") == 10


def test_itl_survives_a_server_restart(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    rig.servers["a"].finish(5)
    rig.sample()
    rig.servers["a"].restart()
    rig.servers["a"].finish(2)
    rig.sample()
    assert rig.value("eo_pod_inter_token_latency_seconds_count", "a") == 7


def test_a_nan_gauge_is_omitted_and_the_others_stay(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    server = rig.servers["a"]
    server.set_load(waiting=3, running=5, kv_cache_usage=0.5)
    server.transform = lambda text: set_value(text, b"vllm:kv_cache_usage_perc{", b"NaN")
    rig.sample()
    assert gauges(rig, "a") == (3, 5, None)
    assert rig.value("eo_pod_metrics_up", "a") == 1
    server.transform = None
    rig.sample()
    assert gauges(rig, "a") == (3, 5, 0.5)


def test_gauges_are_omitted_while_the_server_cannot_be_read(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    rig.add_pod("b", [G1])
    for name in ("a", "b"):
        rig.servers[name].set_load(waiting=1, running=2, kv_cache_usage=0.25)
        rig.servers[name].finish(3)
    rig.sample()
    rig.servers["a"].delay_s = 1.0  # slower than the 0.3 s deadline
    rig.sample()
    assert gauges(rig, "a") == (None, None, None)
    assert rig.value("eo_pod_inter_token_latency_seconds_count", "a") is None
    assert rig.value("eo_pod_metrics_up", "a") == 0
    assert gauges(rig, "b") == (1, 2, 0.25)  # the other pod is untouched


def test_an_older_vllm_is_read_under_its_older_names(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    server = rig.servers["a"]
    server.finish(4, itl_s=0.02)
    server.set_load(waiting=2, running=3, kv_cache_usage=0.75)
    renamed = {
        b"vllm:inter_token_latency_seconds": b"vllm:time_per_output_token_seconds",
        b"vllm:kv_cache_usage_perc": b"vllm:gpu_cache_usage_perc",
    }

    def older(text: bytes) -> bytes:
        for new, old in renamed.items():
            text = text.replace(new, old)
        return text

    server.transform = older
    rig.sample()
    assert rig.value("eo_pod_inter_token_latency_seconds_count", "a") == 4
    assert gauges(rig, "a") == (2, 3, 0.75)


def test_annotations_name_the_gauges(rig: PodRig) -> None:
    rig.add_pod(
        "a",
        [G0],
        annotations={
            "energy-orchestrator.io/waiting-metric": "vllm:num_requests_running",
            "energy-orchestrator.io/itl-histogram": "vllm:time_to_first_token_seconds",
        },
    )
    rig.servers["a"].finish(3, latency_s=0.8)  # TTFT 0.08 s
    rig.servers["a"].set_load(waiting=1, running=9, kv_cache_usage=0.1)
    rig.sample()
    assert rig.value("eo_pod_requests_waiting", "a") == 9
    assert rig.value("eo_pod_inter_token_latency_seconds_bucket", "a", le="0.1") == 3


def test_the_demo_server_feeds_the_new_signals(rig: PodRig) -> None:
    # make demo's simulated vLLM endpoint (the demo under test, not a harness), read as a real pod.
    server = SimulatedVllmServer("m")
    try:
        rig.add_pod("d", [G0], port=server.port)
        server.record(prompt_tokens=100, output_tokens=11, ttft_s=0.2, e2e_s=1.2)  # ITL 0.1 s
        server.set_running(12, waiting=3, kv_cache_usage=0.4)
        rig.sample()
        assert rig.value("eo_pod_inter_token_latency_seconds_bucket", "d", le="0.1") == 1
        assert rig.value("eo_pod_inter_token_latency_seconds_bucket", "d", le="0.075") == 0
        assert rig.value("eo_pod_request_time_per_output_token_seconds_bucket", "d", le="0.1") == 1
        assert rig.value("eo_pod_request_time_per_output_token_seconds_bucket", "d", le="0.075") == 0
        assert gauges(rig, "d") == (3, 12, 0.4)
    finally:
        server.stop()


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "servers"


@pytest.mark.parametrize("names", [VLLM, SGLANG], ids=["vllm", "sglang"])
def test_each_requests_mean_itl_is_mirrored_apart_from_the_token_histogram(
    rig: PodRig, names: ServerNames
) -> None:
    rig.add_pod("a", [G0], names=names)
    server = rig.servers["a"]
    server.finish(6, itl_s=0.02, request_itl_s=0.02)
    server.finish(4, itl_s=0.02, request_itl_s=0.08)  # few tokens beside a long prefill
    rig.sample()
    assert rig.value("eo_pod_inter_token_latency_seconds_bucket", "a", le="0.025") == 10
    assert rig.value("eo_pod_request_time_per_output_token_seconds_bucket", "a", le="0.025") == 6
    assert rig.value("eo_pod_request_time_per_output_token_seconds_bucket", "a", le="0.1") == 10
    assert rig.value("eo_pod_request_time_per_output_token_seconds_sum", "a") == pytest.approx(
        6 * 0.02 + 4 * 0.08
    )
    server.restart()  # the mirror stays monotonic across a restart of the server
    server.finish(2, request_itl_s=0.02)
    rig.sample()
    assert rig.value("eo_pod_request_time_per_output_token_seconds_count", "a") == 12


def test_an_older_server_without_the_per_request_histogram_has_no_mirror_of_it(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    server = rig.servers["a"]
    server.finish(3)
    # vLLM before the per-request histogram: the page lacks it, the other mirrors stay.
    server.transform = lambda text: b"\n".join(
        line for line in text.split(b"\n") if b"request_time_per_output_token" not in line
    )
    rig.sample()
    assert rig.value("eo_pod_request_time_per_output_token_seconds_count", "a") is None
    assert rig.value("eo_pod_inter_token_latency_seconds_count", "a") == 3


def test_a_vllm_page_with_both_itl_histograms(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    rig.servers["a"].body_override = (FIXTURES / "vllm_0_11_metrics.txt").read_bytes()
    rig.sample()
    token = "eo_pod_inter_token_latency_seconds"
    request = "eo_pod_request_time_per_output_token_seconds"
    assert rig.value(f"{token}_bucket", "a", le="0.025") == 994 and rig.value(f"{token}_count", "a") == 1000
    # Per request: 7 of 10 within 25 ms, where 99.4% of the tokens were.
    assert rig.value(f"{request}_bucket", "a", le="0.025") == 7
    assert rig.value(f"{request}_bucket", "a", le="0.075") == 10
    assert rig.value(f"{request}_count", "a") == 10
    assert rig.value(f"{request}_sum", "a") == pytest.approx(0.32)
    assert rig.value("eo_pod_requests_total", "a") == 10
