"""Mirrored counters and histograms that stay honest across restarts and bad data (pure).

A mirror follows each source series of the server's counter on its own (a counter summed over
``finished_reason`` is several series) and publishes their total:

* **Resets are per series.** When a series reads lower than before, that series was reset in between
  (the server restarted) and its new value is its growth since; the other series keep counting from
  where they were. A drop of the *sum* alone is never taken for a reset: a series that goes missing
  for a while is not a reset, and neither is one line that stops being listed twice.
* **Missing is not zero.** A series absent from a read (or NaN, Inf, negative: the extraction leaves
  those out) keeps its last good value and adds nothing; when it comes back, its growth since that
  value is added, so the total recovers what happened meanwhile and never jumps by the whole value.
* **New series** appearing after the first read are born since the previous read (servers create
  label sets on first use), so their value is growth. The first read is mirrored as is, so a fresh
  exporter publishes what the server says.
* A histogram series is reset as a whole (its ``_count`` or any bucket went down), never bucket by
  bucket, so cumulative buckets stay ordered. When the bucket bounds change (new server version or
  flags) the mirror starts over from the new reading: that one series sees an ordinary counter reset.

The mirrors remember at most ``MAX_TRACKED_SERIES`` series each (the least recently seen go first),
so a server that churns label sets cannot grow the exporter's memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from exporter.pods.appmetrics import HistogramReading, SeriesKey, usable

MAX_TRACKED_SERIES = 2000

_Value = TypeVar("_Value")


def _remember(last: dict[SeriesKey, _Value], key: SeriesKey, value: _Value) -> None:
    last.pop(key, None)  # re-inserted: the dict stays ordered by when each series was last seen
    last[key] = value
    while len(last) > MAX_TRACKED_SERIES:
        del last[next(iter(last))]


class MirroredCounter:
    def __init__(self) -> None:
        self._last: dict[SeriesKey, float] = {}
        self._started = False
        self.total = 0.0

    def update(self, series: Mapping[SeriesKey, float]) -> float | None:
        """Feed one read's series; return the growth since the previous read (``None`` for the first).

        Values that are not usable (NaN, Inf, negative) are skipped as missing."""
        growth = 0.0
        for key, raw in series.items():
            if not usable(raw):
                continue
            before = self._last.get(key)
            if not self._started or before is None or raw < before:
                growth += raw  # first read, a new series, or this series was reset
            else:
                growth += raw - before
            _remember(self._last, key, raw)
        if not math.isfinite(self.total + growth):
            growth = 0.0  # finite readings near float's limit (a corrupt page): the total stays finite
        self.total += growth
        if not self._started:
            self._started = True
            return None
        return growth


@dataclass(frozen=True)
class HistogramTotals:
    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float


def _finite(reading: HistogramReading) -> bool:
    values = [reading.sum, reading.count, *(c for _, c in reading.buckets)]
    return all(math.isfinite(v) for v in values) and reading.count >= 0


def _was_reset(now: HistogramReading, before: HistogramReading) -> bool:
    return now.count < before.count or any(
        n < b for (_, n), (_, b) in zip(now.buckets, before.buckets, strict=True)
    )


class MirroredHistogram:
    def __init__(self) -> None:
        self._last: dict[SeriesKey, HistogramReading] = {}
        self._totals: HistogramTotals | None = None

    @property
    def totals(self) -> HistogramTotals | None:
        return self._totals

    def update(self, series: Mapping[SeriesKey, HistogramReading]) -> None:
        """Feed one read's series (same bounds; any series with a non-finite value is skipped)."""
        good = {key: reading for key, reading in series.items() if _finite(reading)}
        if not good:
            return
        bounds = next(iter(good.values())).bounds
        good = {key: reading for key, reading in good.items() if reading.bounds == bounds}
        totals = self._totals
        if totals is None or tuple(le for le, _ in totals.buckets) != bounds:
            self._last.clear()
            for key, reading in good.items():
                _remember(self._last, key, reading)
            self._totals = HistogramTotals(
                tuple((le, sum(r.buckets[i][1] for r in good.values())) for i, le in enumerate(bounds)),
                sum(r.sum for r in good.values()),
                sum(r.count for r in good.values()),
            )
            return
        grown = [0.0] * len(bounds)
        grown_sum = grown_count = 0.0
        for key, now in good.items():
            before = self._last.get(key)
            if before is None or before.bounds != bounds or _was_reset(now, before):
                steps = [c for _, c in now.buckets]
                step_sum, step_count = now.sum, now.count
            else:
                steps = [n - b for (_, n), (_, b) in zip(now.buckets, before.buckets, strict=True)]
                step_sum, step_count = max(now.sum - before.sum, 0.0), now.count - before.count
            grown = [g + s for g, s in zip(grown, steps, strict=True)]
            grown_sum += step_sum
            grown_count += step_count
            _remember(self._last, key, now)
        self._totals = HistogramTotals(
            tuple((le, t + g) for (le, t), g in zip(totals.buckets, grown, strict=True)),
            totals.sum + grown_sum,
            totals.count + grown_count,
        )
