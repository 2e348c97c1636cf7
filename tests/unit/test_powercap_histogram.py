"""Windowed quantiles from successive cumulative-histogram scrapes."""

from __future__ import annotations

import math

import pytest

from common.quantiles import bucket_quantile
from powercap.histogram import SlidingWindow, snapshot_from_buckets

INF = math.inf


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    # 100 requests: 50 under 0.5 s, 40 in (0.5, 1], 10 in (1, 2].
    buckets = ((0.5, 50.0), (1.0, 90.0), (2.0, 100.0), (INF, 100.0))
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.5)
    assert bucket_quantile(0.7, buckets) == pytest.approx(0.75)
    assert bucket_quantile(0.95, buckets) == pytest.approx(1.5)


def test_quantile_in_the_inf_bucket_answers_the_highest_finite_bound() -> None:
    assert bucket_quantile(0.99, ((1.0, 10.0), (INF, 100.0))) == 1.0


def test_empty_histogram_has_no_quantile() -> None:
    assert bucket_quantile(0.9, ((1.0, 0.0), (INF, 0.0))) is None


def test_window_uses_bucket_deltas_not_totals() -> None:
    w = SlidingWindow(window_s=60.0, quantile=0.9)
    # A long history of fast requests...
    w.add(snapshot_from_buckets(0.0, {0.1: 1000.0, 1.0: 1000.0, INF: 1000.0}))
    # ...then 100 slow ones in the last 60 s: the window sees only those.
    w.add(snapshot_from_buckets(60.0, {0.1: 1000.0, 1.0: 1100.0, INF: 1100.0}))
    stats = w.stats()
    assert stats.requests == 100.0
    assert stats.rate_rps == pytest.approx(100.0 / 60.0)
    assert stats.quantile_s is not None and 0.1 < stats.quantile_s <= 1.0


def test_window_slides_and_drops_old_scrapes() -> None:
    w = SlidingWindow(window_s=30.0, quantile=0.5)
    counts = 0.0
    for t in range(0, 100, 10):
        counts += 10.0
        w.add(snapshot_from_buckets(float(t), {1.0: counts, INF: counts}))
    stats = w.stats()
    assert stats.span_s == 30.0 and stats.requests == 30.0


def test_counter_reset_starts_the_window_again() -> None:
    w = SlidingWindow(window_s=60.0, quantile=0.5)
    w.add(snapshot_from_buckets(0.0, {1.0: 500.0, INF: 500.0}))
    w.add(snapshot_from_buckets(10.0, {1.0: 3.0, INF: 3.0}))  # server restarted
    assert w.stats().quantile_s is None
    w.add(snapshot_from_buckets(20.0, {1.0: 13.0, INF: 13.0}))
    assert w.stats().requests == 10.0


def test_scale_converts_milliseconds() -> None:
    snap = snapshot_from_buckets(0.0, {100.0: 1.0, INF: 1.0}, scale=0.001)
    assert snap.buckets[0] == (0.1, 1.0)


def test_missing_inf_bucket_is_an_error() -> None:
    with pytest.raises(ValueError, match="Inf"):
        snapshot_from_buckets(0.0, {1.0: 1.0})


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5])
def test_quantile_outside_open_unit_interval_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="quantile"):
        SlidingWindow(60.0, q)
