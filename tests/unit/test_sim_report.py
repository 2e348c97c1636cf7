"""Report metrics on hand-computable cases."""

from __future__ import annotations

import math

import pytest

from common.quantiles import nearest_rank
from sim.engine import RunResult
from sim.report import document, summarize, table
from sim.slo import Slos


def result() -> RunResult:
    arrivals = [0.0, 1.0, 2.0, 3.0]
    return RunResult(
        policy="p",
        trace="t",
        arrival_s=arrivals,
        first_token_s=[0.5, 1.5, 2.5, math.nan],
        end_s=[1.0, 3.0, 7.0, math.nan],  # latencies 1, 2, 5; the last never finished
        itl_s=[0.05, 0.15, math.nan, math.nan],  # the third had a single output token
        prompt_tokens=40,
        output_tokens=100,
        energy_j=7.2e6,
        idle_energy_j=1.8e6,
        replica_seconds=600.0,
        cold_starts=2,
        duration_s=3600.0,
        decisions=[(15.0, 2.0, True, "hold", 2), (30.0, 3.0, True, "scale_up_load", 3)],
        series={"t_s": [10.0], "power_w": [math.nan]},
    )


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert nearest_rank(values, 0.5) == 50.0
    assert nearest_rank(values, 0.99) == 99.0
    assert nearest_rank(values, 1.0) == 100.0
    assert math.isnan(nearest_rank([], 0.5))


def test_summary_figures() -> None:
    s = summarize(result(), 2.0)
    assert s.energy_kwh == pytest.approx(2.0)
    assert s.joules_per_request == pytest.approx(1.8e6)
    assert s.joules_per_output_token == pytest.approx(7.2e4)
    assert s.idle_energy_share == pytest.approx(0.25)
    assert s.slo_attainment == pytest.approx(0.5)  # 1 s and 2 s within; 5 s and unfinished not
    assert s.unfinished == 1
    assert s.latency_p50_s == 2.0
    assert s.latency_p99_s == 5.0
    assert s.ttft_p50_s == pytest.approx(0.5)
    assert s.replica_minutes == 10.0
    assert s.mean_power_w == pytest.approx(2000.0)


def test_per_slo_and_all_slo_attainment() -> None:
    s = summarize(result(), Slos(ttft_s=0.5, itl_s=0.1, e2e_s=6.0))
    assert s.ttft_attainment == pytest.approx(0.75)  # 0.5 s each; the unfinished one misses
    assert s.itl_attainment == pytest.approx(0.5)  # 0.15 misses; the single-token request cannot miss
    assert s.e2e_attainment == pytest.approx(0.75)
    assert s.slo_attainment == pytest.approx(0.5)  # requests 0 and 2 meet all three
    assert s.slo_attainment <= min(s.ttft_attainment, s.itl_attainment, s.e2e_attainment)
    assert s.itl_p50_s == pytest.approx(0.05) and s.itl_p99_s == pytest.approx(0.15)
    assert (s.ttft_slo_s, s.itl_slo_s, s.e2e_slo_s) == (0.5, 0.1, 6.0)
    only_itl = summarize(result(), Slos(itl_s=0.1))
    assert only_itl.ttft_attainment is None and only_itl.slo_attainment == pytest.approx(0.5)


def test_table_and_document() -> None:
    s = summarize(result(), 2.0)
    text = table([s])
    assert "kWh" in text.splitlines()[0]
    assert "2.000" in text and "50.00%" in text
    assert "in E2E" in text and "in TTFT" not in text  # only the SLOs given have columns
    assert "in TTFT" in table([summarize(result(), Slos(ttft_s=1.0))])
    doc = document([s], [result()], {"slo_s": 2.0})
    assert "Patel" in doc["attribution"]
    assert doc["policies"][0]["decision_reasons"] == {"hold": 1, "scale_up_load": 1}
    assert doc["policies"][0]["series"]["power_w"] == [None]
