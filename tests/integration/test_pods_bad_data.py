"""Mirrored counters against a real vLLM-format server that sends ordinary bad data (NaN buckets, one
NaN series of a sum, duplicated lines) and against pods that cannot be read: the mirrors stay
honest and recover, and what is not read now is omitted, never re-published frozen."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pods import RIG_G0 as G0
from tests.support.pods import RIG_G1 as G1
from tests.support.pods import PodRig, duplicate_lines, pod_rig, set_value

STOP = b'vllm:request_success_total{finished_reason="stop"'
LENGTH = b'vllm:request_success_total{finished_reason="length"'
BUCKET_1S = b'vllm:e2e_request_latency_seconds_bucket{le="1.0"'


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[PodRig]:
    with pod_rig(tmp_path) as r:
        yield r


def latency(rig: PodRig, pod: str) -> list[float | None]:
    bounds = ("0.5", "1.0", "2.5", "+Inf")
    values = [rig.value("eo_pod_request_latency_seconds_bucket", pod, le=le) for le in bounds]
    return [*values, rig.value("eo_pod_request_latency_seconds_count", pod)]


def test_nan_bucket_is_missing_and_the_histogram_recovers(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    server = rig.servers["a"]
    server.finish(10, latency_s=0.8)
    rig.sample()
    assert latency(rig, "a") == [0, 10, 10, 10, 10]
    server.transform = lambda text: set_value(text, BUCKET_1S, b"NaN")
    for _ in range(3):
        server.finish(10, latency_s=0.8)
        rig.sample()
        # This read has no usable histogram: omitted, never NaN, never the frozen value.
        assert latency(rig, "a") == [None] * 5
        assert rig.value("eo_pod_metrics_up", "a") == 1
        assert rig.value("eo_pod_requests_total", "a") is not None
    server.transform = None
    server.finish(5, latency_s=2.0)
    rig.sample()
    assert latency(rig, "a") == [0, 40, 45, 45, 45]  # everything that happened meanwhile is there
    assert not any(math.isnan(v or 0) for v in latency(rig, "a"))


def test_one_nan_series_of_a_sum_adds_no_phantom_requests(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    server = rig.servers["a"]
    server.finish(50, reason="stop")
    server.finish(50, reason="length")
    rig.sample()
    assert rig.value("eo_pod_requests_total", "a") == 100
    server.transform = lambda text: set_value(text, LENGTH, b"NaN")
    server.finish(10, reason="stop")
    server.finish(5, reason="length")
    rig.sample()
    assert rig.value("eo_pod_requests_total", "a") == 110  # the NaN series adds nothing for now
    server.transform = None
    server.finish(10, reason="stop")
    rig.sample()
    assert rig.value("eo_pod_requests_total", "a") == 125  # 70 + 55: what the server counts


def test_duplicated_series_line_counts_once(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    server = rig.servers["a"]
    server.finish(700)
    rig.sample()
    server.transform = lambda text: duplicate_lines(text, STOP)
    server.finish(2)
    rig.sample()
    assert rig.value("eo_pod_requests_total", "a") == 702
    server.transform = None
    server.finish(3)
    rig.sample()
    assert rig.value("eo_pod_requests_total", "a") == 705


def test_one_series_reset_is_not_a_reset_of_the_others(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    server = rig.servers["a"]
    server.finish(40, reason="stop")
    server.finish(30, reason="length")
    rig.sample()
    # The stop series starts over (e.g. a worker process restarted) while length keeps counting.
    server.transform = lambda text: set_value(text, STOP, b"2.0")
    server.finish(4, reason="length")
    rig.sample()
    assert rig.value("eo_pod_requests_total", "a") == 70 + 2 + 4


def test_unread_pod_has_no_mirrored_series_but_keeps_energy_and_info(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    rig.add_pod("b", [G1])
    for name in ("a", "b"):
        rig.servers[name].finish(8, prompt=80, generation=160, latency_s=0.8)
    rig.sample()
    rig.servers["b"].delay_s = 1.0  # misses the 0.3 s deadline from now on
    for _ in range(3):
        rig.energy[G1] += 100.0
        rig.servers["b"].finish(8)
        rig.sample()
        assert rig.value("eo_pod_metrics_up", "b") == 0
        for metric, labels in (
            ("eo_pod_requests_total", {}),
            ("eo_pod_tokens_total", {"kind": "prompt"}),
            ("eo_pod_tokens_total", {"kind": "generation"}),
            ("eo_pod_request_latency_seconds_count", {}),
            ("eo_pod_time_to_first_token_seconds_count", {}),
            ("eo_pod_joules_per_request", {}),
        ):
            assert rig.value(metric, "b", **labels) is None, metric
        assert rig.value("eo_pod_metrics_up", "a") == 1
        assert rig.value("eo_pod_requests_total", "a") == 8
    assert rig.value("eo_pod_energy_joules_total", "b", source="gpu") == 300.0
    info = {"uuid": G1, "container": "server", "sharing": "exclusive"}
    assert rig.value("eo_gpu_pod_info", "b", **info) == 1
    rig.servers["b"].delay_s = 0.0
    rig.sample()
    assert rig.value("eo_pod_metrics_up", "b") == 1
    assert rig.value("eo_pod_requests_total", "b") == 32  # continues where the server is


def test_pod_that_no_longer_holds_a_gpu_publishes_no_up_gauge(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    rig.servers["a"].finish(3)
    rig.sample()
    rig.remove_pod("a")
    rig.sample()
    assert rig.value("eo_pod_metrics_up", "a") is None  # gone, not "unreadable"
    assert rig.value("eo_pod_requests_total", "a") is None
    assert rig.value("eo_pod_energy_joules_total", "a", source="gpu") == 0.0  # kept for the grace
