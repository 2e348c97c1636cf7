"""The power-cap controller: one pure function from (state, reading, config) to a new state and a decision.

It turns latency slack into saved energy. The control law is AIMD-like on the latency headroom, with a
deadband between "comfortably under target" and "headroom shrinking":

* latency / target above 1 (an SLO breach): jump straight to the ceiling, at once;
* above ``raise_above_ratio``: raise by ``raise_fraction`` of the gap to the ceiling (at least one step),
  so the cap approaches the ceiling geometrically while headroom stays short;
* below ``lower_below_ratio``, and no change in the last ``settle_s`` (the latency window must first
  reflect the previous step): lower by at most ``max_step_down``, proportionally to the headroom. A power
  cap still a step above the GPU's draw even after the step does not bind, so the settle wait is skipped
  there (each step is still bounded): the cap walks down to the draw in a few intervals;
* otherwise hold.

Around that law sit the safety rules of the sidecar (docs/powercap.md): stale readings restore the
original setting; the thermal guard lowers the cap when the GPU is within ``thermal_margin_c`` of its
slowdown temperature (the GPU's own slowdown would cut clocks far harder than one step); after a breach
the controller remembers the setpoint that broke the SLO and stays a step above it for
``breach_memory_s``, which keeps it from oscillating into the same breach again.

The setpoint is in the actuator's unit: watts of power limit (``actuator="power"``) or MHz of the
highest SM clock allowed (``actuator="clocks"``). Time arrives as a number in seconds; nothing here does
I/O or reads a clock, so the simulator calls ``step`` directly on its modelled replicas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

Actuator = Literal["power", "clocks"]
Mode = Literal["controlling", "restored"]
Action = Literal["set", "hold", "restore"]

ACTUATORS: tuple[str, ...] = ("power", "clocks")

# Reasons a decision carries; the sidecar counts changes by these (eo_powercap_changes_total{reason}).
REASON_SLO_BREACH = "slo_breach"
REASON_HEADROOM_LOW = "headroom_low"
REASON_LOAD_INCREASE = "load_increase"
REASON_HEADROOM = "headroom"
REASON_THERMAL = "thermal"
REASON_STALE = "stale_metrics"
REASON_RESUME = "resume"
REASON_NO_DATA = "no_data"
REASON_DEADBAND = "deadband"
REASON_SETTLING = "settling"
REASON_AT_FLOOR = "at_floor"
REASON_AT_CEILING = "at_ceiling"
REASON_BREACH_MEMORY = "breach_memory"

# A load-jump reference follows the observed load with this weight per reading (an EWMA).
_LOAD_EWMA_WEIGHT = 0.2
# The smallest lowering step, as a share of max_step_down, taken when headroom is just over the band.
_MIN_STEP_SHARE = 0.25


@dataclass(frozen=True)
class ControllerConfig:
    """Tuning of one controller. ``floor``, ``ceiling`` and ``max_step_down`` are in the actuator's unit
    (W for ``power``, MHz for ``clocks``) and must already be intersected with the GPU's own range."""

    actuator: Actuator
    floor: float
    ceiling: float
    target_latency_s: float
    max_step_down: float
    lower_below_ratio: float = 0.85
    """Lower the cap while latency / target stays below this ratio."""
    raise_above_ratio: float = 0.95
    """Raise the cap when latency / target climbs above this ratio (but is still under 1)."""
    raise_fraction: float = 0.5
    """Share of the gap to the ceiling closed by one raise (at least ``max_step_down``)."""
    settle_s: float = 30.0
    """Minimum seconds after any change before the next lowering (let the latency window catch up)."""
    stale_after_s: float = 30.0
    """A reading older than this restores the original setting."""
    thermal_margin_c: float = 5.0
    breach_memory_s: float = 300.0
    """For this long after a breach, stay at least one step above the setpoint that breached."""
    load_jump_ratio: float = 0.5
    """Raise pre-emptively when load exceeds its smoothed reference by this ratio; 0 disables."""

    def __post_init__(self) -> None:
        if self.actuator not in ACTUATORS:
            raise ValueError(f"actuator: {self.actuator!r} is not one of {', '.join(ACTUATORS)}")
        for name in ("floor", "ceiling", "target_latency_s", "max_step_down", "stale_after_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: must be a positive finite number, got {value}")
        if self.floor > self.ceiling:
            raise ValueError(f"floor ({self.floor}) is above ceiling ({self.ceiling})")
        if not 0 < self.lower_below_ratio < self.raise_above_ratio <= 1:
            raise ValueError(
                "need 0 < lower_below_ratio < raise_above_ratio <= 1, got "
                f"{self.lower_below_ratio} and {self.raise_above_ratio}"
            )
        if not 0 < self.raise_fraction <= 1:
            raise ValueError(f"raise_fraction: must be in (0, 1], got {self.raise_fraction}")
        for name in ("settle_s", "thermal_margin_c", "breach_memory_s", "load_jump_ratio"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: must be a finite number >= 0, got {value}")

    def clamp(self, value: float) -> float:
        return min(max(value, self.floor), self.ceiling)


@dataclass(frozen=True)
class Reading:
    """What the sidecar observed at ``now_s``."""

    now_s: float
    latency_s: float | None
    """Observed latency quantile; None when no request finished in the window (nothing to judge)."""
    age_s: float = 0.0
    """Seconds since the latency source last gave a usable latency (a number, from finished requests):
    errors, empty windows and NaN all age the data, so none of them can hold a cap past stale_after_s."""
    load_rps: float | None = None
    temperature_c: float | None = None
    """Hottest of the controlled GPUs."""
    slowdown_temperature_c: float | None = None
    """Lowest slowdown threshold of the controlled GPUs."""
    power_w: float | None = None
    """Highest board power draw of the controlled GPUs (W); lets the power actuator tell a binding cap."""


@dataclass(frozen=True)
class ControllerState:
    setpoint: float
    """What is (or, in dry-run, would be) in force, in the actuator's unit."""
    original: float
    """The GPU's setting before the sidecar touched it (restored on stale metrics)."""
    mode: Mode = "controlling"
    last_change_s: float | None = None
    breach_setpoint: float | None = None
    breach_s: float | None = None
    reference_load_rps: float | None = None


@dataclass(frozen=True)
class CapDecision:
    action: Action
    setpoint: float
    """The setting to have in force after this step (the original on ``restore``)."""
    reason: str
    previous: float

    @property
    def changed(self) -> bool:
        return self.action != "hold" and self.setpoint != self.previous


def initial_state(original: float, config: ControllerConfig) -> ControllerState:
    """Start from the GPU's own setting pulled into bounds (the first step applies it if it moved)."""
    return ControllerState(setpoint=config.clamp(original), original=original)


def step(
    state: ControllerState, reading: Reading, config: ControllerConfig
) -> tuple[ControllerState, CapDecision]:
    """One control step. Pure: the same inputs always give the same outputs."""
    jumped = _load_jumped(state, reading, config)
    new_state, decision = _decide(state, reading, config, jumped)
    return _follow_load(new_state, reading, jumped), decision


def _decide(
    state: ControllerState, reading: Reading, config: ControllerConfig, load_jumped: bool
) -> tuple[ControllerState, CapDecision]:
    now = reading.now_s
    current = state.setpoint

    def hold(reason: str, new_state: ControllerState = state) -> tuple[ControllerState, CapDecision]:
        return new_state, CapDecision("hold", new_state.setpoint, reason, current)

    def move(
        target: float, reason: str, base: ControllerState = state
    ) -> tuple[ControllerState, CapDecision]:
        target = config.clamp(target)
        if target == current:
            return hold(reason, base)
        new_state = replace(base, setpoint=target, last_change_s=now)
        return new_state, CapDecision("set", target, reason, current)

    # Stale metrics: we cannot see the SLO, so the GPU goes back to how we found it.
    if reading.age_s > config.stale_after_s:
        if state.mode == "restored":
            return hold(REASON_STALE)
        restored = replace(state, mode="restored", setpoint=state.original, last_change_s=now)
        return restored, CapDecision("restore", state.original, REASON_STALE, current)
    if state.mode == "restored":
        # Fresh again: resume from the original pulled into bounds, judged by this reading at once (a
        # breach still raises), then lower only after a settle period.
        resumed = replace(state, mode="controlling", setpoint=config.clamp(state.original), last_change_s=now)
        new_state, d = _decide(resumed, reading, config, load_jumped)
        action: Action = "set" if new_state.setpoint != current else "hold"
        reason = d.reason if d.action == "set" else REASON_RESUME
        return new_state, CapDecision(action, new_state.setpoint, reason, current)

    if (
        reading.temperature_c is not None
        and reading.slowdown_temperature_c is not None
        and reading.temperature_c >= reading.slowdown_temperature_c - config.thermal_margin_c
    ):
        if current <= config.floor:
            return hold(REASON_AT_FLOOR, state)
        return move(current - config.max_step_down, REASON_THERMAL, state)

    if reading.latency_s is None or not math.isfinite(reading.latency_s):
        return hold(REASON_NO_DATA, state)
    ratio = reading.latency_s / config.target_latency_s

    if ratio > 1.0:
        if current >= config.ceiling:
            return hold(REASON_AT_CEILING, state)
        remembered = replace(state, breach_setpoint=current, breach_s=now)
        return move(config.ceiling, REASON_SLO_BREACH, remembered)

    raise_step = max(config.max_step_down, config.raise_fraction * (config.ceiling - current))
    if load_jumped:
        if current >= config.ceiling:
            return hold(REASON_AT_CEILING, state)
        return move(current + raise_step, REASON_LOAD_INCREASE, state)
    if ratio > config.raise_above_ratio:
        if current >= config.ceiling:
            return hold(REASON_AT_CEILING, state)
        return move(current + raise_step, REASON_HEADROOM_LOW, state)

    if ratio < config.lower_below_ratio:
        # A cap well above the draw does not bind: lowering it cannot change latency, so there is
        # nothing to wait for (the step stays bounded; only the settle wait is skipped).
        binding = not (
            config.actuator == "power"
            and reading.power_w is not None
            and current - config.max_step_down >= reading.power_w + config.max_step_down
        )
        settling = state.last_change_s is not None and now - state.last_change_s < config.settle_s
        if binding and settling:
            return hold(REASON_SETTLING, state)
        lowest = config.floor
        remembering = state.breach_s is not None and now - state.breach_s < config.breach_memory_s
        if remembering and state.breach_setpoint is not None:
            lowest = max(lowest, min(state.breach_setpoint + config.max_step_down, config.ceiling))
        if current <= lowest:
            return hold(REASON_BREACH_MEMORY if lowest > config.floor else REASON_AT_FLOOR, state)
        # Proportional: a quarter step just under the band, a full step with half the band to spare.
        share = (config.lower_below_ratio - ratio) / (0.5 * config.lower_below_ratio)
        size = config.max_step_down * min(1.0, max(_MIN_STEP_SHARE, share))
        return move(max(current - size, lowest), REASON_HEADROOM, state)

    return hold(REASON_DEADBAND, state)


def _valid_load(reading: Reading) -> float | None:
    load = reading.load_rps
    return load if load is not None and math.isfinite(load) and load >= 0 else None


def _load_jumped(state: ControllerState, reading: Reading, config: ControllerConfig) -> bool:
    load, ref = _valid_load(reading), state.reference_load_rps
    if load is None or ref is None or config.load_jump_ratio <= 0:
        return False
    return ref > 0 and load > ref * (1 + config.load_jump_ratio)


def _follow_load(state: ControllerState, reading: Reading, jumped: bool) -> ControllerState:
    """The load reference is an EWMA of the load; after a jump it takes the new level at once, so one
    jump raises once."""
    load = _valid_load(reading)
    if load is None:
        return state
    ref = state.reference_load_rps
    if ref is None or jumped:
        return replace(state, reference_load_rps=load)
    return replace(state, reference_load_rps=ref + _LOAD_EWMA_WEIGHT * (load - ref))
