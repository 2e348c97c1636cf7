"""Where the sidecar reads latency and load: the local inference server's /metrics, or Prometheus.

Both are thin adapters returning a ``LatencySample``; a failure raises ``LatencySourceError`` (the
sidecar counts the age of its last good sample and restores the GPU once it is stale).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests
from prometheus_client.parser import text_string_to_metric_families

from scaler.powercap.histogram import SlidingWindow, snapshot_from_buckets

log = logging.getLogger(__name__)

# Histogram names per inference server and latency kind: (metric, factor from its unit to seconds).
PRESETS: dict[tuple[str, str], tuple[str, float]] = {
    ("vllm", "e2e"): ("vllm:e2e_request_latency_seconds", 1.0),
    ("vllm", "ttft"): ("vllm:time_to_first_token_seconds", 1.0),
    # vLLM >= 0.9 name; older servers call it vllm:time_per_output_token_seconds (--latency-metric).
    ("vllm", "itl"): ("vllm:inter_token_latency_seconds", 1.0),
    ("tgi", "e2e"): ("tgi_request_duration", 1.0),
    ("tgi", "itl"): ("tgi_request_mean_time_per_token_duration", 1.0),
    # Triton's request-duration metrics are counters; only its first-response histogram (ms) fits.
    ("triton", "ttft"): ("nv_inference_first_response_histogram_ms", 0.001),
}
SERVERS: tuple[str, ...] = ("vllm", "tgi", "triton")
LATENCY_KINDS: tuple[str, ...] = ("e2e", "ttft", "itl")


class LatencySourceError(Exception):
    """The source could not answer (unreachable, malformed, metric absent)."""


@dataclass(frozen=True)
class LatencySample:
    latency_s: float | None
    """The configured quantile over the window; None when no request finished in it."""
    load_rps: float | None
    """Requests finished per second over the window, when the source knows it."""


class LatencySource(Protocol):
    def read(self, now_s: float) -> LatencySample:
        """One reading at ``now_s`` (seconds on the sidecar's clock). Raises LatencySourceError."""
        ...


def preset(server: str, kind: str) -> tuple[str, float]:
    try:
        return PRESETS[(server, kind)]
    except KeyError:
        raise ValueError(
            f"no default histogram for server {server!r} and latency kind {kind!r}; "
            "name one with --latency-metric (and --latency-scale for non-second units)"
        ) from None


class MetricsEndpointSource:
    """Scrapes a Prometheus text endpoint and keeps a sliding window of one histogram's bucket deltas."""

    def __init__(
        self,
        url: str,
        metric: str,
        quantile: float,
        window_s: float,
        scale: float = 1.0,
        labels: Mapping[str, str] | None = None,
        timeout_s: float = 2.0,
        session: requests.Session | None = None,
    ) -> None:
        self._url = url
        self._metric = metric
        self._scale = scale
        self._labels = dict(labels or {})
        self._timeout_s = timeout_s
        self._session = session or requests.Session()
        self._window = SlidingWindow(window_s, quantile)

    def read(self, now_s: float) -> LatencySample:
        try:
            resp = self._session.get(self._url, timeout=self._timeout_s)
            resp.raise_for_status()
        except requests.RequestException as exc:
            raise LatencySourceError(f"scraping {self._url}: {exc}") from exc
        buckets = self._buckets(resp.text)
        self._window.add(snapshot_from_buckets(now_s, buckets, self._scale))
        stats = self._window.stats()
        return LatencySample(stats.quantile_s, stats.rate_rps)

    def _buckets(self, text: str) -> dict[float, float]:
        wanted = self._metric + "_bucket"
        summed: dict[float, float] = {}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name != wanted:
                        continue
                    if any(sample.labels.get(k) != v for k, v in self._labels.items()):
                        continue
                    le = float(sample.labels["le"])
                    # Summed by le over every matching series (e.g. several models on one server).
                    summed[le] = summed.get(le, 0.0) + sample.value
        except (ValueError, KeyError) as exc:
            raise LatencySourceError(f"malformed metrics from {self._url}: {exc}") from exc
        if not summed:
            raise LatencySourceError(f"{self._url} serves no {wanted} series matching {self._labels or '{}'}")
        if math.inf not in summed:
            raise LatencySourceError(f"{wanted} from {self._url} has no +Inf bucket")
        return summed


class PrometheusSource:
    """Evaluates a PromQL instant query for the latency (and optionally one for the load)."""

    def __init__(
        self,
        url: str,
        latency_query: str,
        load_query: str | None = None,
        timeout_s: float = 5.0,
        bearer_token_file: Path | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self._url = url.rstrip("/") + "/api/v1/query"
        self._latency_query = latency_query
        self._load_query = load_query
        self._timeout_s = timeout_s
        self._token_file = bearer_token_file
        self._session = session or requests.Session()

    def read(self, now_s: float) -> LatencySample:
        latency = self._scalar(self._latency_query)
        load = self._scalar(self._load_query) if self._load_query else None
        return LatencySample(latency, load)

    def _scalar(self, query: str) -> float | None:
        headers: dict[str, str] = {}
        if self._token_file is not None:
            # Read on every query: projected service-account tokens rotate.
            headers["Authorization"] = "Bearer " + self._token_file.read_text().strip()
        try:
            resp = self._session.get(
                self._url, params={"query": query}, headers=headers, timeout=self._timeout_s
            )
            # Prometheus explains a bad query in a JSON body with a 4xx status: keep its words.
            if not resp.headers.get("Content-Type", "").startswith("application/json"):
                resp.raise_for_status()
            body = resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise LatencySourceError(f"Prometheus query {query!r}: {exc}") from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", body) if isinstance(body, dict) else body
            raise LatencySourceError(f"Prometheus query {query!r}: {error}")
        data = body.get("data", {})
        result = data.get("result")
        if data.get("resultType") == "scalar":
            value = float(result[1])
        elif data.get("resultType") == "vector" and result:
            if len(result) > 1:
                raise LatencySourceError(
                    f"Prometheus query {query!r} returned {len(result)} series, need one"
                )
            value = float(result[0]["value"][1])
        else:
            raise LatencySourceError(f"Prometheus query {query!r} returned no series")
        # NaN is histogram_quantile's answer for a window without requests: no data, not an error.
        return value if math.isfinite(value) else None
