"""The Prometheus latency source against a real Prometheus scraping a vLLM-format server, and against
peers that answer odd shapes, trickle, hang, flood or redirect."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from powercap.latency import LatencySourceError, PrometheusSource
from tests.support.fixtures import StartPrometheus
from tests.support.hostile_http import Behaviour, hostile_server
from tests.support.powercap import TextServer, vllm_histogram


def test_quantile_and_load_from_promql(start_prometheus: StartPrometheus) -> None:
    served = {"n": 0.0}

    def body() -> str:
        # Every scrape, 10 more requests finished: 8 under 0.5 s, 2 in (1, 2].
        served["n"] += 10.0
        n = served["n"]
        return vllm_histogram({0.5: 0.8 * n, 1.0: 0.8 * n, 2.0: n, math.inf: n})

    vllm = TextServer(body_fn=body)
    prom = start_prometheus(targets=[f"127.0.0.1:{vllm.port}"], scrape_interval_s=0.5)
    try:
        with prom:
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


def answer(result_type: str, result: object) -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": result_type, "result": result}}).encode()


ONE_SERIES = answer("vector", [{"metric": {}, "value": [1.0, "0.75"]}])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (answer("scalar", [1.0, "0.75"]), 0.75),
        (ONE_SERIES, 0.75),
        (answer("vector", [{"metric": {}, "value": [1.0, "NaN"]}]), None),
        (answer("vector", [{"metric": {}, "value": [1.0, "+Inf"]}]), None),
        (answer("vector", []), "no series"),
        (
            answer("vector", [{"metric": {}, "value": [1, "1"]}, {"metric": {}, "value": [1, "2"]}]),
            "2 series",
        ),
        (answer("string", [1.0, "0.75"]), "string result"),
        (answer("matrix", [{"metric": {}, "values": [[1.0, "0.75"]]}]), "matrix result"),
        (answer("vector", ["0.75"]), "unexpected shape"),
        (answer("vector", [{"metric": ["a"], "value": [1.0, "0.75"]}]), "unexpected shape"),
        (answer("vector", [{"metric": {}, "value": [1.0, 0.75]}]), "unexpected shape"),
        (answer("vector", [{"metric": {}, "value": [1.0, "fast"]}]), "not a number"),
        (answer("scalar", "0.75"), "unexpected shape"),
        (b'{"status": "success", "data": {"resultType": "vector"}}', "unknown result type"),
        (b"<html>not prometheus</html>", "no JSON"),
    ],
)
def test_answer_shapes(body: bytes, expected: float | str | None) -> None:
    peer = Behaviour(body=body, content_type="application/json")
    with hostile_server(peer) as (url, _):
        source = PrometheusSource(url, "q")
        if isinstance(expected, str):
            with pytest.raises(LatencySourceError, match=expected):
                source.read(0.0)
        else:
            assert source.read(0.0).latency_s == expected


@pytest.mark.parametrize("mode", ["trickle", "hang"])
def test_one_deadline_covers_both_queries(mode: str) -> None:
    with hostile_server(Behaviour(mode=mode, trickle_interval_s=0.2)) as (url, _):
        source = PrometheusSource(url, "latency", "load", timeout_s=0.6)
        started = time.monotonic()
        with pytest.raises(LatencySourceError, match="in time"):
            source.read(0.0)
    assert time.monotonic() - started < 0.6 + 1.0


def test_a_huge_or_compressed_bomb_answer_is_an_error() -> None:
    for peer in (
        Behaviour(mode="huge", huge_bytes=4 * 1024 * 1024),
        Behaviour(mode="gzip_bomb", bomb_bytes=32 * 1024 * 1024),
    ):
        with hostile_server(peer) as (url, _), pytest.raises(LatencySourceError, match="larger than"):
            PrometheusSource(url, "q", timeout_s=5).read(0.0)


def test_redirects_are_not_followed_and_bodies_never_echoed() -> None:
    with hostile_server(Behaviour(body=ONE_SERIES, content_type="application/json")) as (elsewhere, target):
        redirect = Behaviour(mode="redirect", location=elsewhere)
        with hostile_server(redirect) as (url, _), pytest.raises(LatencySourceError, match="HTTP 302"):
            PrometheusSource(url, "q").read(0.0)
    assert target.requests == []
    page = Behaviour(mode="status", status=502, body=b"SECRET internal page")
    with hostile_server(page) as (url, _), pytest.raises(LatencySourceError) as exc:
        PrometheusSource(url, "q").read(0.0)
    assert "SECRET" not in str(exc.value) and "HTTP 502" in str(exc.value)


def test_the_bearer_token_is_read_on_every_query(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    peer = Behaviour(body=ONE_SERIES, content_type="application/json")
    with hostile_server(peer) as (url, seen):
        source = PrometheusSource(url, "q", bearer_token_file=token)
        source.read(0.0)
        token.write_text("rotated\n")
        source.read(5.0)
    assert [h.get("Authorization") for h in seen.headers_seen] == ["Bearer first", "Bearer rotated"]
    token.unlink()
    with hostile_server(peer) as (url, _), pytest.raises(LatencySourceError, match="credentials"):
        PrometheusSource(url, "q", bearer_token_file=token).read(0.0)
