"""The replica policy: worked examples and properties (hypothesis)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scaler.policy import Observation, PolicyConfig, Reason, ReplicaDecision, advisory, budget_ceiling, decide

CFG = PolicyConfig(min_replicas=1, max_replicas=20, latency_slo_s=2.0, replica_capacity_rps=10.0)


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
    assert "0.5 x SLO" in d.detail
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


# ---- properties ---------------------------------------------------------------------------------

configs = st.builds(
    lambda lo, span, slo, cap, util, down, budget, watts: PolicyConfig(
        min_replicas=lo,
        max_replicas=lo + span,
        latency_slo_s=slo,
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
