"""What Prometheus (and the sidecar's scrape of its own pod) would answer about the simulated cluster.

The controllers must see what they would see live, not the simulator's exact internals: request
rates are counter increases over a window divided by the window, and latency quantiles come from
histogram buckets (vLLM's ``vllm:e2e_request_latency_seconds`` boundaries, mirrored by the exporter as
``eo_pod_request_latency_seconds``) interpolated the way PromQL's ``histogram_quantile`` does.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

from common.quantiles import counts_quantile

# vLLM's bucket boundaries for vllm:e2e_request_latency_seconds (seconds); +Inf is implicit.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
N_BUCKETS = len(LATENCY_BUCKETS_S) + 1


def bucket_index(latency_s: float) -> int:
    """Index of the first bucket whose upper bound ``le`` holds ``latency_s`` (last index: +Inf)."""
    return bisect.bisect_left(LATENCY_BUCKETS_S, latency_s)


def histogram_quantile(q: float, counts: list[int] | tuple[int, ...]) -> float | None:
    """PromQL's ``histogram_quantile`` over per-bucket (non-cumulative) counts on vLLM's bounds; None
    where PromQL says NaN."""
    return counts_quantile(q, LATENCY_BUCKETS_S, counts)


class SimPrometheus:
    """Counters of the whole workload, kept per slot so any window ending on a slot boundary is exact.

    ``record_slot`` is called once per slot; queries take ``now_s`` on a slot boundary (the engine's
    control instants) and a window in seconds.
    """

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self._done = [0]  # completions up to the end of each slot
        self._arrived = [0]
        self._buckets: list[tuple[int, ...]] = [(0,) * N_BUCKETS]  # cumulative bucket counts
        self._ready: list[int] = [0]  # pods reporting during each slot

    def record_slot(self, finished_buckets: list[int], arrivals: int, ready_replicas: int) -> None:
        counts = list(self._buckets[-1])
        for b in finished_buckets:
            counts[b] += 1
        self._buckets.append(tuple(counts))
        self._done.append(self._done[-1] + len(finished_buckets))
        self._arrived.append(self._arrived[-1] + arrivals)
        self._ready.append(ready_replicas)

    def _slot(self, now_s: float) -> int:
        return min(len(self._done) - 1, max(0, round(now_s / self.step_s)))

    def _window(self, window_s: float, now_s: float) -> tuple[int, int]:
        end = self._slot(now_s)
        return max(0, end - round(window_s / self.step_s)), end

    def increase(self, window_s: float, now_s: float) -> int:
        """``increase(requests_total[window])``: requests finished in the window."""
        start, end = self._window(window_s, now_s)
        return self._done[end] - self._done[start]

    def rate(self, window_s: float, now_s: float) -> float:
        """``rate(requests_total[window])`` in requests per second.

        A window reaching before 0 s is divided by the part after 0 s: the service ran before the trace
        started, at about the trace's opening rate, so its history does not show a ramp from zero.
        """
        return self.increase(window_s, now_s) / max(min(window_s, now_s), self.step_s)

    def arrival_rate(self, window_s: float, now_s: float) -> float:
        """Requests per second arriving at the gateway (an ingress metric, seen at zero replicas too)."""
        start, end = self._window(window_s, now_s)
        return (self._arrived[end] - self._arrived[start]) / max(min(window_s, now_s), self.step_s)

    def latency_quantile(self, q: float, window_s: float, now_s: float) -> float | None:
        """``histogram_quantile(q, sum by (le) (rate(latency_bucket[window])))``."""
        start, end = self._window(window_s, now_s)
        a, b = self._buckets[start], self._buckets[end]
        return histogram_quantile(q, [y - x for x, y in zip(a, b, strict=True)])

    def replicas(self, now_s: float) -> int:
        """``count(count by (pod) (requests_total))``: pods reporting in the slot just ended."""
        return self._ready[self._slot(now_s)]


class SlidingWindow:
    """One pod's latency histogram over the last ``window_s`` seconds, as the sidecar scrapes it."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._counts = [0] * N_BUCKETS

    def add(self, end_s: float, bucket: int) -> None:
        self._events.append((end_s, bucket))
        self._counts[bucket] += 1

    def _expire(self, now_s: float) -> None:
        while self._events and self._events[0][0] <= now_s - self.window_s:
            _, b = self._events.popleft()
            self._counts[b] -= 1

    def quantile(self, q: float, now_s: float) -> float | None:
        self._expire(now_s)
        return histogram_quantile(q, self._counts)

    def rate(self, now_s: float) -> float:
        self._expire(now_s)
        return len(self._events) / self.window_s


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
