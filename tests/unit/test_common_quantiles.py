"""The one quantile module: PromQL's histogram_quantile and nearest-rank."""

from __future__ import annotations

import math

import pytest

from common.quantiles import bucket_quantile, counts_quantile, nearest_rank


def test_interpolates_inside_the_bucket_like_promql() -> None:
    # 10 observations <= 1 s, 10 more <= 2 s: the median is the top of the first bucket, p75 mid-second.
    buckets = [(1.0, 10.0), (2.0, 20.0), (math.inf, 20.0)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(1.0)
    assert bucket_quantile(0.75, buckets) == pytest.approx(1.5)


def test_rank_in_the_inf_bucket_answers_the_highest_finite_bound() -> None:
    assert bucket_quantile(0.99, [(1.0, 1.0), (math.inf, 100.0)]) == 1.0


@pytest.mark.parametrize("total", [0.0, math.nan])
def test_no_observations_is_none(total: float) -> None:
    assert bucket_quantile(0.5, [(1.0, total), (math.inf, total)]) is None
    assert bucket_quantile(0.5, []) is None


def test_counts_match_the_cumulative_form() -> None:
    assert counts_quantile(0.75, (1.0, 2.0), (10, 10, 0)) == bucket_quantile(
        0.75, [(1.0, 10.0), (2.0, 20.0), (math.inf, 20.0)]
    )
    with pytest.raises(ValueError):
        counts_quantile(0.5, (1.0,), (1,))


def test_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert nearest_rank(values, 0.5) == 50.0
    assert nearest_rank(values, 0.99) == 99.0
    assert math.isnan(nearest_rank([], 0.5))
