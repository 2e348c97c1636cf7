"""KEDA/HPA arithmetic, the simulated Prometheus, the threshold baseline and the DP optimum."""

from __future__ import annotations

import itertools
import random

import pytest

from gpumodel.model import H100_LLAMA_8B
from sim.keda import Autoscaler, HpaConfig, hpa_recommendation, scale_up_limit
from sim.observe import LATENCY_BUCKETS_S, SimPrometheus, bucket_index, histogram_quantile
from sim.optimum import Workload, capacity_rps, plan, steady_state
from sim.policies import SlotSchedule, ThresholdTrigger
from sim.server import ServerConfig


def test_hpa_recommendation_ceil_and_tolerance() -> None:
    assert hpa_recommendation(10.5, 1.0, 10, 0.1) == 10  # 5% off: within tolerance
    assert hpa_recommendation(11.5, 1.0, 10, 0.1) == 12  # ceil(11.5)
    assert hpa_recommendation(25.0, 10.0, 2, 0.1) == 3  # ceil(25 / 10)
    assert hpa_recommendation(8.5, 1.0, 10, 0.1) == 9
    assert hpa_recommendation(0.0, 1.0, 3, 0.1) == 0


def test_scale_up_rate_limit() -> None:
    cfg = HpaConfig()
    assert scale_up_limit(1, cfg) == 5  # +4 pods beats +100%
    assert scale_up_limit(10, cfg) == 20


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    a = Autoscaler(HpaConfig(min_replicas=1), 4)
    assert a.hpa_sync(0.0, 4.0, 1.0) == 4
    for t in range(15, 300, 15):
        assert a.hpa_sync(float(t), 1.0, 1.0) == 4  # the 4 recommended at 0 s is still in the window
    assert a.hpa_sync(315.0, 1.0, 1.0) == 1
    assert a.hpa_sync(330.0, 9.0, 1.0) == 5  # up at once, limited to +4 pods


def test_the_service_running_before_the_trace_is_in_the_stabilisation_window() -> None:
    a = Autoscaler(HpaConfig(min_replicas=1), 3)
    assert a.hpa_sync(15.0, 1.0, 1.0) == 3  # a live HPA remembers the 3 it ran before the trace
    assert a.hpa_sync(300.0, 1.0, 1.0) == 3
    assert a.hpa_sync(315.0, 1.0, 1.0) == 1


def test_keda_scales_to_zero_after_cooldown_and_back() -> None:
    a = Autoscaler(HpaConfig(min_replicas=0, cooldown_s=300), 2)
    assert a.keda_poll(30.0, True) == 2
    assert a.keda_poll(300.0, False) == 2  # 270 s since the last active poll
    assert a.keda_poll(330.0, False) == 0
    assert a.hpa_sync(345.0, 5.0, 1.0) == 0  # the HPA does nothing at zero
    assert a.keda_poll(360.0, True) == 1  # activation: KEDA brings one, the HPA takes over
    with_min = Autoscaler(HpaConfig(min_replicas=1), 2)
    assert with_min.keda_poll(10_000.0, False) == 2


def test_histogram_quantile_interpolates_like_promql() -> None:
    counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
    counts[bucket_index(0.9)] = 10  # (0.8, 1.0]
    counts[bucket_index(4.0)] = 10  # (2.5, 5.0]
    assert histogram_quantile(0.5, counts) == pytest.approx(1.0)
    assert histogram_quantile(0.75, counts) == pytest.approx(2.5 + 2.5 * 0.5)
    assert histogram_quantile(0.25, counts) == pytest.approx(0.8 + 0.2 * 0.5)
    assert histogram_quantile(0.99, [0] * len(counts)) is None
    counts[-1] = 100  # beyond the last bound: PromQL answers the highest finite bound
    assert histogram_quantile(0.99, counts) == LATENCY_BUCKETS_S[-1]


def test_sim_prometheus_windows() -> None:
    prom = SimPrometheus(step_s=1.0)
    for _ in range(120):
        prom.record_slot([bucket_index(2.0)] * 2, arrivals=3, ready_replicas=2)
    assert prom.rate(60.0, 120.0) == pytest.approx(2.0)
    assert prom.arrival_rate(60.0, 120.0) == pytest.approx(3.0)
    assert prom.increase(300.0, 120.0) == 240
    assert prom.rate(300.0, 120.0) == pytest.approx(2.0)  # history before 0 s ran at the opening rate
    assert prom.replicas(120.0) == 2
    assert 1.5 < (prom.latency_quantile(0.99, 60.0, 120.0) or 0) <= 2.0


def test_threshold_trigger_reports_rate_against_threshold() -> None:
    prom = SimPrometheus(step_s=1.0)
    for _ in range(60):
        prom.record_slot([0] * 5, arrivals=5, ready_replicas=1)
    answer = ThresholdTrigger(threshold_rps=2.0).answer(prom, 60.0)
    assert (answer.value, answer.target, answer.active) == (5.0, 2.0, True)
    assert hpa_recommendation(answer.value, answer.target, 1, 0.1) == 3


def test_slot_schedule() -> None:
    s = SlotSchedule(60.0, [1, 3, 0])
    assert [s.replicas_at(t) for t in (0.0, 59.9, 60.0, 150.0, 999.0)] == [1, 1, 3, 0, 0]


def brute_force(needs: list[int], cost, start: float, max_n: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for counts in itertools.product(range(max_n + 1), repeat=len(needs)):
        if any(c < n for c, n in zip(counts, needs, strict=True)):
            continue
        total = sum(cost(i, c) for i, c in enumerate(counts))
        total += sum(max(0, b - a) * start for a, b in itertools.pairwise(counts))
        best = min(best, total)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_dp_plan_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    needs = [rng.randint(0, 3) for _ in range(5)]
    table = {(i, n): rng.uniform(0, 10) * (n + 1) for i in range(5) for n in range(5)}
    start = rng.uniform(0, 15)
    counts, total = plan(needs, lambda i, n: table[(i, n)], start, 4)
    assert total == pytest.approx(brute_force(needs, lambda i, n: table[(i, n)], start, 4))
    assert all(c >= n for c, n in zip(counts, needs, strict=True))
    recomputed = sum(table[(i, c)] for i, c in enumerate(counts))
    recomputed += sum(max(0, b - a) * start for a, b in itertools.pairwise(counts))
    assert recomputed == pytest.approx(total)


def test_dp_keeps_replicas_through_a_short_dip_when_restarting_costs_more() -> None:
    counts, _ = plan([2, 0, 2], lambda i, n: 1.0 * n, start_cost_j=5.0, max_replicas=3)
    assert counts == [2, 2, 2]
    counts, _ = plan([2, 0, 2], lambda i, n: 1.0 * n, start_cost_j=0.1, max_replicas=3)
    assert counts == [2, 0, 2]


def test_capacity_and_steady_state_are_consistent() -> None:
    server = ServerConfig(H100_LLAMA_8B)
    work = Workload(
        mean_prefill_tokens=500,
        mean_output_tokens=200,
        quantile_output_tokens=600,
        quantile_prefill_tokens=2000,
    )
    cap = capacity_rps(server, work, slo_s=10.0, margin=1.0)
    s = steady_state(H100_LLAMA_8B, work, cap)
    assert s is not None and s.tail_latency_s == pytest.approx(10.0, rel=1e-3)
    assert capacity_rps(server, work, slo_s=20.0, margin=1.0) > cap
    busier = steady_state(H100_LLAMA_8B, work, cap * 0.5)
    assert busier is not None and busier.batch < s.batch and busier.power_w < s.power_w
