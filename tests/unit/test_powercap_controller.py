"""The pure power-cap controller: its control law, its safety rules and (hypothesis) its bounds."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powercap.controller import (
    CapDecision,
    ControllerConfig,
    ControllerState,
    Reading,
    initial_state,
    step,
)

CFG = ControllerConfig(
    actuator="power", floor=300.0, ceiling=700.0, target_latency_s=1.0, max_step_down=25.0, settle_s=30.0
)


def run(
    state: ControllerState, reading: Reading, cfg: ControllerConfig = CFG
) -> tuple[ControllerState, CapDecision]:
    return step(state, reading, cfg)


def test_lowers_by_at_most_one_step_while_latency_is_comfortably_under_target() -> None:
    state = initial_state(700.0, CFG)
    state, d = run(state, Reading(now_s=0.0, latency_s=0.2))
    assert d.action == "set" and d.reason == "headroom"
    assert d.setpoint == 675.0 and d.changed
    # Within the settle period it waits for the latency window to reflect the step.
    state, d = run(state, Reading(now_s=10.0, latency_s=0.2))
    assert d.action == "hold" and d.reason == "settling" and d.setpoint == 675.0
    state, d = run(state, Reading(now_s=30.0, latency_s=0.2))
    assert d.setpoint == 650.0


def test_a_cap_above_the_draw_walks_down_without_waiting_but_in_bounded_steps() -> None:
    state = initial_state(700.0, CFG)
    setpoints = []
    for t in range(0, 60, 5):
        state, d = run(state, Reading(now_s=float(t), latency_s=0.2, power_w=480.0))
        setpoints.append(d.setpoint)
    # One step per interval while the cap cannot bind, then the settle wait applies again near the draw.
    assert setpoints[:8] == [675.0, 650.0, 625.0, 600.0, 575.0, 550.0, 525.0, 525.0]


def test_step_shrinks_as_headroom_narrows() -> None:
    state = initial_state(700.0, CFG)
    _, d = run(state, Reading(now_s=0.0, latency_s=0.78))
    assert 0 < 700.0 - d.setpoint < 25.0


def test_slo_breach_jumps_to_the_ceiling_and_remembers_the_setpoint() -> None:
    state = replace(initial_state(700.0, CFG), setpoint=400.0)
    state, d = run(state, Reading(now_s=100.0, latency_s=1.2))
    assert (d.action, d.setpoint, d.reason) == ("set", 700.0, "slo_breach")
    assert state.breach_setpoint == 400.0
    # Comfortable again later, it lowers but never back to within a step of the breaching setpoint.
    t = 100.0
    for _ in range(40):
        t += 30.0
        state, d = run(state, Reading(now_s=t, latency_s=0.1))
        if t - 100.0 < CFG.breach_memory_s:
            assert state.setpoint >= 425.0
    # Once the memory expires it may go lower.
    assert state.setpoint < 425.0


def test_headroom_shrinking_raises_part_of_the_way() -> None:
    state = replace(initial_state(700.0, CFG), setpoint=400.0)
    _, d = run(state, Reading(now_s=0.0, latency_s=0.97))
    assert d.reason == "headroom_low" and d.setpoint == 550.0


def test_deadband_holds() -> None:
    state = replace(initial_state(700.0, CFG), setpoint=500.0)
    _, d = run(state, Reading(now_s=0.0, latency_s=0.9))
    assert (d.action, d.reason, d.setpoint) == ("hold", "deadband", 500.0)


def test_load_jump_raises_before_latency_does() -> None:
    state = replace(initial_state(700.0, CFG), setpoint=400.0)
    state, _ = run(state, Reading(now_s=0.0, latency_s=0.85, load_rps=10.0))
    state, d = run(state, Reading(now_s=5.0, latency_s=0.85, load_rps=20.0))
    assert d.reason == "load_increase" and d.setpoint > 400.0
    # The reference took the new level: the same load does not raise again.
    _, d = run(state, Reading(now_s=10.0, latency_s=0.85, load_rps=20.0))
    assert d.action == "hold"


def test_stale_reading_restores_the_original_then_resumes_when_fresh() -> None:
    cfg = replace(CFG, ceiling=650.0)
    state = replace(initial_state(700.0, cfg), setpoint=500.0)
    state, d = run(state, Reading(now_s=0.0, latency_s=None, age_s=31.0), cfg)
    assert (d.action, d.setpoint, d.reason) == ("restore", 700.0, "stale_metrics")
    state, d = run(state, Reading(now_s=5.0, latency_s=None, age_s=36.0), cfg)
    assert d.action == "hold" and state.mode == "restored"
    state, d = run(state, Reading(now_s=10.0, latency_s=0.1), cfg)
    assert (d.action, d.setpoint, d.reason) == ("set", 650.0, "resume") and state.mode == "controlling"


def test_thermal_guard_lowers_even_during_a_breach() -> None:
    state = initial_state(700.0, CFG)
    _, d = run(state, Reading(now_s=0.0, latency_s=2.0, temperature_c=84.0, slowdown_temperature_c=87.0))
    assert (d.reason, d.setpoint) == ("thermal", 675.0)


def test_no_requests_holds() -> None:
    _, d = run(initial_state(700.0, CFG), Reading(now_s=0.0, latency_s=None))
    assert (d.action, d.reason) == ("hold", "no_data")


def test_clock_actuator_uses_the_same_law_in_mhz() -> None:
    cfg = ControllerConfig(
        actuator="clocks", floor=900.0, ceiling=1980.0, target_latency_s=0.05, max_step_down=90.0
    )
    _, d = step(initial_state(1980.0, cfg), Reading(now_s=0.0, latency_s=0.01), cfg)
    assert d.setpoint == 1890.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("floor", 800.0, "floor"),
        ("target_latency_s", 0.0, "target_latency_s"),
        ("max_step_down", -1.0, "max_step_down"),
        ("lower_below_ratio", 0.99, "lower_below_ratio"),
        ("raise_fraction", 0.0, "raise_fraction"),
        ("actuator", "fans", "actuator"),
    ],
)
def test_inconsistent_config_is_refused_naming_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(CFG, **{field: value})


# -- properties ----------------------------------------------------------------------------------------
readings = st.tuples(
    st.floats(min_value=0.1, max_value=60.0),  # time step
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=10.0)),  # latency
    st.floats(min_value=0.0, max_value=120.0),  # age
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=1000.0)),  # load
    st.one_of(st.none(), st.floats(min_value=20.0, max_value=100.0)),  # temperature
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=800.0)),  # power draw
)


@settings(max_examples=120, deadline=None)
@given(
    floor=st.floats(min_value=100.0, max_value=400.0),
    span=st.floats(min_value=0.0, max_value=500.0),
    original=st.floats(min_value=100.0, max_value=1000.0),
    max_step=st.floats(min_value=1.0, max_value=100.0),
    settle=st.floats(min_value=0.0, max_value=60.0),
    inputs=st.lists(readings, min_size=1, max_size=60),
)
def test_no_input_sequence_leaves_the_bounds_or_steps_down_more_than_max(
    floor: float,
    span: float,
    original: float,
    max_step: float,
    settle: float,
    inputs: list[tuple[float, float | None, float, float | None, float | None, float | None]],
) -> None:
    cfg = ControllerConfig(
        actuator="power",
        floor=floor,
        ceiling=floor + span,
        target_latency_s=1.0,
        max_step_down=max_step,
        settle_s=settle,
    )
    state = initial_state(original, cfg)
    assert cfg.floor <= state.setpoint <= cfg.ceiling
    now = 0.0
    for dt, latency, age, load, temp, power in inputs:
        now += dt
        reading = Reading(now, latency, age, load, temp, 87.0 if temp is not None else None, power)
        before = state.setpoint
        state, d = step(state, reading, cfg)
        assert d.previous == before
        if d.action == "restore":
            assert d.setpoint == original == state.setpoint
            continue
        if state.mode == "restored":
            assert d.action == "hold" and state.setpoint == original
            continue
        assert cfg.floor <= d.setpoint <= cfg.ceiling
        assert d.setpoint == state.setpoint
        if before >= cfg.floor and before <= cfg.ceiling:
            assert before - d.setpoint <= max_step + 1e-9
        if (
            latency is not None
            and latency > 1.0
            and age <= cfg.stale_after_s
            and (temp is None or temp < 82.0)
        ):
            assert d.setpoint == cfg.ceiling, "an SLO breach must raise to the ceiling at once"


@settings(max_examples=40, deadline=None)
@given(inputs=st.lists(readings, min_size=1, max_size=40))
def test_step_is_deterministic(
    inputs: list[tuple[float, float | None, float, float | None, float | None]],
) -> None:
    def replay() -> list[CapDecision]:
        state, out, now = initial_state(700.0, CFG), [], 0.0
        for dt, latency, age, load, temp, power in inputs:
            now += dt
            state, d = step(state, Reading(now, latency, age, load, temp, 87.0, power), CFG)
            out.append(d)
        return out

    assert replay() == replay()
