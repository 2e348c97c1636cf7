"""The clock governor (feedforward from the batch, queue, bridge, fallbacks) and its learned profile."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumodel.model import H100_LLAMA_8B
from powercap.controller import ControllerConfig
from powercap.governor import (
    GovernorConfig,
    GovernorReading,
    GovernorState,
    ServerLoad,
    TtftInterval,
    feedforward_clock,
    govern,
    history_ttft_ratio,
    initial_governor_state,
    share_within,
    tail_share_over,
    ttft_ratio,
)
from powercap.profile import MAX_BATCH_BINS, MAX_CLOCK_BINS, MAX_RATIO, IterationProfile, prior_of

CLOCKS = (*(float(c) for c in range(345, 1981, 15)), 1980.0)
CTRL = ControllerConfig(
    actuator="clocks", floor=345.0, ceiling=1980.0, target_latency_s=1.0, max_step_down=90.0
)
CFG = GovernorConfig(CTRL, tuple(sorted(set(CLOCKS))), itl_target_s=0.025, ttft_target_s=0.25)


# 200 first tokens in the window, all under 0.1 s: TTFT far within its 0.25 s target.
FAST_TTFT = ((0.05, 150.0), (0.1, 50.0), (0.25, 0.0), (math.inf, 0.0))
# 3% over the target: three times the 1% miss budget.
SLOW_TTFT = ((0.1, 150.0), (0.25, 44.0), (0.5, 6.0), (math.inf, 0.0))


def profile() -> IterationProfile:
    return IterationProfile.start(prior_of(H100_LLAMA_8B), (345.0, 1980.0), max_batch=256)


def fresh() -> GovernorState:
    return initial_governor_state(CFG, profile())


def reading(now: float, running: float, waiting: float = 0.0, **kw: object) -> GovernorReading:
    base: dict[str, object] = {
        "now_s": now,
        "age_s": 0.0,
        "itl_s": 0.008,
        "ttft_buckets": FAST_TTFT,
        # KV use moves a little between scrapes (a live server's does), so the gauges never read as
        # frozen unless a test says so.
        "load": ServerLoad(running, waiting, 0.3 + (now % 20.0) / 1000),
    }
    base.update(kw)
    return GovernorReading(**base)  # type: ignore[arg-type]


def run_until_settled(state: GovernorState, running: float, n: int = 40) -> GovernorState:
    for i in range(n):
        state, _ = govern(state, reading(5.0 * i, running), CFG)
    return state


# -- profile -----------------------------------------------------------------------------------------
def test_profile_starts_from_gpumodel_prior() -> None:
    p = profile()
    assert p.estimate_s(1980.0, 8) == pytest.approx(H100_LLAMA_8B.iteration_time_s(8))
    assert p.estimate_s(990.0, 8) == pytest.approx(H100_LLAMA_8B.iteration_time_s(8, 0.5))


def test_profile_learns_toward_observations_and_carries_over_to_unseen_bins() -> None:
    p = profile()
    prior = p.estimate_s(1500.0, 32)
    for _ in range(30):
        p = p.observe(1500.0, 32, prior * 1.5)
    assert p.estimate_s(1500.0, 32) == pytest.approx(prior * 1.5, rel=0.01)
    # An unseen bin takes the profile-wide ratio, learned from the same observations.
    assert p.estimate_s(600.0, 4) == pytest.approx(profile().estimate_s(600.0, 4) * 1.5, rel=0.01)
    # Moving back: it follows again.
    for _ in range(30):
        p = p.observe(1500.0, 32, prior)
    assert p.estimate_s(1500.0, 32) == pytest.approx(prior, rel=0.01)


def test_profile_stays_bounded_and_ignores_what_is_not_a_number() -> None:
    p = profile()
    assert len(p.clock_edges) <= MAX_CLOCK_BINS and len(p.batch_edges) <= MAX_BATCH_BINS
    size = len(p.ratios)
    base = p.estimate_s(1980.0, 16)
    for value in (math.nan, math.inf, -1.0, 0.0):
        assert p.observe(1980.0, 16, value) is p
    assert p.observe(math.nan, 16, 0.01) is p
    for _ in range(1000):
        p = p.observe(1980.0, 16, 1e6)  # a stall, again and again
    assert len(p.ratios) == size
    assert p.estimate_s(1980.0, 16) <= base * MAX_RATIO * (1 + 1e-9)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(100, 3000),
            st.floats(0, 2000),
            st.floats(1e-6, 10, allow_nan=False, allow_infinity=False),
        ),
        max_size=60,
    )
)
def test_profile_ratios_stay_within_the_clamp(obs: list[tuple[float, float, float]]) -> None:
    p = profile()
    for clock, batch, t in obs:
        p = p.observe(clock, batch, t)
    assert all(r is None or 0.25 <= r <= 4.0 for r in p.ratios)
    assert 0.25 <= p.global_ratio <= 4.0


# -- feedforward -------------------------------------------------------------------------------------
def test_picks_a_lower_clock_at_small_batch_than_at_large() -> None:
    s = fresh()
    small = feedforward_clock(s, 4, CFG, None, 1980.0)
    large = feedforward_clock(s, 250, CFG, None, 1980.0)
    assert small < large
    assert small < 1000.0


def test_ttft_misses_scaled_to_a_lower_clock_hold_it_up() -> None:
    s = fresh()
    # Every first token under 0.1 s at 1980 MHz: ITL alone would allow the floor, TTFT stops the clock
    # about where 0.1 s stretches to the 0.25 s target (1980 * 0.1 / 0.25 = 792 MHz; a little lower,
    # since the tail of the 0.05-0.1 s bucket is read log-linearly).
    assert feedforward_clock(s, 4, CFG, None, 1980.0) == 345.0
    assert 600.0 < feedforward_clock(s, 4, CFG, FAST_TTFT, 1980.0) < 990.0
    # 50 of 200 between 0.1 and 0.25 s: a lower clock pushes some over the target; the governor stops
    # where the misses would use up more than the headroom's share of the budget.
    near = ((0.1, 150.0), (0.25, 50.0), (math.inf, 0.0))
    clock = feedforward_clock(s, 4, CFG, near, 1980.0)
    assert clock > feedforward_clock(s, 4, CFG, None, 1980.0)
    ratio = ttft_ratio(near, CFG, 1980.0 / clock)
    assert ratio is not None and ratio <= CFG.headroom


def test_share_within_is_exact_at_bounds_and_counts_inf_as_over() -> None:
    buckets = ((0.1, 50.0), (0.25, 40.0), (math.inf, 10.0))
    assert share_within(buckets, 0.25) == pytest.approx(0.9)
    assert share_within(buckets, 0.1) == pytest.approx(0.5)
    assert share_within(buckets, 0.175) == pytest.approx(0.7)
    assert share_within(buckets, 1e9) == pytest.approx(0.9)
    assert share_within(((math.inf, 0.0),), 1.0) is None


def test_tail_share_over_is_exact_at_bounds_and_log_linear_inside_a_bucket() -> None:
    buckets = ((0.1, 890.0), (0.25, 100.0), (math.inf, 10.0))
    assert tail_share_over(buckets, 0.1) == pytest.approx(0.11)
    assert tail_share_over(buckets, 0.25) == pytest.approx(0.01)
    # Half-way through the bucket, the geometric mean of the survivals at its bounds: a tail falling
    # off exponentially, not the 6% a linear read gives.
    assert tail_share_over(buckets, 0.175) == pytest.approx(math.sqrt(0.11 * 0.01))
    assert 1 - (share_within(buckets, 0.175) or 0.0) == pytest.approx(0.06)
    assert tail_share_over(buckets, 1e9) == pytest.approx(0.01)  # the +Inf bucket is over any bound
    # Nothing seen above a bucket: half an observation there, never zero.
    empty_top = ((0.1, 90.0), (0.25, 10.0), (math.inf, 0.0))
    inside = tail_share_over(empty_top, 0.2)
    assert inside == pytest.approx(0.1 * (0.5 / 10) ** (2 / 3))
    assert tail_share_over(((math.inf, 0.0),), 1.0) is None


def test_ttft_history_scales_each_interval_from_the_clock_it_came_at() -> None:
    # A breach at 990 MHz (first tokens at 0.3-0.5 s), then the ceiling: read from the clock they
    # came at, those misses say nothing bad about 1980 MHz (0.5 s at 990 is 0.25 s at 1980) ...
    slow_at_990 = ((0.1, 0.0), (0.25, 0.0), (0.5, 20.0), (math.inf, 0.0))
    clean_at_1980 = ((0.1, 200.0), (0.25, 0.0), (0.5, 0.0), (math.inf, 0.0))
    s = replace(
        fresh(),
        ttft_history=(
            TtftInterval(5.0, 990.0, slow_at_990, 20.0),
            TtftInterval(10.0, 1980.0, clean_at_1980, 200.0),
        ),
    )
    at_ceiling = history_ttft_ratio(s, CFG, 1980.0)
    at_breach = history_ttft_ratio(s, CFG, 990.0)
    assert at_ceiling is not None and at_breach is not None
    assert at_ceiling < CFG.headroom < at_breach
    # ... while the window's merged buckets scaled from the clock in force (the ceiling) take them
    # for misses at the ceiling itself.
    merged = ((0.1, 200.0), (0.25, 0.0), (0.5, 20.0), (math.inf, 0.0))
    naive = ttft_ratio(merged, CFG)
    assert naive is not None and naive > 1.0


def test_govern_records_the_interval_first_tokens_at_the_clock_in_force_and_forgets_old_ones() -> None:
    s = fresh()
    interval = ((0.1, 20.0), (0.25, 0.0), (math.inf, 0.0))
    steps = int(CFG.ttft_history_s / 5.0) + 30
    last = 5.0 * (steps - 1)
    for i in range(steps):
        s, _ = govern(s, reading(5.0 * i, 4, ttft_interval_buckets=interval), CFG)
    assert len(s.ttft_history) == CFG.ttft_history_s / 5.0  # bounded by the window
    assert all(last - CFG.ttft_history_s < h.at_s <= last for h in s.ttft_history)
    # Each entry carries the clock decided the interval before (the one the first tokens came at).
    clocks = [h.clock_mhz for h in s.ttft_history]
    assert clocks == sorted(clocks, reverse=True) and clocks[-1] < 1980.0
    # Counts that are not numbers are never recorded.
    bad = ((0.1, math.nan), (math.inf, 0.0))
    s2, _ = govern(s, reading(last + 5.0, 4, ttft_interval_buckets=bad), CFG)
    assert s2.ttft_history[-1].at_s == last


def test_governor_walks_down_at_small_batch_in_bounded_steps_with_reason() -> None:
    s = fresh()
    s, d = govern(s, reading(0.0, 4), CFG)
    assert d.reason == "feedforward" and d.setpoint == 1980.0 - 90.0
    s = run_until_settled(s, 4)
    target = feedforward_clock(s, 4, CFG, FAST_TTFT, s.controller.setpoint)
    assert s.controller.setpoint <= target + 90.0
    assert s.controller.setpoint < 1200.0


def test_a_forming_queue_raises_to_the_ceiling_within_one_interval() -> None:
    s = run_until_settled(fresh(), 4)
    low = s.controller.setpoint
    assert low < 1980.0
    s, d = govern(s, reading(500.0, 256, waiting=12), CFG)
    assert d.action == "set" and d.setpoint == 1980.0 and d.reason == "queue_forming"
    # So does a KV cache near full.
    s2 = run_until_settled(fresh(), 4)
    _, d2 = govern(s2, reading(500.0, 20, load=ServerLoad(20, 0, 0.97)), CFG)
    assert d2.setpoint == 1980.0 and d2.reason == "queue_forming"


def test_a_larger_batch_raises_at_once() -> None:
    s = run_until_settled(fresh(), 4)
    low = s.controller.setpoint
    s, d = govern(s, reading(500.0, 250), CFG)
    assert d.setpoint > low and d.reason == "feedforward"
    assert d.setpoint == feedforward_clock(s, 250, CFG, FAST_TTFT, low)


def test_bridge_holds_the_ceiling_while_scaling_up_and_releases_after() -> None:
    s = run_until_settled(fresh(), 4)
    for i in range(5):
        s, d = govern(s, reading(500.0 + 5 * i, 4, scaling_up=True), CFG)
        assert d.setpoint == 1980.0 and d.reason == "scale_up_bridge"
    s, d = govern(s, reading(525.0, 4, scaling_up=False), CFG)
    assert d.reason == "feedforward" and d.setpoint == 1980.0 - 90.0


@pytest.mark.parametrize(
    ("load", "reason"),
    [
        (None, "state_unusable"),
        (ServerLoad(math.nan, 0, 0.2), "state_unusable"),
        (ServerLoad(None, 0, 0.2), "state_unusable"),
        (ServerLoad(4, -1, 0.2), "state_unusable"),
        (ServerLoad(4, 0, math.inf), "state_unusable"),
    ],
)
def test_bad_server_state_falls_back_to_the_ceiling(load: ServerLoad | None, reason: str) -> None:
    s = run_until_settled(fresh(), 4)
    assert s.controller.setpoint < 1980.0
    _, d = govern(s, reading(500.0, 0, load=load), CFG)
    assert d.setpoint == 1980.0 and d.reason == reason


def test_a_frozen_batch_gauge_falls_back_to_the_ceiling() -> None:
    s = fresh()
    frozen = ServerLoad(4, 0, 0.3)
    decisions = []
    for i in range(20):
        s, d = govern(s, reading(5.0 * i, 4, load=frozen), CFG)
        decisions.append(d)
    assert decisions[0].reason == "feedforward"
    assert decisions[-1].reason == "state_frozen" and decisions[-1].setpoint == 1980.0
    # An idle server's gauges stay at 0 legitimately: not frozen.
    s = fresh()
    for i in range(20):
        s, d = govern(s, reading(5.0 * i, 0, load=ServerLoad(0, 0, 0.0)), CFG)
    assert d.reason.startswith("feedforward")


def test_safety_rules_win_over_feedforward() -> None:
    s = run_until_settled(fresh(), 4)
    # A breach of either target jumps to the ceiling.
    _, d = govern(s, reading(500.0, 4, itl_s=0.020), CFG)  # x 1.5 spread = 30 ms > 25 ms
    assert d.reason == "slo_breach" and d.setpoint == 1980.0
    _, d = govern(s, reading(500.0, 4, ttft_buckets=SLOW_TTFT), CFG)
    assert d.reason == "slo_breach" and d.setpoint == 1980.0
    # Stale latency restores the original (unlocked) clock, even with fresh gauges.
    _, d = govern(s, reading(500.0, 4, age_s=31.0), CFG)
    assert d.action == "restore" and d.reason == "stale_metrics"
    # No latency yet: hold, never lower.
    _, d = govern(s, reading(500.0, 4, itl_s=None, ttft_buckets=None), CFG)
    assert d.reason == "no_data" and d.setpoint == s.controller.setpoint
    # Near the slowdown temperature: the thermal guard lowers one step.
    _, d = govern(s, reading(500.0, 250, temperature_c=88.0, slowdown_temperature_c=90.0), CFG)
    assert d.setpoint <= s.controller.setpoint and d.reason in ("thermal", "at_floor")
    warm = replace(s, controller=replace(s.controller, setpoint=1500.0))
    _, d = govern(warm, reading(500.0, 250, temperature_c=88.0, slowdown_temperature_c=90.0), CFG)
    assert d.reason == "thermal" and d.setpoint == 1500.0 - 90.0


def test_learned_bias_raises_the_clock_the_prior_would_pick() -> None:
    s = fresh()
    naive = feedforward_clock(s, 64, CFG, None, 1980.0)
    # The server is slower than the prior says (interference, another model): the mean ITL observed
    # at the ceiling is 1.6x the prior's.
    observed = s.profile.estimate_s(1980.0, 64) * 1.6
    for i in range(20):
        s = replace(s, controller=replace(s.controller, setpoint=1980.0))
        s, _ = govern(s, reading(5.0 * i, 64 + (i % 2), itl_s=observed, itl_mean_s=observed), CFG)
    learned = feedforward_clock(s, 64, CFG, None, 1980.0)
    assert learned > naive


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.just(math.nan), st.floats(-5, 600)),
            st.one_of(st.none(), st.just(math.nan), st.floats(-5, 50)),
            st.one_of(st.none(), st.floats(0, 0.1)),
            st.one_of(st.none(), st.booleans()),
        ),
        max_size=30,
    )
)
def test_never_outside_bounds_and_steps_down_bounded(
    rows: list[tuple[float | None, float | None, float | None, bool | None]],
) -> None:
    s = fresh()
    for i, (running, waiting, itl, up) in enumerate(rows):
        before = s.controller.setpoint
        load = ServerLoad(running, waiting, 0.5) if running is not None else None
        s, d = govern(s, reading(5.0 * i, 0, load=load, itl_s=itl, scaling_up=up), CFG)
        assert CTRL.floor <= d.setpoint <= CTRL.ceiling or d.action == "restore"
        if d.action == "set" and d.setpoint < before:
            assert before - d.setpoint <= CTRL.max_step_down + 1e-9


def test_config_refuses_what_it_cannot_govern() -> None:
    with pytest.raises(ValueError, match="clocks"):
        GovernorConfig(replace(CTRL, actuator="power"), CLOCKS, 0.025, None)
    with pytest.raises(ValueError, match="ITL or a TTFT"):
        GovernorConfig(CTRL, CLOCKS, None, None)
    with pytest.raises(ValueError, match="itl_target_s"):
        GovernorConfig(CTRL, CLOCKS, math.nan, None)


# 300 first tokens, 4 over the 0.25 s target: 1.33x the 1% budget, within a window's chance.
NOISY_TTFT = ((0.1, 250.0), (0.25, 46.0), (0.5, 4.0), (math.inf, 0.0))


def test_a_few_misses_at_a_low_rate_do_not_jump_to_the_ceiling() -> None:
    s = run_until_settled(fresh(), 4)
    low = s.controller.setpoint
    assert low < 1980.0
    _, d = govern(s, reading(500.0, 4, ttft_buckets=NOISY_TTFT), CFG)
    assert d.reason != "slo_breach" and d.setpoint < 1980.0
    # The same window with the evidence test off (every share over the budget a breach): the ceiling.
    strict = replace(CFG, breach_significance=0.0)
    _, d = govern(s, reading(500.0, 4, ttft_buckets=NOISY_TTFT), strict)
    assert d.reason == "slo_breach" and d.setpoint == 1980.0
    # Three times the budget in 200 is evidence: the ceiling at once (as test_safety_rules... shows).
    _, d = govern(s, reading(500.0, 4, ttft_buckets=SLOW_TTFT), CFG)
    assert d.reason == "slo_breach"
