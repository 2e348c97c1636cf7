"""The replica policy: worked examples and properties (hypothesis)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scaler.policy import Observation, PolicyConfig, Reason, ReplicaDecision, advisory, budget_ceiling, decide

# The worked examples plan at 0.9 and consolidate at 0.8 of capacity: round numbers, and a band wide
# enough to show the hysteresis (the trigger's defaults are 1.0 and 8/9).
CFG = PolicyConfig(
    min_replicas=1,
    max_replicas=20,
    latency_slo_s=2.0,
    replica_capacity_rps=10.0,
    target_utilization=0.9,
    scale_down_utilization=0.8,
)


def obs(**kw: object) -> Observation:
    # latency 1.2 s: under the near-SLO guard (1.7 s), above the roomy threshold (1.0 s)
    base = {"current_replicas": 4, "load_rps": 20.0, "peak_load_rps": 20.0, "latency_s": 1.2}
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def test_consolidates_to_fewest_replicas_that_carry_the_load() -> None:
    # 25 rps at 10 rps/replica: scale-up above 0.9 -> needs ceil(25/9) = 3; scale-down to 0.8 -> 4.
    d = decide(obs(current_replicas=8, load_rps=25.0, peak_load_rps=25.0), CFG)
    assert (d.replicas, d.reason) == (4, Reason.CONSOLIDATE)
    assert decide(obs(current_replicas=4, load_rps=25.0, peak_load_rps=25.0), CFG).reason is Reason.HOLD
    assert decide(obs(current_replicas=3, load_rps=25.0, peak_load_rps=25.0), CFG).replicas == 3  # dead band


def test_latency_headroom_lets_consolidation_reach_the_target_utilization() -> None:
    roomy = obs(current_replicas=8, load_rps=25.0, peak_load_rps=25.0, latency_s=0.9)  # <= 0.5 x SLO
    d = decide(roomy, CFG)
    assert (d.replicas, d.reason) == (3, Reason.CONSOLIDATE)  # ceil(25/9), not ceil(25/8)
    assert "0.5 x SLO" in d.detail and "e2e at 45% of its SLO" in d.detail
    # ... and the count it reaches is stable once latency rises above the roomy threshold.
    assert decide(replace(roomy, current_replicas=3, latency_s=1.5), CFG).replicas == 3


def test_load_above_target_scales_up_at_once() -> None:
    d = decide(obs(current_replicas=2, load_rps=50.0, peak_load_rps=50.0), CFG)
    assert (d.replicas, d.reason) == (6, Reason.SCALE_UP_LOAD)  # ceil(50 / 9)


def test_slo_breach_without_capacity_scales_by_latency_ratio_and_clears_hpa_tolerance() -> None:
    blind = replace(CFG, replica_capacity_rps=None)  # nothing tells the shortfall but latency
    d = decide(obs(current_replicas=4, latency_s=3.0), blind)
    assert (d.replicas, d.reason) == (6, Reason.SLO_BREACH)  # 4 * 1.5
    big = decide(obs(current_replicas=15, load_rps=10.0, peak_load_rps=10.0, latency_s=2.1), blind)
    assert big.replicas >= 17  # > 15 * 1.1, so the HPA's 10% tolerance does not swallow it
    assert big.replicas / 15 > 1.1


def test_slo_breach_follows_the_demand() -> None:
    d = decide(obs(current_replicas=2, load_rps=60.0, peak_load_rps=60.0, latency_s=2.2), CFG)
    assert (d.replicas, d.reason) == (7, Reason.SLO_BREACH)  # ceil(60 / 9): the shortfall at once
    # The count carries the demand at the target utilisation: one more replica, not a multiple.
    d = decide(obs(current_replicas=4, load_rps=20.0, peak_load_rps=20.0, latency_s=4.0), CFG)
    assert (d.replicas, d.reason) == (5, Reason.SLO_BREACH)
    # At 18 replicas a 19th is inside the HPA's 10% tolerance (KEDA's HPA would ignore it): 20.
    many = obs(current_replicas=18, settled_replicas=18, load_rps=100.0, peak_load_rps=100.0, latency_s=4.0)
    assert (decide(many, CFG).replicas, decide(many, CFG).reason) == (20, Reason.SLO_BREACH)
    queue = llm(current_replicas=18, settled_replicas=18, load_rps=100.0, peak_load_rps=100.0,
                waiting_requests=1.0, running_requests=200.0)  # fmt: skip
    assert decide(queue, LLM).replicas == 20
    kv = llm(
        current_replicas=18, settled_replicas=18, load_rps=100.0, peak_load_rps=100.0, kv_usage_ratio=0.95
    )
    assert decide(kv, LLM).replicas == 20


def test_slo_breach_is_answered_once_while_its_replicas_settle() -> None:
    first = decide(obs(current_replicas=4, latency_s=3.0, settled_replicas=4), CFG)
    assert first.replicas == 5
    # It became ready; latency (a 1-minute window) still shows the breach: no new step.
    again = decide(obs(current_replicas=5, latency_s=3.0, settled_replicas=4), CFG)
    assert (again.replicas, again.reason) == (5, Reason.SLO_BREACH)
    assert "settled 4" in again.detail
    # Once the settle window has passed with the breach still there, the next step builds on 5.
    assert decide(obs(current_replicas=5, latency_s=3.0, settled_replicas=5), CFG).replicas == 6
    # Without the settled count (unknown) the current count is the base.
    assert decide(obs(current_replicas=5, latency_s=3.0), CFG).replicas == 6
    # Without a capacity the latency ratio applies, to the settled count too.
    blind = replace(CFG, replica_capacity_rps=None)
    assert decide(obs(current_replicas=6, latency_s=3.0, settled_replicas=4), blind).replicas == 6
    assert decide(obs(current_replicas=6, latency_s=3.0, settled_replicas=6), blind).replicas == 9


def test_window_peak_holds_replicas_after_the_load_drops() -> None:
    d = decide(obs(current_replicas=8, load_rps=5.0, peak_load_rps=60.0), CFG)
    assert d.replicas == 8  # ceil(60/8) = 8: the peak of the window still needs them
    d = decide(obs(current_replicas=8, load_rps=5.0, peak_load_rps=5.0), CFG)
    assert (d.replicas, d.reason) == (1, Reason.CONSOLIDATE)


def test_near_slo_blocks_scale_down() -> None:
    d = decide(obs(current_replicas=8, latency_s=1.9), CFG)
    assert (d.replicas, d.reason) == (8, Reason.HOLD_NEAR_SLO)


def test_power_budget_is_a_hard_ceiling_even_against_the_slo() -> None:
    cfg = replace(CFG, power_budget_watts=2000.0, replica_power_watts=450.0)
    d = decide(obs(current_replicas=4, latency_s=4.0, load_rps=60.0, peak_load_rps=60.0), cfg)
    assert (d.replicas, d.reason) == (4, Reason.POWER_BUDGET)  # floor(2000 / 450)
    assert "hard ceiling" in d.detail and "slo_breach" in d.detail


def test_observed_power_per_replica_sets_the_ceiling() -> None:
    cfg = replace(CFG, power_budget_watts=1000.0)
    d = decide(obs(current_replicas=2, load_rps=60.0, peak_load_rps=60.0, workload_power_watts=600.0), cfg)
    assert (d.replicas, d.reason) == (3, Reason.POWER_BUDGET)  # 300 W each


def test_idle_scales_to_zero_only_with_min_zero() -> None:
    cfg = replace(CFG, min_replicas=0)
    idle = obs(current_replicas=2, load_rps=0.0, peak_load_rps=0.0, latency_s=None, idle_for_s=400.0)
    assert decide(idle, cfg) == ReplicaDecision(0, False, Reason.IDLE_ZERO, decide(idle, cfg).detail)
    assert decide(idle, CFG).replicas == 1
    recent = replace(idle, idle_for_s=100.0)
    assert decide(recent, cfg).active and decide(recent, cfg).replicas >= 1


def test_demand_wakes_from_zero() -> None:
    cfg = replace(CFG, min_replicas=0)
    zero = obs(current_replicas=0, load_rps=0.0, peak_load_rps=0.0, latency_s=None, idle_for_s=300.0)
    assert decide(zero, cfg).replicas == 0
    d = decide(replace(zero, demand_rps=30.0), cfg)
    assert (d.replicas, d.active, d.reason) == (4, True, Reason.WAKE)


def test_unknown_capacity_holds_and_learned_capacity_is_used() -> None:
    cfg = replace(CFG, replica_capacity_rps=None)
    assert decide(obs(current_replicas=8), cfg).reason is Reason.CAPACITY_UNKNOWN
    assert decide(obs(current_replicas=8, learned_capacity_rps=10.0), cfg).replicas == 3  # ceil(20 / 8)


def test_energy_target_removes_one_replica_at_a_time_down_to_the_load_threshold() -> None:
    cfg = replace(CFG, target_joules_per_request=100.0)
    d = decide(obs(current_replicas=4, load_rps=25.0, peak_load_rps=25.0, joules_per_request=150.0), cfg)
    assert (d.replicas, d.reason) == (3, Reason.ENERGY_TARGET)  # inside the dead band, down to ceil(25/9)
    three = obs(current_replicas=3, load_rps=25.0, peak_load_rps=25.0, joules_per_request=150.0)
    assert decide(three, cfg).reason is Reason.HOLD


def test_bounds_and_advisory() -> None:
    d = decide(obs(current_replicas=10, load_rps=500.0, peak_load_rps=500.0), CFG)
    assert (d.replicas, d.reason) == (20, Reason.MAX_REPLICAS)
    a = advisory(d, obs(current_replicas=10))
    assert a.replicas == 10 and "would set 20" in a.detail


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        PolicyConfig(min_replicas=5, max_replicas=2, latency_slo_s=1.0)
    with pytest.raises(ValueError, match="at least one SLO"):
        PolicyConfig(min_replicas=0, max_replicas=2)
    with pytest.raises(ValueError, match="> 0"):
        PolicyConfig(min_replicas=0, max_replicas=2, ttft_slo_s=0.0)


# ---- LLM-native SLOs, leading signals, learned capacity, headroom, forecast -------------------------

LLM = PolicyConfig(
    min_replicas=0,
    max_replicas=20,
    ttft_slo_s=0.5,
    itl_slo_s=0.05,
    replica_capacity_rps=10.0,
    young_burst_headroom=1.0,
    target_utilization=0.9,
    scale_down_utilization=0.8,
)


def llm(**kw: object) -> Observation:
    # 30 rps on 4 replicas of 10 rps: in the dead band; TTFT and ITL at 60% of their SLOs: neither
    # roomy nor near.
    base: dict[str, object] = {"current_replicas": 4, "load_rps": 30.0, "peak_load_rps": 30.0,
                               "latency_s": None, "ttft_s": 0.3, "itl_s": 0.03}  # fmt: skip
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def test_every_slo_given_is_held() -> None:
    assert decide(llm(), LLM).reason is Reason.HOLD
    for breach in ({"ttft_s": 0.6}, {"itl_s": 0.08}, {"ttft_s": float("inf")}):
        d = decide(llm(**breach), LLM)
        kind = "ttft" if "ttft_s" in breach else "itl"
        assert d.reason is Reason.SLO_BREACH and d.replicas == 5 and f"{kind} above its SLO" in d.detail
    # An end-to-end reading without an end-to-end SLO is not held; a reading of NaN is no reading.
    assert decide(llm(latency_s=100.0), LLM).reason is Reason.HOLD
    assert decide(llm(ttft_s=math.nan, itl_s=math.nan), LLM).reason is Reason.HOLD
    # Near one SLO blocks consolidation; roomy on all of them lets it reach the target utilisation.
    assert decide(llm(current_replicas=8, itl_s=0.045), LLM).reason is Reason.HOLD_NEAR_SLO
    roomy = decide(llm(current_replicas=8, load_rps=25.0, peak_load_rps=25.0, ttft_s=0.2, itl_s=0.02), LLM)
    assert (roomy.replicas, roomy.reason) == (3, Reason.CONSOLIDATE)


def test_error_budget_ratio_wins_over_the_interpolated_quantile() -> None:
    # p99 TTFT read inside the (0.1, 0.25] bucket says 92% of a 0.25 s SLO at any load; the share of
    # requests above 0.25 s says 20% of the 1% budget is used: roomy, so consolidation may go further.
    cfg = replace(LLM, ttft_slo_s=0.25)
    interpolated = llm(current_replicas=8, load_rps=25.0, peak_load_rps=25.0, ttft_s=0.23, itl_s=0.02)
    assert decide(interpolated, cfg).reason is Reason.HOLD_NEAR_SLO
    measured = replace(interpolated, ttft_ratio=0.2, itl_ratio=0.1)
    assert (decide(measured, cfg).replicas, decide(measured, cfg).reason) == (3, Reason.CONSOLIDATE)
    # A budget overspent is a breach whatever the quantile says.
    assert decide(replace(measured, current_replicas=4, ttft_ratio=1.6), cfg).reason is Reason.SLO_BREACH
    assert decide(replace(measured, ttft_ratio=math.nan), cfg).reason is Reason.HOLD_NEAR_SLO  # NaN: no ratio


def test_a_budget_overspent_by_chance_is_not_a_breach_but_still_blocks_scale_down() -> None:
    # 900 first tokens in the window at a p99 SLO: 9 misses expected at exactly the SLO. 12 misses
    # (ratio 1.33) come by chance in a fifth of such windows; 20 (ratio 2.2) in fewer than 1 in 1000.
    cfg = replace(LLM, ttft_slo_s=0.25, ttft_quantile=0.99)
    base = llm(current_replicas=8, load_rps=25.0, peak_load_rps=25.0, ttft_s=0.23, itl_s=0.02)
    noisy = replace(base, ttft_ratio=12 / 9, itl_ratio=0.1, ttft_observations=900.0)
    d = decide(noisy, cfg)
    assert d.reason is Reason.HOLD_NEAR_SLO and d.replicas == 8  # no scale-up, and no scale-down
    assert "ttft over the SLO within chance: not a breach" in d.detail
    assert decide(replace(noisy, ttft_ratio=20 / 9), cfg).reason is Reason.SLO_BREACH
    # Few observations: 3 misses of 30 first tokens (budget 0.3) are evidence; the ratio's floor of
    # two misses' worth (ratio 1.5 = 3 misses over 200) is undone before the test.
    few = replace(noisy, ttft_ratio=1.5, ttft_observations=30.0)
    assert decide(few, cfg).reason is Reason.SLO_BREACH
    # Without the count, without the quantile, or with the test off, every ratio over 1 is a breach.
    assert decide(replace(noisy, ttft_observations=None), cfg).reason is Reason.SLO_BREACH
    assert decide(noisy, replace(cfg, ttft_quantile=None)).reason is Reason.SLO_BREACH
    assert decide(noisy, replace(cfg, breach_significance=0.0)).reason is Reason.SLO_BREACH
    # An infinite ratio (above the highest bucket) is a breach whatever the count.
    assert decide(replace(noisy, ttft_ratio=math.inf), cfg).reason is Reason.SLO_BREACH


def test_policy_config_refuses_a_quantile_or_significance_out_of_range() -> None:
    with pytest.raises(ValueError, match="quantile"):
        replace(LLM, ttft_quantile=1.0)
    with pytest.raises(ValueError, match="breach_significance"):
        replace(LLM, breach_significance=1.0)


def test_a_forming_queue_scales_up_before_latency_breaks() -> None:
    d = decide(llm(waiting_requests=20.0, running_requests=40.0, settled_replicas=4), LLM)
    assert (d.replicas, d.reason) == (6, Reason.QUEUE_FORMING)  # 4 x (1 + 20/40)
    assert "20 requests waiting" in d.detail
    # At most double the settled count; at least one more.
    assert decide(llm(waiting_requests=500.0, running_requests=10.0), LLM).replicas == 8
    assert decide(llm(waiting_requests=0.5, running_requests=100.0), LLM).replicas == 5
    # While the first answer comes up (settled still 4), the answer does not compound.
    assert decide(llm(current_replicas=6, settled_replicas=4, waiting_requests=20.0, running_requests=40.0),
                  LLM).replicas == 6  # fmt: skip
    # No queue (0 sustained) or no reading: no step, and the queue blocks scale-down.
    assert decide(llm(waiting_requests=0.0), LLM).reason is Reason.HOLD
    held = decide(
        llm(current_replicas=8, settled_replicas=8, waiting_requests=1.0, running_requests=90.0), LLM
    )
    assert (held.replicas, held.reason) == (9, Reason.QUEUE_FORMING)
    assert decide(llm(current_replicas=10, settled_replicas=5, waiting_requests=2.0), LLM).reason is (
        Reason.HOLD_NEAR_SLO
    )


def test_kv_saturation_scales_up() -> None:
    d = decide(llm(kv_usage_ratio=0.95), LLM)
    assert (d.replicas, d.reason) == (5, Reason.KV_SATURATION)
    assert decide(llm(kv_usage_ratio=0.5), LLM).reason is Reason.HOLD
    assert decide(llm(kv_usage_ratio=0.95), replace(LLM, kv_saturation_ratio=0.99)).reason is Reason.HOLD


def test_capacity_learned_in_tokens_follows_a_change_of_mix() -> None:
    learn = replace(LLM, replica_capacity_rps=None)
    # 6,000 tokens/s per replica at 600 tokens/request = 10 rps per replica: 20 rps fits 3 at 0.9.
    short = llm(current_replicas=8, load_rps=20.0, peak_load_rps=20.0, load_tps=12_000.0, peak_load_tps=12_000.0,
                learned_capacity_tps=6000.0)  # fmt: skip
    d = decide(short, learn)
    assert (d.replicas, d.reason) == (3, Reason.CONSOLIDATE) and "tokens/s" in d.detail
    # The same requests with twice the tokens each: the replicas of twice the load.
    long = replace(short, load_tps=24_000.0, peak_load_tps=24_000.0)
    assert decide(long, learn).replicas == 5  # ceil(24,000 / (6,000 x 0.8))
    # Nothing learned yet (first minutes): hold, wake from zero, breaches and queues still answered.
    blind = llm(current_replicas=3)
    assert decide(blind, learn).reason is Reason.CAPACITY_UNKNOWN and decide(blind, learn).replicas == 3
    zero = llm(current_replicas=0, load_rps=0.0, peak_load_rps=0.0, demand_rps=2.0, ttft_s=None, itl_s=None)
    assert (decide(zero, learn).replicas, decide(zero, learn).reason) == (1, Reason.WAKE)
    assert decide(llm(current_replicas=3, ttft_s=0.9), learn).reason is Reason.SLO_BREACH
    assert decide(llm(current_replicas=3, waiting_requests=5.0), learn).reason is Reason.QUEUE_FORMING
    # The configured capacity overrides what was learned.
    assert decide(short, replace(learn, replica_capacity_rps=5.0)).replicas == 5  # ceil(20 / 4.5)


def test_a_young_workload_does_not_scale_down_on_a_learned_capacity() -> None:
    learn = replace(LLM, replica_capacity_rps=None)
    # 10 rps per replica learned; 20 rps fits 3 at 0.9: a seasoned workload consolidates from 8.
    short = llm(current_replicas=8, load_rps=20.0, peak_load_rps=20.0, load_tps=12_000.0, peak_load_tps=12_000.0,
                learned_capacity_tps=6000.0, history_minutes=30.0)  # fmt: skip
    assert (decide(short, learn).replicas, decide(short, learn).reason) == (3, Reason.CONSOLIDATE)
    # Four minutes old: the learned value is an extrapolation not yet tested at the knee: hold, say why.
    young = decide(replace(short, history_minutes=4.0), learn)
    assert (young.replicas, young.reason) == (8, Reason.HOLD)
    assert "young workload (4 of 10 minutes of history)" in young.detail
    # Nor one replica at a time for an energy target.
    greedy = replace(learn, target_joules_per_request=1.0)
    assert decide(replace(short, history_minutes=4.0, joules_per_request=5.0), greedy).replicas == 8
    # It still scales up on load; a source that does not say how much history it has is not young;
    # a configured capacity (a load test's) consolidates at any age.
    busy = replace(short, current_replicas=2, load_tps=30_000.0, peak_load_tps=30_000.0, history_minutes=4.0)
    assert decide(busy, learn).replicas > 2
    assert decide(replace(short, history_minutes=None), learn).reason is Reason.CONSOLIDATE
    assert decide(replace(short, history_minutes=4.0), LLM).reason is Reason.CONSOLIDATE


def test_a_configured_capacity_is_a_floor_that_seasoned_evidence_raises() -> None:
    # Configured 5 rps; the replicas served 10 rps each (6,000 tokens/s at 600 tokens/request) with
    # every SLO held: after ten minutes of history the learned value raises the capacity.
    cfg = replace(LLM, replica_capacity_rps=5.0)
    served = llm(current_replicas=8, load_rps=20.0, peak_load_rps=20.0, load_tps=12_000.0,
                 peak_load_tps=12_000.0, learned_capacity_tps=6000.0, history_minutes=30.0)  # fmt: skip
    d = decide(served, cfg)
    assert (d.replicas, d.reason) == (3, Reason.CONSOLIDATE)  # ceil(20 / (10 x 0.8))
    assert "raised by what replicas served" in d.detail
    # Young (under ten minutes of history): the load test stands, ceil(20 / (5 x 0.9)) = 5.
    assert decide(replace(served, history_minutes=5.0), cfg).replicas == 5
    assert decide(replace(served, history_minutes=None), cfg).replicas == 5
    # Learned below the configured value: the configured one is the floor.
    low = replace(served, learned_capacity_tps=1200.0)  # 2 rps per replica
    d = decide(low, cfg)
    assert d.replicas == 5 and "configured" in d.detail and "raised" not in d.detail


def test_burst_headroom_from_history_holds_replicas_for_the_next_cold_start() -> None:
    # 20 rps fits 3 replicas at 10 x 0.9; the workload's rate has risen x1.5 within a cold start.
    at = {"load_rps": 20.0, "peak_load_rps": 20.0}
    d = decide(llm(current_replicas=3, burst_rise=1.5, **at), LLM)
    assert (d.replicas, d.reason) == (4, Reason.BURST_HEADROOM)  # ceil(30 / 9)
    assert "headroom x1.50" in d.detail
    assert decide(llm(current_replicas=2, burst_rise=1.5, **at), LLM).reason is Reason.SCALE_UP_LOAD
    # Consolidation keeps it; a rise below 1 is no headroom, and it is bounded.
    assert decide(llm(current_replicas=8, burst_rise=1.5, **at), LLM).replicas == 4  # ceil(30 / 8)
    assert decide(llm(current_replicas=3, burst_rise=0.4, **at), LLM).reason is Reason.HOLD
    assert decide(llm(current_replicas=3, burst_rise=50.0, **at), LLM).replicas == 5  # x2: ceil(40 / 9)


def test_a_young_workload_gets_the_usual_margin_until_its_history_sizes_the_headroom() -> None:
    young = replace(LLM, young_burst_headroom=1.3)
    at = {"load_rps": 18.0, "peak_load_rps": 18.0}
    d = decide(llm(current_replicas=2, history_minutes=3.0, **at), young)
    assert (d.replicas, d.reason) == (3, Reason.BURST_HEADROOM)  # ceil(18 x 1.3 / 9); 2 carry 18 rps
    assert "headroom x1.30" in d.detail
    # Once ten minutes of rises exist, they replace it (here: a workload that never rose); a source
    # that does not say how much history it has gets no margin.
    assert (
        decide(llm(current_replicas=2, burst_rise=1.0, history_minutes=30.0, **at), young).reason
        is Reason.HOLD
    )
    assert decide(llm(current_replicas=2, **at), young).reason is Reason.HOLD
    with pytest.raises(ValueError, match="young_burst_headroom"):
        replace(LLM, young_burst_headroom=3.0)


def test_forecast_floor_scales_up_ahead_and_holds_consolidation() -> None:
    at = {"load_rps": 20.0, "peak_load_rps": 20.0}  # 3 replicas now
    d = decide(llm(current_replicas=3, forecast_rps=40.0, **at), LLM)
    assert (d.replicas, d.reason) == (5, Reason.FORECAST)  # ceil(40 / 9)
    assert decide(llm(current_replicas=8, forecast_rps=40.0, **at), LLM).replicas == 5
    # A falling forecast never lowers the reactive answer.
    assert decide(llm(current_replicas=3, forecast_rps=1.0, **at), LLM).reason is Reason.HOLD
    assert decide(llm(current_replicas=3, forecast_rps=math.inf, **at), LLM).reason is Reason.HOLD
    # A breach on a rising load plans for the forecast too, not one replica at a time.
    breach = decide(llm(current_replicas=3, ttft_s=0.7, forecast_rps=40.0, **at), LLM)
    assert (breach.replicas, breach.reason) == (5, Reason.SLO_BREACH)
    assert decide(llm(current_replicas=3, ttft_s=0.7, **at), LLM).replicas == 4


# ---- properties ---------------------------------------------------------------------------------

configs = st.builds(
    lambda lo, span, slo, cap, util, down, budget, watts, ttft: PolicyConfig(
        min_replicas=lo,
        max_replicas=lo + span,
        latency_slo_s=slo,
        ttft_slo_s=ttft,
        replica_capacity_rps=cap,
        target_utilization=util,
        scale_down_utilization=util * down,
        power_budget_watts=budget,
        replica_power_watts=watts,
    ),
    st.integers(0, 5),
    st.integers(1, 40),
    st.floats(0.05, 30),
    st.one_of(st.none(), st.floats(0.1, 500)),
    st.floats(0.3, 1.0),
    st.floats(0.3, 1.0),
    st.one_of(st.none(), st.floats(100, 50_000)),
    st.one_of(st.none(), st.floats(50, 1000)),
    st.one_of(st.none(), st.floats(0.01, 10)),
)
observations = st.builds(
    Observation,
    current_replicas=st.integers(0, 60),
    load_rps=st.floats(0, 5000),
    peak_load_rps=st.floats(0, 5000),
    latency_s=st.one_of(st.none(), st.floats(0, 100)),
    idle_for_s=st.floats(0, 2000),
    demand_rps=st.one_of(st.none(), st.floats(0, 5000)),
    learned_capacity_rps=st.one_of(st.none(), st.floats(0.1, 500)),
    settled_replicas=st.one_of(st.none(), st.integers(0, 60)),
    workload_power_watts=st.one_of(st.none(), st.floats(0, 50_000)),
    historical_replica_power_watts=st.one_of(st.none(), st.floats(1, 2000)),
    joules_per_request=st.one_of(st.none(), st.floats(0, 1000)),
    ttft_s=st.one_of(st.none(), st.floats(0, 100)),
    itl_s=st.one_of(st.none(), st.floats(0, 10)),
    waiting_requests=st.one_of(st.none(), st.floats(0, 1000)),
    running_requests=st.one_of(st.none(), st.floats(0, 1000)),
    kv_usage_ratio=st.one_of(st.none(), st.floats(0, 1)),
    burst_rise=st.one_of(st.none(), st.floats(0, 100)),
    forecast_rps=st.one_of(st.none(), st.floats(0, 5000)),
)


def _budget_allows_min(o: Observation, c: PolicyConfig) -> bool:
    ceiling = budget_ceiling(o, c)
    return ceiling is None or ceiling >= c.min_replicas


@settings(max_examples=300, deadline=None)
@given(observations, configs)
def test_never_outside_min_max(o: Observation, c: PolicyConfig) -> None:
    d = decide(o, c)
    assert (d.replicas == 0 and c.min_replicas == 0) or c.min_replicas <= d.replicas <= c.max_replicas
    assert not d.active or d.replicas > 0


@settings(max_examples=300, deadline=None)
@given(observations, configs)
def test_never_above_budget(o: Observation, c: PolicyConfig) -> None:
    assume(_budget_allows_min(o, c))
    ceiling = budget_ceiling(o, c)
    if ceiling is not None:
        assert decide(o, c).replicas <= ceiling


@settings(max_examples=300, deadline=None)
@given(observations, configs, st.floats(0, 5000))
def test_monotone_in_load(o: Observation, c: PolicyConfig, extra: float) -> None:
    higher = replace(o, load_rps=o.load_rps + extra, peak_load_rps=o.peak_load_rps + extra)
    assert decide(o, c).replicas <= decide(higher, c).replicas


@settings(max_examples=300, deadline=None)
@given(observations, configs, st.floats(1.0001, 20), st.integers(1, 60))
def test_slo_breach_never_scales_down(o: Observation, c: PolicyConfig, over: float, cur: int) -> None:
    o = replace(o, latency_s=c.latency_slo_s * over, current_replicas=min(cur, c.max_replicas))
    ceiling = budget_ceiling(o, c)
    assume(ceiling is None or o.current_replicas <= ceiling)
    assert decide(o, c).replicas >= o.current_replicas


@settings(max_examples=200, deadline=None)
@given(
    configs,
    st.integers(0, 40),
    st.floats(0, 3000),
    st.floats(0, 1.0),
    st.one_of(st.none(), st.floats(50, 1000)),
)
def test_no_flapping_on_constant_load(
    c: PolicyConfig, start: int, load: float, latency_fraction: float, watts_per_replica: float | None
) -> None:
    """Feed each answer back as the current count, with the window's history derived from the
    (constant) load: the answer settles after at most two steps and then never changes."""
    current, answers = start, []
    for _ in range(8):
        o = Observation(
            current_replicas=current,
            load_rps=load,
            peak_load_rps=load,
            latency_s=latency_fraction * c.latency_slo_s,  # SLO held: the load is constant and served
            workload_power_watts=None if watts_per_replica is None else watts_per_replica * current,
            historical_replica_power_watts=watts_per_replica,
        )
        current = decide(o, c).replicas
        answers.append(current)
    assert len(set(answers[2:])) == 1, answers


def test_decisions_are_finite_integers_for_extreme_inputs() -> None:
    d = decide(obs(load_rps=1e12, peak_load_rps=1e12), CFG)
    assert d.replicas == 20 and isinstance(d.replicas, int) and not math.isnan(d.replicas)


@settings(max_examples=300, deadline=None)
@given(observations, configs, st.floats(1.0001, 20))
def test_one_breach_is_answered_once_while_its_replicas_settle(
    o: Observation, c: PolicyConfig, over: float
) -> None:
    """Feed the breach answer back as the current count with the settled count still the one before
    the breach (its replicas are coming up, latency still shows the breach): the answer does not grow."""
    assume(o.current_replicas >= 1)
    c = replace(c, power_budget_watts=None)  # observed watts per replica would change with the count
    o = replace(o, latency_s=c.latency_slo_s * over, settled_replicas=o.current_replicas)
    first = decide(o, c)
    assume(first.replicas >= o.current_replicas)  # maxReplicas may have capped it
    again = decide(replace(o, current_replicas=first.replicas), c)
    assert again.replicas == first.replicas
