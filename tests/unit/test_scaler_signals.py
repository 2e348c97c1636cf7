"""The declared signals' Python evaluator: which histogram an SLO reads when a workload publishes two."""

from __future__ import annotations

import math

import pytest

from scaler import signals as sig

TOKEN = sig.ITL_HISTOGRAM
REQUEST = sig.REQUEST_ITL_HISTOGRAM


class View:
    """A workload's series: per histogram, observations per second and the share within 25 ms (the
    only bucket bound asked for); a histogram not listed has no series."""

    def __init__(self, histograms: dict[str, tuple[float, float]]) -> None:
        self.histograms = histograms

    def counter_rate(self, metric: str, window_s: float, at_s: float) -> float | None:
        found = self.histograms.get(metric.removesuffix("_count"))
        return None if found is None else found[0]

    def quantile(self, metric: str, q: float, window_s: float, at_s: float) -> float | None:
        found = self.histograms.get(metric)
        if found is None:
            return None
        rate, share = found
        return math.nan if rate == 0 else (0.02 if share >= q else 0.04)

    def share_within(self, metric: str, bound_s: float, window_s: float, at_s: float) -> float | None:
        found = self.histograms.get(metric)
        if found is None or bound_s != 0.025:
            return None
        rate, share = found
        return math.nan if rate == 0 else share

    def gauge(self, metric: str, aggregation: str, at_s: float) -> float | None:
        return None

    def replicas(self, at_s: float) -> int:
        return 1


ITL = sig.slo_signal("itl", 0.025, 0.9, (REQUEST, TOKEN))


def _read(view: View) -> tuple[float | None, float | None, float | None]:
    return (
        ITL.quantile.value(view, 60.0),
        ITL.ratio.value(view, 60.0),
        (ITL.rate or sig.Const(0)).value(view, 60.0),
    )


def test_the_per_request_histogram_is_read_where_the_workload_publishes_it() -> None:
    # Tokens: 99% within 25 ms. Requests: half of them missed (few tokens beside a long prefill).
    quantile, ratio, rate = _read(View({TOKEN: (1000.0, 0.99), REQUEST: (10.0, 0.5)}))
    assert quantile == 0.04
    assert ratio == pytest.approx(0.5 / 0.1)
    assert rate == 10.0


def test_without_it_the_token_histogram_is_read() -> None:
    quantile, ratio, rate = _read(View({TOKEN: (1000.0, 0.99)}))
    assert quantile == 0.02
    assert ratio == pytest.approx(0.01 / 0.1)
    assert rate == 1000.0


def test_a_window_without_a_finished_request_is_no_reading_not_the_token_answer() -> None:
    quantile, ratio, rate = _read(View({TOKEN: (1000.0, 0.5), REQUEST: (0.0, 0.0)}))
    assert quantile is not None and math.isnan(quantile)
    assert ratio is not None and math.isnan(ratio)
    assert rate == 0.0


def test_an_slo_needs_a_histogram() -> None:
    with pytest.raises(ValueError, match="at least one histogram"):
        sig.slo_signal("itl", 0.025, 0.9, ())
