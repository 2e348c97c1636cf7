"""Where the sidecar reads latency and load: the local inference server's /metrics, or Prometheus.

Both are thin adapters returning a ``LatencySample``; a failure raises ``LatencySourceError`` (the
sidecar counts the age of its last usable sample and restores the GPU once it is stale). Every read goes
through ``common.http.BoundedHttpClient``: one total deadline for the whole read (connect, headers, body,
and for Prometheus both queries), a cap on the decompressed body, no redirects. A peer that trickles,
hangs or floods costs the sidecar at most its deadline, never a stuck control loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families

from common import servers
from common.http import BoundedHttpClient, HttpError
from common.prometheus import NoValue, PrometheusClient, PrometheusCredentials, truncate
from powercap.histogram import SlidingWindow, snapshot_from_buckets

log = logging.getLogger(__name__)

# A vLLM /metrics page is a few hundred KiB; 16 MiB (after decompression) leaves room for many models
# and LoRA adapters while bounding what one scrape can cost.
METRICS_MAX_BODY_BYTES = 16 * 1024 * 1024
# The latency and load queries answer one series each; anything near this is not such an answer.
PROMETHEUS_MAX_BODY_BYTES = 1024 * 1024

# The histogram names and units per server and latency kind come from the one registry (common.servers).
SERVERS: tuple[str, ...] = servers.SERVER_NAMES
LATENCY_KINDS: tuple[str, ...] = servers.LATENCY_KINDS


class LatencySourceError(Exception):
    """The source could not answer (unreachable, too slow, too big, malformed, metric absent)."""


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
    """(histogram name, factor from its unit to seconds) the server publishes for that latency kind.

    The newest name: for an older server that publishes only a deprecated one (e.g. vLLM's
    ``vllm:time_per_output_token_seconds``), name it with --latency-metric."""
    try:
        histogram = servers.latency_histogram(server, kind)
    except ValueError:
        histogram = None
    if histogram is None:
        raise ValueError(
            f"no default histogram for server {server!r} and latency kind {kind!r}; "
            "name one with --latency-metric (and --latency-scale for non-second units)"
        )
    return histogram.name, histogram.to_seconds


class MetricsEndpointSource:
    """Scrapes a Prometheus text endpoint and keeps a sliding window of one histogram's bucket deltas.

    ``timeout_s`` is the total deadline of one scrape. A scrape whose bucket counts are not finite,
    non-negative numbers (NaN, Inf) is an error, not a reading: it never enters the window.
    """

    def __init__(
        self,
        url: str,
        metric: str,
        quantile: float,
        window_s: float,
        scale: float = 1.0,
        labels: Mapping[str, str] | None = None,
        timeout_s: float = 2.0,
        http: BoundedHttpClient | None = None,
        max_body_bytes: int = METRICS_MAX_BODY_BYTES,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s: must be > 0, got {timeout_s}")
        self._url = url
        self._metric = metric
        self._scale = scale
        self._labels = dict(labels or {})
        self._deadline_s = timeout_s
        self._max_body_bytes = max_body_bytes
        self._http = http or BoundedHttpClient(
            deadline_s=timeout_s, max_body_bytes=max_body_bytes, num_pools=2
        )
        self._window = SlidingWindow(window_s, quantile)

    def read(self, now_s: float) -> LatencySample:
        try:
            resp = self._http.get(self._url, deadline_s=self._deadline_s, max_body_bytes=self._max_body_bytes)
        except HttpError as exc:
            raise LatencySourceError(f"scraping {self._url}: {exc}") from exc
        if resp.status != 200:
            raise LatencySourceError(f"scraping {self._url}: HTTP {resp.status}")
        buckets = self._buckets(resp.text())
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
                    if math.isnan(le):
                        raise ValueError("a bucket bound is NaN")
                    # Summed by le over every matching series (e.g. several models on one server).
                    summed[le] = summed.get(le, 0.0) + sample.value
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LatencySourceError(f"malformed metrics from {self._url}: {truncate(str(exc))}") from exc
        if not summed:
            raise LatencySourceError(f"{self._url} serves no {wanted} series matching {self._labels or '{}'}")
        if math.inf not in summed:
            raise LatencySourceError(f"{wanted} from {self._url} has no +Inf bucket")
        unusable = sorted(le for le, count in summed.items() if not math.isfinite(count) or count < 0)
        if unusable:
            # Missing data is not a number: a NaN bucket would poison every delta of the window.
            raise LatencySourceError(
                f"{wanted} from {self._url} has no usable count in bucket(s) le={unusable[:5]}"
            )
        return summed


class PrometheusSource:
    """Evaluates a PromQL instant query for the latency (and optionally one for the load).

    ``timeout_s`` is the total deadline of one read, both queries together. The bearer token (or the
    credentials given) is read from its file on every query: projected service-account tokens rotate.
    """

    def __init__(
        self,
        url: str,
        latency_query: str,
        load_query: str | None = None,
        timeout_s: float = 5.0,
        bearer_token_file: Path | None = None,
        client: PrometheusClient | None = None,
        credentials: PrometheusCredentials | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s: must be > 0, got {timeout_s}")
        self._server = url
        self._latency_query = latency_query
        self._load_query = load_query
        self._deadline_s = timeout_s
        self._credentials = credentials or PrometheusCredentials(bearer_token_file=bearer_token_file)
        self._client = client or PrometheusClient(
            BoundedHttpClient(deadline_s=timeout_s, max_body_bytes=PROMETHEUS_MAX_BODY_BYTES, num_pools=2)
        )

    def read(self, now_s: float) -> LatencySample:
        end = time.monotonic() + self._deadline_s
        latency = self._value(self._latency_query, end)
        load = self._value(self._load_query, end) if self._load_query else None
        return LatencySample(latency, load)

    def _value(self, query: str, end: float) -> float | None:
        what = f"Prometheus query {truncate(query)!r}"
        left = end - time.monotonic()
        if left <= 0:
            raise LatencySourceError(f"{what}: no time left of the {self._deadline_s:g}s read deadline")
        try:
            value = self._client.value(
                self._server, query, credentials=self._credentials, deadline_s=left, what=what
            )
        except NoValue as exc:
            raise LatencySourceError(str(exc)) from exc
        if value is None:
            raise LatencySourceError(f"{what} returned no series")
        # NaN is histogram_quantile's answer for a window without requests: no data, not an error.
        return value if math.isfinite(value) else None
