"""Latency from a real HTTP server serving vLLM's histogram exposition, and the sidecar driven by it; and
the same source against peers that trickle, hang, flood, redirect or serve NaN (each read bounded)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devices.simulated import SimulatedGpu
from powercap.latency import (
    METRICS_MAX_BODY_BYTES,
    LatencySourceError,
    MetricsEndpointSource,
    preset,
)
from powercap.sidecar import start_powercap
from tests.support.hostile_http import Behaviour, hostile_server
from tests.support.powercap import FakeClock, TextServer, settings, vllm_histogram

INF = math.inf
BOUNDS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, INF)


class Traffic:
    """Cumulative histogram counts of a vLLM server; ``finish`` adds requests of one latency."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(BOUNDS, 0.0)

    def finish(self, n: int, latency_s: float) -> str:
        for le in BOUNDS:
            if latency_s <= le:
                self.counts[le] += n
        return vllm_histogram(self.counts)


@pytest.fixture
def server() -> Iterator[TextServer]:
    s = TextServer()
    yield s
    s.stop()


def test_window_quantile_from_successive_scrapes(server: TextServer) -> None:
    traffic = Traffic()
    metric, scale = preset("vllm", "e2e")
    source = MetricsEndpointSource(server.url, metric, quantile=0.9, window_s=30.0, scale=scale)
    server.body = traffic.finish(1000, 0.2)  # history before the window
    assert source.read(0.0).latency_s is None, "one scrape has no window yet"
    server.body = traffic.finish(100, 0.4)
    sample = source.read(10.0)
    assert sample.latency_s is not None and 0.3 < sample.latency_s <= 0.5
    assert sample.load_rps == pytest.approx(10.0)
    server.body = traffic.finish(100, 1.8)
    server.body = traffic.finish(0, 0.0)
    sample = source.read(40.0)  # the window now covers only the slow requests
    assert sample.latency_s is not None and 1.5 < sample.latency_s <= 2.0


def test_label_filter_and_errors(server: TextServer) -> None:
    source = MetricsEndpointSource(
        server.url, "vllm:e2e_request_latency_seconds", 0.5, 30.0, labels={"model_name": "other"}
    )
    server.body = vllm_histogram({1.0: 1.0, INF: 1.0})
    with pytest.raises(LatencySourceError, match="no vllm:e2e_request_latency_seconds_bucket series"):
        source.read(0.0)
    server.status = 500
    with pytest.raises(LatencySourceError, match="500"):
        MetricsEndpointSource(server.url, "vllm:e2e_request_latency_seconds", 0.5, 30.0).read(0.0)


def test_unreachable_server_is_a_source_error() -> None:
    dead = TextServer()
    url = dead.url
    dead.stop()
    with pytest.raises(LatencySourceError, match="scraping"):
        MetricsEndpointSource(url, "x", 0.5, 30.0, timeout_s=0.5).read(0.0)


def test_sidecar_lowers_then_raises_on_real_scraped_latency(server: TextServer, tmp_path: Path) -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(0, clock=clock)
    traffic = Traffic()
    server.body = traffic.finish(0, 0.0)
    source = MetricsEndpointSource(server.url, "vllm:e2e_request_latency_seconds", 0.95, 20.0)
    h = start_powercap(settings(tmp_path, latency_target_s=2.0), [gpu], source, clock=clock, run_loop=False)
    try:
        for _ in range(6):
            clock.advance(5.0)
            server.body = traffic.finish(50, 0.4)
            h.sidecar.tick()
        assert gpu.power_limit_mw() < 700_000
        clock.advance(5.0)
        server.body = traffic.finish(50, 4.0)  # p95 far over 2 s
        h.sidecar.tick()
        assert gpu.power_limit_mw() == 700_000
        assert h.sidecar.metrics.registry.get_sample_value("eo_powercap_latency_seconds") > 2.0
    finally:
        h.stop()
    assert gpu.power_limit_mw() == 700_000


def finishes_within(limit_s: float, fn: Callable[[], object]) -> BaseException | object:
    """``fn()``'s result or exception; AssertionError if it takes longer than ``limit_s`` (a read with
    no deadline would otherwise hang the test instead of failing it)."""
    out: list[BaseException | object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert out, f"the read did not end within {limit_s:g}s"
    return out[0]


@pytest.mark.parametrize("mode", ["trickle", "hang"])
def test_a_trickling_or_hanging_server_is_cut_off_at_the_total_deadline(mode: str) -> None:
    with hostile_server(Behaviour(mode=mode, trickle_interval_s=0.2)) as (url, _):
        source = MetricsEndpointSource(url + "/metrics", "x", 0.5, 30.0, timeout_s=0.5)
        started = time.monotonic()
        outcome = finishes_within(5.0, lambda: source.read(0.0))
        took = time.monotonic() - started
    assert isinstance(outcome, LatencySourceError)
    assert took < 0.5 + 1.0


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (Behaviour(mode="huge", huge_bytes=20 * 1024 * 1024), "larger than"),
        (Behaviour(mode="gzip_bomb", bomb_bytes=64 * 1024 * 1024), "larger than"),
        (Behaviour(body=b"x" * (METRICS_MAX_BODY_BYTES + 1)), "larger than"),
    ],
)
def test_bodies_over_the_cap_are_errors(behaviour: Behaviour, message: str) -> None:
    with hostile_server(behaviour) as (url, _):
        source = MetricsEndpointSource(url + "/metrics", "x", 0.5, 30.0, timeout_s=5.0)
        with pytest.raises(LatencySourceError, match=message):
            source.read(0.0)


def test_a_redirect_is_not_followed() -> None:
    with hostile_server() as (elsewhere, target):
        redirect = Behaviour(mode="redirect", location=elsewhere + "/metrics")
        with hostile_server(redirect) as (url, _), pytest.raises(LatencySourceError, match="HTTP 302"):
            MetricsEndpointSource(url + "/metrics", "x", 0.5, 30.0).read(0.0)
    assert target.requests == []


def test_a_nan_bucket_is_an_error_and_never_enters_the_window(server: TextServer) -> None:
    traffic = Traffic()
    source = MetricsEndpointSource(server.url, "vllm:e2e_request_latency_seconds", 0.9, 30.0)
    server.body = traffic.finish(100, 0.4)
    source.read(0.0)
    server.body = traffic.finish(100, 0.4).replace(
        'le="1.0",model_name="llama"} 200.0', 'le="1.0",model_name="llama"} NaN'
    )
    with pytest.raises(LatencySourceError, match="no usable count"):
        source.read(5.0)
    server.body = traffic.finish(100, 0.4)
    sample = source.read(10.0)
    assert sample.latency_s is not None and 0.3 < sample.latency_s <= 0.5


def test_frozen_counters_give_no_latency_once_the_window_holds_no_request(server: TextServer) -> None:
    traffic = Traffic()
    source = MetricsEndpointSource(server.url, "vllm:e2e_request_latency_seconds", 0.9, 10.0)
    server.body = traffic.finish(100, 0.4)
    source.read(0.0)
    server.body = traffic.finish(100, 0.4)
    assert source.read(5.0).latency_s is not None
    # The server re-publishes the same counts from now on.
    assert source.read(20.0).latency_s is None
    assert source.read(25.0).load_rps == 0.0
