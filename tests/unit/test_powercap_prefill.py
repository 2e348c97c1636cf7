"""The governor's prompt-rate feedforward: the prefill model (M/G/1 prompt queue, learned online), a
prompt-rate step raising the clock in the same interval, and the fallbacks of a missing or frozen
prompt counter."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumodel.model import H100_LLAMA_8B
from powercap.controller import ControllerConfig
from powercap.governor import (
    GovernorConfig,
    GovernorReading,
    GovernorState,
    PromptLoad,
    ServerLoad,
    govern,
    initial_governor_state,
    prompt_ttft_s,
)
from powercap.prefill import PrefillProfile
from powercap.profile import MAX_RATIO, MIN_RATIO, IterationProfile, prior_of

CLOCKS = tuple(float(c) for c in range(345, 1981, 15))
CTRL = ControllerConfig(
    actuator="clocks", floor=345.0, ceiling=1980.0, target_latency_s=1.0, max_step_down=90.0
)
CFG = GovernorConfig(CTRL, CLOCKS, itl_target_s=0.025, ttft_target_s=0.25)
FAST_TTFT = ((0.05, 150.0), (0.1, 50.0), (0.25, 0.0), (math.inf, 0.0))
MEAN_PROMPT = 1000.0
BASE_RATE = 12_000.0
"""Prompt tokens per second: 30% of the prior's prefill rate at the top clock."""


def prefill() -> PrefillProfile:
    return PrefillProfile.start(H100_LLAMA_8B.prefill_tokens_per_s, 1980.0)


def fresh() -> GovernorState:
    profile = IterationProfile.start(prior_of(H100_LLAMA_8B), (345.0, 1980.0), max_batch=256)
    return initial_governor_state(CFG, profile, prefill())


def steady(rate: float) -> PromptLoad:
    return PromptLoad(rate, window_tokens_per_s=BASE_RATE, window_mean_tokens=MEAN_PROMPT)


def reading(now: float, prompt: PromptLoad | None) -> GovernorReading:
    # A small batch: the ITL target leaves every clock open; TTFT decides.
    load = ServerLoad(4.0, 0.0, 0.3 + (now % 20.0) / 1000)
    return GovernorReading(now, 0.0, 0.008, FAST_TTFT, load, prompt=prompt, interval_s=5.0)


def settle(state: GovernorState, n: int = 40) -> GovernorState:
    for i in range(n):
        state, _ = govern(state, reading(5.0 * i, steady(BASE_RATE)), CFG)
    return state


# -- the model ---------------------------------------------------------------------------------------
def test_prefill_starts_from_gpumodel_prior_and_scales_with_the_clock() -> None:
    p = prefill()
    assert p.rate_tokens_per_s(1980.0) == pytest.approx(H100_LLAMA_8B.prefill_tokens_per_s)
    assert p.rate_tokens_per_s(990.0) == pytest.approx(H100_LLAMA_8B.prefill_tokens_per_s / 2)
    # No load: the mean TTFT is the prompt's own prefill.
    assert p.mean_ttft_s(1980.0, 0.0, 4000.0) == pytest.approx(0.1)


def test_predicted_ttft_grows_with_the_prompt_rate_and_without_bound_at_saturation() -> None:
    p = prefill()
    rates = [0.0, 10_000.0, 20_000.0, 30_000.0, 39_000.0]
    ttfts = [p.ttft_quantile_s(1980.0, r, MEAN_PROMPT, 0.99) for r in rates]
    assert ttfts == sorted(ttfts) and ttfts[-1] > 10 * ttfts[0]
    assert p.ttft_quantile_s(1980.0, 40_000.0, MEAN_PROMPT, 0.99) == math.inf
    # At M/M/1 (scv 1) the time in system is exponential: its p99 is ln(100) x its mean.
    mean = p.mean_ttft_s(1980.0, 20_000.0, MEAN_PROMPT)
    assert mean == pytest.approx(0.025 / (1 - 0.5))
    assert p.ttft_quantile_s(1980.0, 20_000.0, MEAN_PROMPT, 0.99) == pytest.approx(mean * math.log(100))


def test_prefill_learns_a_slower_gpu_from_the_observed_mean_ttft() -> None:
    slower = PrefillProfile(H100_LLAMA_8B.prefill_tokens_per_s, 1980.0, ratio=1.6)
    p = prefill()
    for clock, rate in [(1980.0, 8000.0), (1200.0, 5000.0), (1500.0, 12_000.0)] * 10:
        observed = slower.mean_ttft_s(clock, rate, MEAN_PROMPT)
        p = p.observe(clock, rate, MEAN_PROMPT, observed, first_tokens=40.0)
    assert p.ratio == pytest.approx(1.6, rel=0.02)
    assert p.rate_tokens_per_s(1980.0) == pytest.approx(slower.rate_tokens_per_s(1980.0), rel=0.02)


