"""The breach rule's evidence test: a window's miss count against the budget's own rate."""

from __future__ import annotations

import math

import pytest

from common.misses import poisson_tail, significant_excess, significant_ratio


def test_poisson_tail_matches_closed_forms() -> None:
    assert poisson_tail(0, 3.0) == 1.0
    assert poisson_tail(1, 1.0) == pytest.approx(1 - math.exp(-1))
    assert poisson_tail(3, 2.0) == pytest.approx(1 - math.exp(-2) * (1 + 2 + 2))
    assert poisson_tail(2.2, 2.0) == poisson_tail(3, 2.0)  # an interpolated count rounds up
    assert poisson_tail(1, 0.0) == 0.0


def test_poisson_tail_does_not_underflow_at_large_means() -> None:
    # exp(-1000) is 0 in floating point; summed in log space the tail at the mean is about a half.
    assert 0.45 < poisson_tail(1000, 1000.0) < 0.55
    assert poisson_tail(1200, 1000.0) < 1e-6


def _direct_tail(k: int, mean: float) -> float:
    # The definition: one minus every term under k, each in log space.
    log_mean = math.log(mean)
    return 1.0 - math.fsum(math.exp(i * log_mean - mean - math.lgamma(i + 1)) for i in range(k))


@pytest.mark.parametrize(
    ("k", "mean"),
    [(1, 0.3), (3, 0.3), (4, 3.0), (7, 3.0), (2, 9.0), (12, 9.0), (20, 9.0), (90, 100.0),
     (101, 100.0), (130, 100.0), (560, 540.0), (600, 540.0)],
)  # fmt: skip
def test_poisson_tail_summed_outward_matches_the_definition(k: int, mean: float) -> None:
    assert poisson_tail(k, mean) == pytest.approx(_direct_tail(k, mean), rel=1e-9, abs=1e-12)


def test_poisson_tail_at_a_token_histogram_count() -> None:
    # 55,000 over a mean of 54,000, 4.3 standard deviations out: the definition's 55,000 terms and the
    # outward sum's few thousand agree, near the (continuity-corrected) normal tail.
    tail = poisson_tail(55_000, 54_000.0)
    assert tail == pytest.approx(_direct_tail(55_000, 54_000.0), rel=1e-6)
    z = (55_000 - 0.5 - 54_000) / math.sqrt(54_000)
    assert tail == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=0.1)
    assert poisson_tail(53_000, 54_000.0) == pytest.approx(1.0, abs=1e-4)


def test_a_handful_of_misses_at_one_replica_is_not_a_breach() -> None:
    # 300 requests at a 1% budget: 3 misses expected, 4 come in about a third of the windows.
    assert not significant_excess(4, 300, 0.01, 0.05)
    assert not significant_excess(6, 300, 0.01, 0.05)
    assert significant_excess(7, 300, 0.01, 0.05)  # P(X >= 7 | 3) is 3.4%
    # Many requests: the same 1.33x share is far past chance.
    assert significant_excess(400, 30000, 0.01, 0.05)
    # Under or at the budget is never a breach; with the test off, anything over it is one.
    assert not significant_excess(3, 300, 0.01, 0.0)
    assert significant_excess(4, 300, 0.01, 0.0)
    assert not significant_excess(1, 0, 0.01, 0.05)


def test_a_ratio_is_tested_as_the_misses_it_stands_for() -> None:
    # 12/9 of a 1% budget over 900 requests is 12 misses: chance; 20/9 is 20: evidence.
    assert not significant_ratio(12 / 9, 900, 0.01, 0.05)
    assert significant_ratio(20 / 9, 900, 0.01, 0.05)
    # Judged over a floor of 200 observations while 30 were made: 1.5 x 2 = 3 misses of 30 (0.3 due).
    assert significant_ratio(1.5, 30, 0.01, 0.05, judged_over=200)
    assert not significant_ratio(1.5, 30, 0.01, 0.05)  # 0.45 misses: under one
    # Past the last bucket is always evidence; NaN never is.
    assert significant_ratio(math.inf, 900, 0.01, 0.05)
    assert not significant_ratio(math.nan, 900, 0.01, 0.05)
