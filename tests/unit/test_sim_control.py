"""KEDA/HPA arithmetic, the simulated Prometheus, the threshold baseline, planned clocks and the DP optimum."""

from __future__ import annotations

import itertools
import random

import pytest

from gpumodel.model import H100_LLAMA_8B
from sim.keda import Autoscaler, HpaConfig, hpa_recommendation, scale_up_limit
from sim.observe import (
    ITL_BUCKETS_S,
    LATENCY_BUCKETS_S,
    N_ITL_BUCKETS,
    SimPrometheus,
    bucket_index,
    histogram_quantile,
    itl_bucket_index,
    ttft_bucket_index,
)
from sim.optimum import Workload, optimum, plan, steady_state
from sim.policies import CapReading, SlotClocks, SlotSchedule, ThresholdTrigger
from sim.server import ServerConfig
from sim.trace import Request, Trace


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


def test_steady_state_lower_clock_draws_less_power_and_decodes_slower() -> None:
    work = Workload(mean_prefill_tokens=500, mean_output_tokens=200)
    full = steady_state(H100_LLAMA_8B, work, 5.0)
    slow = steady_state(H100_LLAMA_8B, work, 5.0, clock_ratio=0.6)
    assert full is not None and slow is not None
    assert slow.power_w < full.power_w
    assert slow.token_time_s > full.token_time_s
    assert slow.prefill_share == pytest.approx(full.prefill_share / 0.6)  # prefill slows as 1/clock
    busier = steady_state(H100_LLAMA_8B, work, 10.0)
    assert busier is not None and busier.batch > full.batch and busier.power_w > full.power_w
    assert steady_state(H100_LLAMA_8B, work, 1000.0) is None  # cannot keep up


def _two_phase_trace() -> Trace:
    """10 minutes at 2 req/s, then 10 at 20 req/s (evenly spaced)."""
    reqs = [Request(i / 2, 300, 100) for i in range(1200)]
    reqs += [Request(600 + i / 20, 300, 100) for i in range(12000)]
    return Trace("two phases", tuple(reqs))


def test_joint_plan_lowers_clocks_where_load_allows_and_never_costs_more_than_replicas_only() -> None:
    server = ServerConfig(H100_LLAMA_8B)
    trace = _two_phase_trace()
    replicas_only = optimum(trace, server, {1980.0: 10.0})
    joint = optimum(trace, server, {1980.0: 10.0, 1188.0: 6.0, 792.0: 3.0})
    assert joint.energy_j <= replicas_only.energy_j
    assert replicas_only.clocks_mhz == [1980.0] * len(replicas_only.clocks_mhz)
    assert len(joint.clocks_mhz) == 4 * len(joint.counts)  # a clock per 15 s
    # The quiet first half fits one replica at the lowest clock; the busy half needs more at full.
    assert set(joint.clocks_mhz[:36]) == {792.0} and joint.counts[:9] == [1] * 9
    assert replicas_only.counts[-1] == 2 and max(joint.counts) >= 2
    for i, n in enumerate(joint.counts):  # every 15 s the planned replicas hold its rate at its clock
        caps = {1980.0: 10.0, 1188.0: 6.0, 792.0: 3.0}
        for j in range(4):
            rate = sum(1 for r in trace.requests if i * 60 + j * 15 <= r.arrival_s < i * 60 + (j + 1) * 15)
            assert n * caps[joint.clocks_mhz[4 * i + j]] >= rate / 15 - 1e-9


def test_slot_clocks_apply_the_planned_clock_of_each_slot() -> None:
    clocks = SlotClocks(15.0, [1980.0, 990.0])
    assert clocks.start(0, 0.0).locked_clock_mhz == 1980.0
    assert clocks.control(0, CapReading(15.0, None, 0.0)).locked_clock_mhz == 990.0
    assert clocks.control(0, CapReading(900.0, None, 0.0)).locked_clock_mhz == 990.0  # past the plan: last


def test_sim_prometheus_ttft_and_itl_histograms() -> None:
    prom = SimPrometheus(step_s=1.0)
    itl = [0.0] * N_ITL_BUCKETS
    itl[itl_bucket_index(0.02)] = 90.0  # 90 tokens at 20 ms, 10 at 100 ms each second
    itl[itl_bucket_index(0.1)] = 10.0
    for _ in range(60):
        prom.record_slot([], 1, 1, ttft_buckets=[ttft_bucket_index(0.3)], itl_tokens=itl)
    ttft = prom.ttft_quantile(0.99, 60.0, 60.0)
    assert ttft is not None and 0.25 < ttft <= 0.5
    p50, p99 = prom.itl_quantile(0.5, 60.0, 60.0), prom.itl_quantile(0.99, 60.0, 60.0)
    assert p50 is not None and ITL_BUCKETS_S[0] < p50 <= 0.025  # a quantile over tokens
    assert p99 is not None and 0.075 < p99 <= 0.1
    assert prom.itl_quantile(0.99, 60.0, 0.0) is None  # nothing observed yet


def test_sim_prometheus_per_request_itl_histogram() -> None:
    prom = SimPrometheus(step_s=1.0)
    tokens = [0.0] * N_ITL_BUCKETS
    tokens[itl_bucket_index(0.02)] = 1000.0  # per token, everything within 25 ms
    for _ in range(60):
        # each second 10 requests finish: 8 at a 20-ms mean, 2 at 60 ms (few tokens beside a prefill)
        requests = [itl_bucket_index(0.02)] * 8 + [itl_bucket_index(0.06)] * 2
        prom.record_slot([0] * 10, 10, 1, itl_tokens=tokens, request_itl_buckets=requests)
    assert prom.share_within("itl", 0.025, 60.0, 60.0) == 1.0
    assert prom.share_within("request_itl", 0.025, 60.0, 60.0) == pytest.approx(0.8)
    assert prom.count_rate("request_itl", 60.0, 60.0) == pytest.approx(10.0)
    p90 = prom.request_itl_quantile(0.9, 60.0, 60.0)
    assert p90 is not None and 0.05 < p90 <= 0.075  # a quantile over requests
    assert prom.request_itl_quantile(0.9, 60.0, 0.0) is None  # nothing observed yet
    with pytest.raises(ValueError, match="unknown histogram"):
        prom.count_rate("tpot", 60.0, 60.0)