def test_one_first_token_moves_the_estimate_less_than_a_busy_interval() -> None:
    p = prefill()
    slow = 10 * p.mean_ttft_s(1980.0, 8000.0, MEAN_PROMPT)
    one = p.observe(1980.0, 8000.0, MEAN_PROMPT, slow, first_tokens=1.0)
    many = p.observe(1980.0, 8000.0, MEAN_PROMPT, slow, first_tokens=100.0)
    assert 1.0 < one.ratio < many.ratio


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        max_size=30,
    )
)
def test_prefill_stays_in_the_clamp_and_ignores_what_is_not_a_number(
    obs: list[tuple[float, float, float, float]],
) -> None:
    p = prefill()
    for clock, rate, ttft, firsts in obs:
        p = p.observe(clock, rate, MEAN_PROMPT, ttft, firsts)
        assert MIN_RATIO <= p.ratio <= MAX_RATIO and math.isfinite(p.ratio)


# -- the feedforward ---------------------------------------------------------------------------------
def test_a_prompt_rate_step_raises_the_clock_within_one_interval() -> None:
    s = settle(fresh())
    before = s.controller.setpoint
    assert CFG.controller.floor < before < CFG.controller.ceiling
    # The settled clock holds the prompt queue's TTFT at the steady rate, not at 1.5x.
    limit = CFG.headroom * 0.25
    assert prompt_ttft_s(s, CFG, before) <= limit
    # The very next interval counts 1.5x the prompt tokens: the clock rises in that same decision.
    s, d = govern(s, reading(200.0, steady(1.5 * BASE_RATE)), CFG)
    assert d.reason == "feedforward" and d.setpoint > before
    assert prompt_ttft_s(s, CFG, d.setpoint) <= limit < prompt_ttft_s(s, CFG, before)


def test_without_a_prompt_model_the_same_step_goes_unseen() -> None:
    # The ablation: the same state, no prefill model (the governor before the prompt feedforward).
    s = settle(fresh())
    before = s.controller.setpoint
    blind = GovernorState(s.controller, s.profile, s.gauges, s.gauges_since_s, s.previous_running)
    _, d = govern(blind, reading(200.0, steady(1.5 * BASE_RATE)), CFG)
    assert d.setpoint <= before


def test_a_falling_prompt_rate_lowers_only_as_the_window_forgets() -> None:
    s = settle(fresh())
    before = s.controller.setpoint
    # A quiet interval, the window still busy: planned at the window's rate, so no drop below it.
    s, d = govern(s, reading(200.0, PromptLoad(0.0, 0.0, None, BASE_RATE, MEAN_PROMPT)), CFG)
    assert d.setpoint >= before - CFG.controller.max_step_down
    assert prompt_ttft_s(s, CFG, d.setpoint) > 0


# -- fallbacks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        (PromptLoad(None), "prompt_rate_unusable"),
        (PromptLoad(math.nan), "prompt_rate_unusable"),
        (PromptLoad(-5.0), "prompt_rate_unusable"),
        (PromptLoad(BASE_RATE, window_tokens_per_s=math.inf), "prompt_rate_unusable"),
        (PromptLoad(0.0, first_tokens=20.0), "prompt_counter_frozen"),
    ],
)
def test_a_missing_or_frozen_prompt_counter_falls_back_to_the_ceiling(
    prompt: PromptLoad, reason: str
) -> None:
    s = settle(fresh())
    assert s.controller.setpoint < CFG.controller.ceiling
    s, d = govern(s, reading(200.0, prompt), CFG)
    assert (d.setpoint, d.reason) == (CFG.controller.ceiling, reason)
    assert s.prompt is None  # nothing of it is planned for later either
    # A usable counter again: the feedforward resumes (in bounded steps down).
    _, d = govern(s, reading(205.0, steady(BASE_RATE)), CFG)
    assert d.reason == "feedforward" and d.setpoint == CFG.controller.ceiling - CFG.controller.max_step_down


def test_a_server_without_a_prompt_counter_keeps_the_batch_feedforward() -> None:
    s = fresh()
    for i in range(10):
        s, d = govern(s, reading(5.0 * i, None), CFG)
    assert d.reason in ("feedforward", "feedforward_hold") and d.setpoint < CFG.controller.ceiling
    assert s.prompt is None
