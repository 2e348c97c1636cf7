"""The Prometheus latency source against a real Prometheus scraping a vLLM-format server."""

from __future__ import annotations

import math

import pytest

from demo.prometheus import Prometheus
from scaler.powercap.latency import LatencySourceError, PrometheusSource
from tests.powercap_support import TextServer, vllm_histogram


def test_quantile_and_load_from_promql() -> None:
    served = {"n": 0.0}

    def body() -> str:
        # Every scrape, 10 more requests finished: 8 under 0.5 s, 2 in (1, 2].
        served["n"] += 10.0
        n = served["n"]
        return vllm_histogram({0.5: 0.8 * n, 1.0: 0.8 * n, 2.0: n, math.inf: n})

    vllm = TextServer(body_fn=body)
    prom = Prometheus(targets=[f"127.0.0.1:{vllm.port}"], scrape_interval_s=0.5)
    try:
        with prom.start():
            rate = "rate(vllm:e2e_request_latency_seconds_bucket[3s])"
            latency_q = f"histogram_quantile(0.9, sum by (le) ({rate}))"
            load_q = "sum(rate(vllm:e2e_request_latency_seconds_count[3s]))"
            prom.wait_for(f"{latency_q} > 0", timeout_s=30)
            source = PrometheusSource(prom.url, latency_q, load_q, timeout_s=5)
            sample = source.read(0.0)
            assert sample.latency_s == pytest.approx(1.5, abs=0.01)
            assert sample.load_rps is not None and sample.load_rps > 0
            # NaN (no requests in the window) is "no data", an absent series is an error.
            assert PrometheusSource(prom.url, "vector(0) / 0").read(0.0).latency_s is None
            with pytest.raises(LatencySourceError, match="no series"):
                PrometheusSource(prom.url, "absent_metric_xyz").read(0.0)
            with pytest.raises(LatencySourceError, match="parse error"):
                PrometheusSource(prom.url, "histogram_quantile(").read(0.0)
    finally:
        vllm.stop()
