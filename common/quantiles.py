"""Quantiles, in one place: Prometheus' ``histogram_quantile`` over buckets, and nearest-rank over values.

Pure code (no I/O, no clock). Every component that reads a latency quantile — the sidecar's sliding
window, the simulator's mirrored histograms, the benches — answers it the way PromQL would, so a figure
from the simulator, the sidecar and a Grafana panel mean the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of a cumulative histogram ``[(upper bound, cumulative count), ...]`` sorted by
    bound with +Inf last, as Prometheus' ``histogram_quantile`` computes it; None where PromQL says NaN
    (no observations).

    The rank ``q * total`` falls in the first bucket whose cumulative count reaches it, interpolated
    linearly inside that bucket (from 0 for the first one); a rank in the +Inf bucket answers the
    highest finite bound.
    """
    if not buckets:
        return None
    total = buckets[-1][1]
    if not total > 0:  # also catches NaN
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            lower = prev_bound if prev_bound < bound else 0.0
            return lower + (bound - lower) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def counts_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """``bucket_quantile`` over per-bucket (non-cumulative) ``counts``; ``bounds`` are the finite upper
    bounds and ``counts`` has one more entry, the +Inf bucket."""
    if len(counts) != len(bounds) + 1:
        raise ValueError("counts must have one entry per bound plus the +Inf bucket")
    cumulative: list[tuple[float, float]] = []
    running = 0.0
    for bound, count in zip((*bounds, math.inf), counts, strict=True):
        running += count
        cumulative.append((bound, running))
    return bucket_quantile(q, cumulative)


def nearest_rank(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (``q`` in 0..1, no interpolation): the smallest value with at least ``q`` of
    the values at or below it. NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
