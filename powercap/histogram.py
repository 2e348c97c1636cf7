"""Latency quantiles over a sliding window, from successive scrapes of a cumulative histogram.

Pure: the sidecar feeds it cumulative bucket counts with a timestamp; it keeps the scrapes that span the
window and answers the quantile of the requests that finished between the oldest kept scrape and the
newest (bucket deltas), interpolated linearly inside a bucket as Prometheus' ``histogram_quantile``
does. A counter reset (the server restarted) drops the history. No finished request in the window (the
counters did not move) answers no quantile, never a number.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from common.quantiles import bucket_quantile


@dataclass(frozen=True)
class HistogramSnapshot:
    """Cumulative counts of one histogram (summed over its series) at ``time_s``."""

    time_s: float
    buckets: tuple[tuple[float, float], ...]
    """(upper bound, cumulative count) sorted by bound; the last bound is +Inf."""
    count: float


@dataclass(frozen=True)
class WindowStats:
    quantile_s: float | None
    """None when no request finished in the window."""
    requests: float
    rate_rps: float | None
    span_s: float


def snapshot_from_buckets(
    time_s: float, buckets: Mapping[float, float], scale: float = 1.0
) -> HistogramSnapshot:
    """Build a snapshot from ``{le: cumulative count}``; ``scale`` converts bounds to seconds (ms: 0.001)."""
    if not buckets or math.inf not in buckets:
        raise ValueError("histogram has no +Inf bucket")
    ordered = tuple(sorted((le * scale if math.isfinite(le) else math.inf, c) for le, c in buckets.items()))
    return HistogramSnapshot(time_s, ordered, ordered[-1][1])


class SlidingWindow:
    """Keeps the scrapes covering ``window_s`` and answers the window's quantile and request rate."""

    def __init__(self, window_s: float, quantile: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s: must be > 0, got {window_s}")
        if not 0 < quantile < 1:
            raise ValueError(f"quantile: must be in (0, 1), got {quantile}")
        self._window_s = window_s
        self._quantile = quantile
        self._snaps: deque[HistogramSnapshot] = deque()

    def add(self, snap: HistogramSnapshot) -> None:
        if self._snaps:
            last = self._snaps[-1]
            reset = snap.count < last.count or [b for b, _ in snap.buckets] != [b for b, _ in last.buckets]
            if reset or snap.time_s <= last.time_s:
                # Counter reset or a new bucket layout: deltas against old scrapes would be nonsense.
                self._snaps.clear()
        self._snaps.append(snap)
        # Keep one scrape at or before the window start so the delta spans the whole window.
        while len(self._snaps) >= 2 and self._snaps[1].time_s <= snap.time_s - self._window_s:
            self._snaps.popleft()

    def stats(self) -> WindowStats:
        if len(self._snaps) < 2:
            return WindowStats(None, 0.0, None, 0.0)
        old, new = self._snaps[0], self._snaps[-1]
        delta = tuple(
            (b, c_new - c_old) for (b, c_new), (_, c_old) in zip(new.buckets, old.buckets, strict=True)
        )
        requests = new.count - old.count
        span = new.time_s - old.time_s
        return WindowStats(bucket_quantile(self._quantile, delta), requests, requests / span, span)
