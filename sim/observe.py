"""What Prometheus (and the sidecar's scrape of its own pod) would answer about the simulated cluster.

The controllers must see what they would see live, not the simulator's exact internals: request
rates are counter increases over a window divided by the window, and latency quantiles come from
histogram buckets interpolated the way PromQL's ``histogram_quantile`` does. Four histograms, on
vLLM's own bucket boundaries, as the exporter mirrors them:

* end-to-end latency (``vllm:e2e_request_latency_seconds``): one observation per finished request;
* time to first token (``vllm:time_to_first_token_seconds``): one per request, at its first token;
* inter-token latency (``vllm:inter_token_latency_seconds``, older ``time_per_output_token_seconds``):
  one observation per output token after the first, valued at the iteration that produced it, so the
  counts are token counts (fractional within a slot: a slot can end inside an iteration);
* each request's mean time per output token (``vllm:request_time_per_output_token_seconds``): one
  observation per finished request, its decode time over its output tokens after the first, 0 for a
  request of one token (as vLLM observes it), on the ITL bounds. The ITL SLO is held on this one.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence

from common.quantiles import counts_quantile

# vLLM's bucket boundaries for vllm:e2e_request_latency_seconds (seconds); +Inf is implicit.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
N_BUCKETS = len(LATENCY_BUCKETS_S) + 1
# vLLM's bounds for vllm:time_to_first_token_seconds and vllm:inter_token_latency_seconds.
TTFT_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
N_TTFT_BUCKETS = len(TTFT_BUCKETS_S) + 1
N_ITL_BUCKETS = len(ITL_BUCKETS_S) + 1


def bucket_index(latency_s: float) -> int:
    """Index of the first bucket whose upper bound ``le`` holds ``latency_s`` (last index: +Inf)."""
    return bisect.bisect_left(LATENCY_BUCKETS_S, latency_s)


def ttft_bucket_index(ttft_s: float) -> int:
    """``bucket_index`` on the time-to-first-token bounds."""
    return bisect.bisect_left(TTFT_BUCKETS_S, ttft_s)


def itl_bucket_index(itl_s: float) -> int:
    """``bucket_index`` on the inter-token-latency bounds."""
    return bisect.bisect_left(ITL_BUCKETS_S, itl_s)


def histogram_quantile(
    q: float, counts: Sequence[float], bounds: Sequence[float] = LATENCY_BUCKETS_S
) -> float | None:
    """PromQL's ``histogram_quantile`` over per-bucket (non-cumulative) counts on vLLM's bounds (the
    end-to-end ones unless ``bounds`` says otherwise); None where PromQL says NaN."""
    return counts_quantile(q, bounds, counts)


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
        self._ttft: list[tuple[int, ...]] = [(0,) * N_TTFT_BUCKETS]
        self._itl: list[tuple[float, ...]] = [(0.0,) * N_ITL_BUCKETS]
        self._request_itl: list[tuple[int, ...]] = [(0,) * N_ITL_BUCKETS]
        self._ready: list[int] = [0]  # pods reporting during each slot
        self._tokens: list[float] = [0.0]  # prompt + generated tokens up to the end of each slot
        self._waiting: list[int] = [0]  # requests waiting / running at the end of each slot
        self._running: list[int] = [0]

    def record_slot(
        self,
        finished_buckets: Sequence[int],
        arrivals: int,
        ready_replicas: int,
        ttft_buckets: Sequence[int] = (),
        itl_tokens: Sequence[float] | None = None,
        tokens: float = 0.0,
        waiting: int = 0,
        running: int = 0,
        request_itl_buckets: Sequence[int] = (),
    ) -> None:
        """One slot: the e2e bucket of each request finished, arrivals, pods reporting, the TTFT bucket
        of each first token, output tokens per ITL bucket (``N_ITL_BUCKETS`` long, or None), prompt and
        generated tokens processed, the requests waiting and running at its end, and the ITL bucket of
        each finished request's mean time per output token."""
        self._buckets.append(_cumulate(self._buckets[-1], finished_buckets))
        self._ttft.append(_cumulate(self._ttft[-1], ttft_buckets))
        self._request_itl.append(_cumulate(self._request_itl[-1], request_itl_buckets))
        if itl_tokens is None or not any(itl_tokens):
            self._itl.append(self._itl[-1])
        else:
            self._itl.append(tuple(a + b for a, b in zip(self._itl[-1], itl_tokens, strict=True)))
        self._done.append(self._done[-1] + len(finished_buckets))
        self._arrived.append(self._arrived[-1] + arrivals)
        self._ready.append(ready_replicas)
        self._tokens.append(self._tokens[-1] + tokens)
        self._waiting.append(waiting)
        self._running.append(running)

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

    def ttft_quantile(self, q: float, window_s: float, now_s: float) -> float | None:
        """The same over the time-to-first-token histogram."""
        start, end = self._window(window_s, now_s)
        a, b = self._ttft[start], self._ttft[end]
        return histogram_quantile(q, [y - x for x, y in zip(a, b, strict=True)], TTFT_BUCKETS_S)

    def itl_quantile(self, q: float, window_s: float, now_s: float) -> float | None:
        """The same over the inter-token-latency histogram (a quantile over tokens, not requests)."""
        start, end = self._window(window_s, now_s)
        a, b = self._itl[start], self._itl[end]
        return histogram_quantile(q, [y - x for x, y in zip(a, b, strict=True)], ITL_BUCKETS_S)

    def request_itl_quantile(self, q: float, window_s: float, now_s: float) -> float | None:
        """The same over each finished request's mean time per output token (a quantile over requests)."""
        start, end = self._window(window_s, now_s)
        a, b = self._request_itl[start], self._request_itl[end]
        return histogram_quantile(q, [y - x for x, y in zip(a, b, strict=True)], ITL_BUCKETS_S)

    def _histogram(self, histogram: str) -> tuple[Sequence[tuple[float, ...]], tuple[float, ...]]:
        """The cumulative counts per slot and the bounds of ``e2e``, ``ttft``, ``itl`` or ``request_itl``."""
        table: dict[str, tuple[Sequence[tuple[float, ...]], tuple[float, ...]]] = {
            "e2e": (self._buckets, LATENCY_BUCKETS_S),
            "ttft": (self._ttft, TTFT_BUCKETS_S),
            "itl": (self._itl, ITL_BUCKETS_S),
            "request_itl": (self._request_itl, ITL_BUCKETS_S),
        }
        if histogram not in table:
            raise ValueError(f"unknown histogram {histogram!r}: one of {'|'.join(table)}")
        return table[histogram]

    def replicas(self, now_s: float) -> int:
        """``count(count by (pod) (requests_total))``: pods reporting in the slot just ended."""
        return self._ready[self._slot(now_s)]

    def token_rate(self, window_s: float, now_s: float) -> float:
        """``sum(rate(tokens_total[window]))``: prompt and generated tokens per second (as ``rate``)."""
        start, end = self._window(window_s, now_s)
        return (self._tokens[end] - self._tokens[start]) / max(min(window_s, now_s), self.step_s)

    def count_rate(self, histogram: str, window_s: float, now_s: float) -> float:
        """``sum(rate(<histogram>_count[window]))`` of ``e2e``, ``ttft``, ``itl`` (tokens) or
        ``request_itl``."""
        series = self._histogram(histogram)[0]
        start, end = self._window(window_s, now_s)
        return (sum(series[end]) - sum(series[start])) / max(min(window_s, now_s), self.step_s)

    def share_within(self, histogram: str, bound_s: float, window_s: float, now_s: float) -> float | None:
        """Share of the window's ``e2e``/``ttft``/``itl``/``request_itl`` observations at most ``bound_s``
        (the bucket ``le="<bound>"`` over the count); None when ``bound_s`` is not one of its bounds,
        NaN when the window observed nothing."""
        series, bounds = self._histogram(histogram)
        index = next((i for i, b in enumerate(bounds) if abs(b - bound_s) <= 1e-12 * max(1.0, b)), None)
        if index is None:
            return None
        start, end = self._window(window_s, now_s)
        a, b = series[start], series[end]
        total = sum(b) - sum(a)
        within = sum(b[: index + 1]) - sum(a[: index + 1])
        return within / total if total > 0 else math.nan

    def waiting(self, now_s: float) -> int:
        """``sum(requests_waiting)`` at the end of the slot just ended."""
        return self._waiting[self._slot(now_s)]

    def running(self, now_s: float) -> int:
        """``sum(requests_running)`` at the end of the slot just ended."""
        return self._running[self._slot(now_s)]


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


def _cumulate(previous: tuple[int, ...], buckets: Sequence[int]) -> tuple[int, ...]:
    if not buckets:
        return previous  # tuples are immutable: an unchanged slot shares the previous one
    counts = list(previous)
    for b in buckets:
        counts[b] += 1
    return tuple(counts)


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
