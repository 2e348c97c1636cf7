"""Mirrored counters and histograms that stay monotonic across inference-server restarts (pure).

A server restart sets its counters back to zero. When a reading is lower than the previous one the
counter was reset in between, and the new reading is the growth since that reset: the mirrored total
grows by the new reading (what happened between our last read and the reset is lost). The first
reading is mirrored as is, so a fresh exporter publishes what the server says.

A histogram is reset as a whole (its ``_count`` or any bucket went down), never bucket by bucket, so
the cumulative buckets stay ordered. A histogram whose bucket bounds change (new server version or
flags) starts over from the new reading: that one series sees an ordinary counter reset.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.pods.appmetrics import HistogramReading


class MirroredCounter:
    def __init__(self) -> None:
        self._last_raw: float | None = None
        self.total = 0.0

    def update(self, raw: float) -> float | None:
        """Feed a reading; return the growth since the previous one (``None`` for the first)."""
        raw = max(raw, 0.0)
        if self._last_raw is None:
            self._last_raw = raw
            self.total = raw
            return None
        growth = raw - self._last_raw if raw >= self._last_raw else raw
        self.total += growth
        self._last_raw = raw
        return growth


@dataclass(frozen=True)
class HistogramTotals:
    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float


class MirroredHistogram:
    def __init__(self) -> None:
        self._last: HistogramReading | None = None
        self._totals: HistogramTotals | None = None

    @property
    def totals(self) -> HistogramTotals | None:
        return self._totals

    def update(self, raw: HistogramReading) -> None:
        last, totals = self._last, self._totals
        self._last = raw
        if last is None or totals is None or [b for b, _ in last.buckets] != [b for b, _ in raw.buckets]:
            self._totals = HistogramTotals(raw.buckets, raw.sum, raw.count)
            return
        reset = raw.count < last.count or any(
            now < before for (_, now), (_, before) in zip(raw.buckets, last.buckets, strict=True)
        )
        if reset:
            growth_buckets = [c for _, c in raw.buckets]
            growth_sum, growth_count = raw.sum, raw.count
        else:
            growth_buckets = [
                now - before for (_, now), (_, before) in zip(raw.buckets, last.buckets, strict=True)
            ]
            growth_sum, growth_count = max(raw.sum - last.sum, 0.0), raw.count - last.count
        self._totals = HistogramTotals(
            tuple((le, t + g) for (le, t), g in zip(totals.buckets, growth_buckets, strict=True)),
            totals.sum + growth_sum,
            totals.count + growth_count,
        )
