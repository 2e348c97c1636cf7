"""The SLO-tracking clock governor: feedforward from the replica's state, feedback from its latency.

Each interval the sidecar reads its inference server's running batch, waiting queue and KV-cache use
(``ServerLoad``) and the observed TTFT and ITL quantiles; ``govern`` returns the SM clock to lock.

Feedforward: the lowest settable clock at which the learned profile (``powercap.profile``) predicts a
per-request ITL (the mean inter-token time times ``itl_spread``) within ``headroom`` of the ITL target
at the running batch, and at which the TTFT misses stay within ``headroom`` of the miss budget: the
window's TTFT histogram, every request's TTFT scaled from the clock in force to the candidate (prefill
is compute-bound: its time goes as 1 / clock), must keep the ``quantile`` share within the target.

Signals the SLOs measure, not interpolations: the ITL SLO is each request's mean time per output token,
so the sidecar reads the mean inter-token time over its window (the ITL histogram's ``_sum`` over
``_count``; the histogram's quantile is over tokens, dominated by the iterations that carry a prefill
chunk). TTFT is judged by the share of requests over the target, read at a bucket bound (targets on a
bound are exact; vLLM's TTFT buckets jump 0.1 -> 0.25 s, where an interpolated p99 reads 0.24 s for a
true 0.17 s). Its ratio is misses over the budget ``1 - quantile``: above 1 the SLO is breached.

Feedforward from the prompt-token rate (``powercap.prefill``): TTFT is prefill plus the wait behind
other prompts, and the prefill work arriving per second is the server's prompt-token counter's rate. An
M/G/1 queue of prompts gives the mean TTFT at a candidate clock and a prompt rate; the TTFT history's
scaling takes its change from the window's rate to the planned one (the larger of the last interval's
and the window's), so the level stays observed and a rise in arrivals moves the clock in the interval
it is counted, before the slower first tokens fill the tail. With no first token recorded yet, the
queue's own TTFT quantile must stay within ``headroom`` of the target. The prefill rate per
clock is learned each interval from the observed mean TTFT. The counter unreadable (missing from a page
whose server names one, NaN, negative; the first scrape), or frozen (first tokens came but no prompt
token was counted), puts the clock at the ceiling (``prompt_rate_unusable``, ``prompt_counter_frozen``).

A waiting queue or a KV cache near full means the server is out of batch slots: the clock goes to the
ceiling in the same interval (``queue_forming``).

Feedback: the pure controller ``powercap.controller.step`` still runs on the worst of the two ratios
(ITL, TTFT): its safety rules win over the feedforward (stale data restores, the thermal guard lowers,
a breach jumps to the ceiling and is remembered), and its ``headroom_low`` or ``load_increase`` raises
put a floor under the feedforward's choice. The profile learns the mean iteration time from each
interval's observation at the clock in force: that is the loop correcting the prior's bias.

Cold-start bridge: while the workload is scaling up (desired replicas above ready ones, as eo-scaler
publishes them), every replica runs at its ceiling until the new ones serve (``scale_up_bridge``).

Bad input never lowers a clock: server gauges that are missing, not numbers or negative
(``state_unusable``), or frozen (every gauge identical for ``frozen_after_s`` while requests run,
``state_frozen``), put the clock at the ceiling and say why. Steps down stay bounded by the
controller's ``max_step_down``; raises are not bounded.

Pure: time and readings arrive as arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from common.misses import significant_ratio
from powercap.controller import (
    REASON_HEADROOM_LOW,
    REASON_LOAD_INCREASE,
    REASON_NO_DATA,
    REASON_SLO_BREACH,
    REASON_STALE,
    REASON_THERMAL,
    CapDecision,
    ControllerConfig,
    ControllerState,
    Reading,
    initial_state,
    step,
)
from powercap.prefill import PrefillProfile
from powercap.profile import IterationProfile

REASON_FEEDFORWARD = "feedforward"
"""A change toward the lowest clock that holds the targets at the replica's state."""
REASON_FEEDFORWARD_HOLD = "feedforward_hold"
REASON_QUEUE = "queue_forming"
REASON_BRIDGE = "scale_up_bridge"
REASON_STATE_UNUSABLE = "state_unusable"
REASON_STATE_FROZEN = "state_frozen"
REASON_PROMPT_UNUSABLE = "prompt_rate_unusable"
REASON_PROMPT_FROZEN = "prompt_counter_frozen"

GOVERNOR_REASONS: tuple[str, ...] = (
    REASON_FEEDFORWARD,
    REASON_FEEDFORWARD_HOLD,
    REASON_QUEUE,
    REASON_BRIDGE,
    REASON_STATE_UNUSABLE,
    REASON_STATE_FROZEN,
    REASON_PROMPT_UNUSABLE,
    REASON_PROMPT_FROZEN,
)

# The controller's rules that win over the feedforward whatever it predicts.
_SAFETY = (REASON_STALE, REASON_THERMAL, REASON_SLO_BREACH, REASON_NO_DATA)


@dataclass(frozen=True)
class ServerLoad:
    """The inference server's gauges at one scrape (common.servers names them per server)."""

    running: float | None
    waiting: float | None
    kv_usage: float | None = None
    """KV cache in use, 0..1; None where the server publishes none (TGI)."""

    def usable(self) -> bool:
        """Running is a finite number >= 0; waiting and KV, where given, too (KV at most 1)."""
        if self.running is None or not math.isfinite(self.running) or self.running < 0:
            return False
        if self.waiting is not None and not (math.isfinite(self.waiting) and self.waiting >= 0):
            return False
        return self.kv_usage is None or (math.isfinite(self.kv_usage) and 0 <= self.kv_usage <= 1.0)


@dataclass(frozen=True)
class PromptLoad:
    """The prompt-token counter's readings (common.servers ``prompt_tokens``) with the TTFT histogram's
    count and sum: over the last interval and over the window. None inside: not readable this time."""

    tokens_per_s: float | None
    """Prompt tokens counted per second over the last interval."""
    first_tokens: float | None = None
    """First tokens over the last interval (the TTFT histogram's count delta)."""
    ttft_mean_s: float | None = None
    """Mean TTFT of those first tokens (the TTFT histogram's sum over count deltas)."""
    window_tokens_per_s: float | None = None
    window_mean_tokens: float | None = None
    """Prompt tokens per first token over the window (None: no first token in it)."""

    @classmethod
    def from_counts(
        cls,
        interval_s: float,
        prompt_tokens: float,
        first_tokens: float | None,
        ttft_sum_s: float | None,
        window_s: float,
        window_prompt_tokens: float | None,
        window_first_tokens: float | None,
    ) -> PromptLoad:
        """The load from the counters' increases: ``prompt_tokens``, ``first_tokens`` (the TTFT
        histogram's count) and ``ttft_sum_s`` (its sum) over the last ``interval_s``, the prompt tokens
        and first tokens over the window's ``window_s`` (None: not read). The one derivation the live
        sidecar (``powercap.serverstate``) and eo-sim's replicas (``sim.governor``) share."""
        if not interval_s > 0:
            return cls(None)
        ttft_mean = None
        if first_tokens and ttft_sum_s is not None:
            ttft_mean = max(0.0, ttft_sum_s) / first_tokens
        window_rate = window_mean = None
        if window_prompt_tokens is not None and window_s > 0:
            window_rate = window_prompt_tokens / window_s
            window_mean = window_prompt_tokens / window_first_tokens if window_first_tokens else None
        return cls(prompt_tokens / interval_s, first_tokens, ttft_mean, window_rate, window_mean)

    def usable(self) -> bool:
        """The interval's rate is a finite number >= 0, and so is every other reading given."""
        values = (self.tokens_per_s, self.first_tokens, self.ttft_mean_s, self.window_tokens_per_s,
                  self.window_mean_tokens)  # fmt: skip
        if self.tokens_per_s is None:
            return False
        return all(v is None or (math.isfinite(v) and v >= 0) for v in values)

    def frozen(self) -> bool:
        """First tokens came over the interval but the counter did not move: every first token comes
        with its prompt counted (vLLM counts a prompt's tokens at its first token)."""
        return bool(self.first_tokens and self.first_tokens > 0 and self.tokens_per_s == 0)

    def interval_mean_tokens(self, interval_s: float | None) -> float | None:
        if not (self.first_tokens and self.tokens_per_s is not None and interval_s):
            return None
        return self.tokens_per_s * interval_s / self.first_tokens


@dataclass(frozen=True)
class GovernorConfig:
    """The governor's tuning around one clock ``ControllerConfig`` (whose ``target_latency_s`` is 1:
    the controller is fed the worst observed latency / target ratio)."""

    controller: ControllerConfig
    clocks_mhz: tuple[float, ...]
    """Settable SM clocks within [floor, ceiling], ascending."""
    itl_target_s: float | None
    """Each request's mean time per output token, held at ``quantile`` of the requests."""
    ttft_target_s: float | None
    quantile: float = 0.99
    """Share of requests held within the targets."""
    headroom: float = 0.85
    """The feedforward aims at this share of the ITL target and of the TTFT miss budget."""
    itl_spread: float = 1.5
    """Per-request ITL at ``quantile`` over the mean inter-token time (requests that share iterations
    with prefill chunks run slower than the mean; a token histogram cannot tell this, so it is set)."""
    kv_high: float = 0.95
    """KV-cache use at or above this counts as a forming queue (preemptions come next)."""
    frozen_after_s: float = 60.0
    ttft_history_s: float = 300.0
    """How long each interval's first tokens stay in the feedforward's TTFT history (the sidecar's
    ``--ttft-history-seconds``): longer than the breach window, since a tail of 1% needs thousands
    of first tokens to be read at a low clock, and each stays scaled from the clock it came at."""
    breach_significance: float = 0.05
    """A TTFT miss share over the budget is a breach only when that many misses would come less often
    than this at the budget's own rate (``common.misses``); 0: every share over the budget is one."""

    def __post_init__(self) -> None:
        c = self.controller
        if c.actuator != "clocks":
            raise ValueError("the governor moves SM clocks: its controller's actuator must be clocks")
        if c.target_latency_s != 1.0:
            raise ValueError("the governor's controller takes latency / target ratios: target_latency_s 1")
        if not self.clocks_mhz or list(self.clocks_mhz) != sorted(self.clocks_mhz):
            raise ValueError("clocks_mhz: need at least one clock, ascending")
        if not any(c.floor <= x <= c.ceiling for x in self.clocks_mhz):
            raise ValueError("clocks_mhz: no clock within [floor, ceiling]")
        if self.itl_target_s is None and self.ttft_target_s is None:
            raise ValueError("the governor needs an ITL or a TTFT target")
        for name in ("itl_target_s", "ttft_target_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a positive finite number, got {value}")
        if not 0 < self.headroom <= 1:
            raise ValueError(f"headroom: must be in (0, 1], got {self.headroom}")
        if not 0 < self.kv_high <= 1:
            raise ValueError(f"kv_high: must be in (0, 1], got {self.kv_high}")
        for name in ("frozen_after_s", "ttft_history_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a positive finite number, got {value}")
        if not 0 < self.quantile < 1:
            raise ValueError(f"quantile: must be in (0, 1), got {self.quantile}")
        if not 0 <= self.breach_significance < 1:
            raise ValueError(f"breach_significance: must be in [0, 1), got {self.breach_significance}")
        if not (math.isfinite(self.itl_spread) and self.itl_spread >= 1):
            raise ValueError(f"itl_spread: must be a finite number >= 1, got {self.itl_spread}")

    @property
    def settable(self) -> tuple[float, ...]:
        c = self.controller
        return tuple(x for x in self.clocks_mhz if c.floor <= x <= c.ceiling)


@dataclass(frozen=True)
class GovernorReading:
    """What the sidecar observed at ``now_s`` over its window; None where nothing was observed."""

    now_s: float
    age_s: float
    """Seconds since the last usable latency (as for ``controller.Reading``)."""
    itl_s: float | None
    """Mean inter-token time over the window (ITL ``_sum`` / ``_count`` deltas)."""
    ttft_buckets: tuple[tuple[float, float], ...] | None
    """TTFT histogram over the window: (upper bound s, requests in that bucket), ascending, the last
    bound +Inf; None (or no request) when no first token came in the window."""
    load: ServerLoad | None
    """None when the server's gauges could not be read this interval."""
    itl_mean_s: float | None = None
    """Mean inter-token time over the last interval (ITL ``_sum``/``_count`` deltas)."""
    scaling_up: bool | None = None
    """Desired replicas above ready ones for this workload; None when unknown."""
    load_rps: float | None = None
    temperature_c: float | None = None
    slowdown_temperature_c: float | None = None
    e2e_ratio: float | None = None
    """The end-to-end latency quantile over its target, where the sidecar holds one too (judged with
    the others: its breach jumps to the ceiling, its shrinking headroom raises); None without one."""
    ttft_interval_buckets: tuple[tuple[float, float], ...] | None = None
    """The first tokens since the previous reading, by TTFT bucket as ``ttft_buckets``: they came at
    the clock in force over that interval, so the feedforward scales each interval's TTFTs from its own
    clock (None: not read; the window's buckets are then scaled from the clock in force)."""
    prompt: PromptLoad | None = None
    """The prompt-token rate; None where the sidecar reads none (its server publishes no counter):
    then no prompt feedforward."""
    interval_s: float | None = None
    """Seconds the ``prompt`` interval readings span."""


@dataclass(frozen=True)
class TtftInterval:
    """One interval's first tokens in the feedforward's TTFT history, with what they came under."""

    at_s: float
    clock_mhz: float
    """The clock in force over the interval."""
    buckets: tuple[tuple[float, float], ...]
    first_tokens: float
    """Their count (the buckets' sum), kept so a decision does not re-sum it per candidate clock."""


@dataclass(frozen=True)
class GovernorState:
    controller: ControllerState
    profile: IterationProfile
    gauges: tuple[float | None, float | None, float | None] | None = None
    gauges_since_s: float | None = None
    previous_running: float | None = None
    ttft_history: tuple[TtftInterval, ...] = ()
    """Oldest first, at most ``ttft_history_s`` old: a bounded record (one entry per interval)."""
    prefill: PrefillProfile | None = None
    """The prompt feedforward's learned model; None: no prompt feedforward."""
    prompt: PromptLoad | None = None
    """The last usable prompt reading (what the feedforward plans for)."""


def initial_governor_state(
    config: GovernorConfig, profile: IterationProfile, prefill: PrefillProfile | None = None
) -> GovernorState:
    ctrl = initial_state(config.controller.ceiling, config.controller)
    return GovernorState(ctrl, profile, prefill=prefill)


def share_within(buckets: tuple[tuple[float, float], ...], bound_s: float) -> float | None:
    """Share of the observations at or under ``bound_s``: exact at a bucket bound, interpolated
    linearly inside a bucket (the +Inf bucket counts as over any finite bound); None with none."""
    total = sum(count for _, count in buckets)
    if not total > 0:
        return None
    within, lower = 0.0, 0.0
    for upper, count in buckets:
        if bound_s >= upper:
            within += count
        elif bound_s > lower and math.isfinite(upper):
            within += count * (bound_s - lower) / (upper - lower)
            break
        else:
            break
        lower = upper
    return within / total


def tail_share_over(
    buckets: tuple[tuple[float, float], ...], bound_s: float, empty_top: float = 0.5
) -> float | None:
    """Share of the observations above ``bound_s``, the survival interpolated log-linearly inside a
    bucket (a latency tail falls off about exponentially: linear interpolation inside vLLM's wide
    TTFT buckets, 0.1 -> 0.25 s, puts a bucket's requests evenly up to its top bound and over-states
    the tail several times). A bucket whose upper side is empty counts as ``empty_top`` observations
    there (half of one: none seen is "fewer than one", not zero). Exact at a bound; past the last
    finite bound every observation left counts as over. None with no observation."""
    total = sum(count for _, count in buckets)
    if not total > 0:
        return None
    above = total  # observations above the current bucket's lower bound
    lower = 0.0
    for upper, count in buckets:
        over_upper = above - count
        if bound_s < upper:
            if not math.isfinite(upper) or above <= 0:
                return above / total
            if bound_s <= lower:
                return above / total
            at_top = max(over_upper, min(empty_top, above))
            fraction = (bound_s - lower) / (upper - lower)
            return min(above, above * (at_top / above) ** fraction) / total
        above, lower = over_upper, upper
    return max(above, 0.0) / total


def ttft_ratio(
    buckets: tuple[tuple[float, float], ...] | None, config: GovernorConfig, scale: float = 1.0
) -> float | None:
    """TTFT misses over the miss budget (``1 - quantile``); None without a target or an observation.
    At ``scale`` 1 (what was observed) the share at the target, a bucket bound; otherwise every TTFT
    multiplied by ``scale`` (the clock in force over a candidate clock), the tail read log-linearly
    (``tail_share_over``)."""
    if config.ttft_target_s is None or not buckets:
        return None
    if scale == 1.0:
        share = share_within(buckets, config.ttft_target_s)
        return None if share is None else (1.0 - share) / (1.0 - config.quantile)
    over = tail_share_over(buckets, config.ttft_target_s / scale)
    return None if over is None else over / (1.0 - config.quantile)


def judged_ttft_ratio(
    buckets: tuple[tuple[float, float], ...] | None, config: GovernorConfig
) -> float | None:
    """The window's TTFT ratio as the feedback judges it: a share over the budget that a few requests'
    noise explains (``common.misses.significant_ratio`` at ``breach_significance``) is held at
    the controller's ``raise_above_ratio``, the top of its deadband, so it neither jumps to the
    ceiling nor lowers; the feedforward still counts those misses in its TTFT history."""
    ratio = ttft_ratio(buckets, config)
    if ratio is None or ratio <= 1.0 or not buckets:
        return ratio
    requests = sum(count for _, count in buckets)
    budget = 1.0 - config.quantile
    if significant_ratio(ratio, requests, budget, config.breach_significance):
        return ratio
    return config.controller.raise_above_ratio


def worst_ratio(reading: GovernorReading, config: GovernorConfig) -> float | None:
    """The largest of the ITL ratio (mean inter-token time x spread / target), the judged TTFT ratio
    (``judged_ttft_ratio``) and the end-to-end ratio, over the targets that have an observation; None
    with none (nothing to judge)."""
    ratios = []
    itl = reading.itl_s
    if config.itl_target_s is not None and itl is not None and math.isfinite(itl) and itl >= 0:
        ratios.append(itl * config.itl_spread / config.itl_target_s)
    ttft = judged_ttft_ratio(reading.ttft_buckets, config)
    if ttft is not None:
        ratios.append(ttft)
    e2e = reading.e2e_ratio
    if e2e is not None and math.isfinite(e2e) and e2e >= 0:
        ratios.append(e2e)
    return max(ratios) if ratios else None


def _load_factor(state: GovernorState, clock: float) -> float:
    """How much longer a first token would take at ``clock`` under the planned prompt rate than under
    the window's: with a prompt model, the prompt queue's mean TTFT at the planned rate over that at
    the window's rate, both at ``clock`` (``powercap.prefill``): the level comes from what was
    observed, the change with the load from the model, so a rise in the prompt rate raises the clock
    in the interval it is counted, and at a steady rate the factor is 1 (no model error in the level).
    1 without a model; infinite where the planned rate saturates prefill at this clock."""
    prompt, prefill = state.prompt, state.prefill
    mean = prompt.window_mean_tokens if prompt is not None else None
    window = prompt.window_tokens_per_s if prompt is not None else None
    if prefill is None or prompt is None or mean is None or not mean > 0 or window is None:
        return 1.0
    now = prefill.mean_ttft_s(clock, planned_rate(prompt), mean)
    then = prefill.mean_ttft_s(clock, window, mean)
    if not math.isfinite(now):
        return math.inf
    if not math.isfinite(then) or then <= 0:
        return 1.0
    return now / then


def planned_rate(prompt: PromptLoad) -> float:
    """The prompt rate the feedforward plans for: the larger of the last interval's and the window's,
    so a rise counts at once and a fall only as the window forgets the busier seconds."""
    return max(prompt.tokens_per_s or 0.0, prompt.window_tokens_per_s or 0.0)


def history_ttft_ratio(state: GovernorState, config: GovernorConfig, clock: float) -> float | None:
    """TTFT misses over the miss budget predicted at ``clock`` from the TTFT history: each interval's
    first tokens scaled from the clock they came at to ``clock``, and from the window's prompt load to
    the planned one (``_load_factor``), tails read log-linearly (``tail_share_over``); None without a
    target or a first token."""
    history = state.ttft_history
    if config.ttft_target_s is None or not history:
        return None
    window = sum(h.first_tokens for h in history)
    over = total = 0.0
    load = _load_factor(state, clock)  # one per candidate clock: the same for every interval
    if not math.isfinite(load):
        return math.inf  # the planned load saturates prefill at this clock
    for entry in history:
        # Half an observation over the whole window where a tail is empty, shared by the intervals.
        empty_top = 0.5 * entry.first_tokens / window if window > 0 else 0.5
        # Prefill is compute-bound: a first token observed at ``clock_mhz`` MHz scales as 1 / clock.
        scale = entry.clock_mhz / clock * load
        share = tail_share_over(entry.buckets, config.ttft_target_s / scale, empty_top)
        if share is None:
            continue
        over += share * entry.first_tokens
        total += entry.first_tokens
    return over / total / (1.0 - config.quantile) if total > 0 else None


def feedforward_clock(
    state: GovernorState,
    running: float,
    config: GovernorConfig,
    ttft_buckets: tuple[tuple[float, float], ...] | None,
    in_force: float,
) -> float:
    """The lowest settable clock that holds the targets at ``running``; the highest when none does.
    TTFT from the per-interval history where the sidecar records one, else from the window's buckets
    scaled from the clock in force."""
    clocks = config.settable
    for clock in clocks:
        if config.itl_target_s is not None:
            predicted = state.profile.estimate_s(clock, running) * config.itl_spread
            if predicted > config.headroom * config.itl_target_s:
                continue
        if state.ttft_history:
            ttft = history_ttft_ratio(state, config, clock)
        else:
            ttft = ttft_ratio(ttft_buckets, config, in_force / clock)
            # No first token recorded yet: the prompt queue's own TTFT quantile, where it has a load.
            if prompt_ttft_s(state, config, clock) > config.headroom * (config.ttft_target_s or math.inf):
                continue
        if ttft is not None and ttft > config.headroom:
            continue
        return clock
    return clocks[-1]


def prompt_ttft_s(state: GovernorState, config: GovernorConfig, clock: float) -> float:
    """The prompt queue's predicted TTFT at ``quantile`` at ``clock`` (``powercap.prefill``) at the
    planned prompt rate; 0 without a prompt reading or a prompt (nothing queues)."""
    prompt, prefill = state.prompt, state.prefill
    if prompt is None or prefill is None or prompt.tokens_per_s is None or config.ttft_target_s is None:
        return 0.0
    rate = planned_rate(prompt)
    mean = prompt.window_mean_tokens
    if not rate > 0 or mean is None or not mean > 0:
        return 0.0
    return prefill.ttft_quantile_s(clock, rate, mean, config.quantile)


def _learn_prefill(state: GovernorState, reading: GovernorReading) -> GovernorState:
    """The interval's observed mean TTFT at the clock in force and its prompt rate corrects the
    prefill model; the reading becomes what the feedforward plans for (an unusable one is dropped:
    the governor then holds the ceiling)."""
    prompt = reading.prompt
    if state.prefill is None:
        return state
    if prompt is None or not prompt.usable() or prompt.frozen():
        return replace(state, prompt=None)
    prefill = state.prefill
    mean_tokens = prompt.interval_mean_tokens(reading.interval_s)
    if (
        prompt.tokens_per_s is not None
        and prompt.first_tokens
        and prompt.ttft_mean_s
        and mean_tokens is not None
    ):
        prefill = prefill.observe(
            state.controller.setpoint,
            prompt.tokens_per_s,
            mean_tokens,
            prompt.ttft_mean_s,
            prompt.first_tokens,
        )
    return replace(state, prefill=prefill, prompt=prompt)


def _record_ttft(state: GovernorState, reading: GovernorReading, config: GovernorConfig) -> GovernorState:
    """Append the interval's first tokens at the clock that was in force; drop what left the window."""
    now = reading.now_s
    kept = tuple(h for h in state.ttft_history if h.at_s > now - config.ttft_history_s)
    buckets = reading.ttft_interval_buckets
    if buckets and all(math.isfinite(c) and c >= 0 for _, c in buckets):
        count = sum(c for _, c in buckets)
        if count > 0:
            kept = (*kept, TtftInterval(now, state.controller.setpoint, buckets, count))
    return state if kept == state.ttft_history else replace(state, ttft_history=kept)


def _learn(state: GovernorState, reading: GovernorReading) -> GovernorState:
    load, mean = reading.load, reading.itl_mean_s
    if load is None or not load.usable() or mean is None or not math.isfinite(mean) or mean <= 0:
        return state
    assert load.running is not None
    if load.running < 1:
        return state
    return replace(state, profile=state.profile.observe(state.controller.setpoint, load.running, mean))


def _track_gauges(state: GovernorState, load: ServerLoad | None, now: float) -> GovernorState:
    gauges = None if load is None else (load.running, load.waiting, load.kv_usage)
    if gauges is not None and gauges == state.gauges:
        return state
    return replace(state, gauges=gauges, gauges_since_s=now)


def govern(
    state: GovernorState, reading: GovernorReading, config: GovernorConfig
) -> tuple[GovernorState, CapDecision]:
    """One interval. Pure: the same inputs always give the same outputs."""
    now = reading.now_s
    ctrl_cfg = config.controller
    current = state.controller.setpoint
    state = _learn_prefill(_learn(state, reading), reading)
    state = _track_gauges(_record_ttft(state, reading, config), reading.load, now)
    ratio = worst_ratio(reading, config)
    fb_state, fb = step(
        state.controller,
        Reading(
            now_s=now,
            latency_s=ratio,
            age_s=reading.age_s,
            load_rps=reading.load_rps,
            temperature_c=reading.temperature_c,
            slowdown_temperature_c=reading.slowdown_temperature_c,
        ),
        ctrl_cfg,
    )
    previous = state.previous_running
    running = reading.load.running if reading.load is not None else None
    state = replace(state, controller=fb_state, previous_running=running)
    hot = (
        reading.temperature_c is not None
        and reading.slowdown_temperature_c is not None
        and reading.temperature_c >= reading.slowdown_temperature_c - ctrl_cfg.thermal_margin_c
    )
    breach = ratio is not None and ratio > 1.0
    if fb.reason in _SAFETY or fb_state.mode == "restored" or breach or hot:
        # The controller's safety rules (including its hold at the floor while hot) are final.
        return state, fb

    def to(target: float, reason: str) -> tuple[GovernorState, CapDecision]:
        target = ctrl_cfg.clamp(target)
        if target == current:
            held = replace(fb_state, setpoint=target)
            return replace(state, controller=held), CapDecision("hold", target, reason, current)
        moved = replace(fb_state, setpoint=target, last_change_s=now)
        return replace(state, controller=moved), CapDecision("set", target, reason, current)

    if reading.scaling_up:
        return to(ctrl_cfg.ceiling, REASON_BRIDGE)
    load = reading.load
    if load is None or not load.usable():
        return to(ctrl_cfg.ceiling, REASON_STATE_UNUSABLE)
    assert load.running is not None
    since = state.gauges_since_s if state.gauges_since_s is not None else now
    if load.running > 0 and now - since >= config.frozen_after_s:
        return to(ctrl_cfg.ceiling, REASON_STATE_FROZEN)
    if (load.waiting is not None and load.waiting > 0) or (
        load.kv_usage is not None and load.kv_usage >= config.kv_high
    ):
        return to(ctrl_cfg.ceiling, REASON_QUEUE)
    prompt = reading.prompt
    if state.prefill is not None and prompt is not None:
        if not prompt.usable():
            return to(ctrl_cfg.ceiling, REASON_PROMPT_UNUSABLE)
        if prompt.frozen():
            return to(ctrl_cfg.ceiling, REASON_PROMPT_FROZEN)

    # A batch that grew since the last interval keeps growing for a while: plan for the larger one.
    planned = max(load.running, previous) if previous is not None else load.running
    target = feedforward_clock(state, planned, config, reading.ttft_buckets, current)
    if fb.reason in (REASON_HEADROOM_LOW, REASON_LOAD_INCREASE):
        target = max(target, fb.setpoint)  # the feedback says the model is optimistic: raise
    remembering = (
        fb_state.breach_s is not None
        and fb_state.breach_setpoint is not None
        and now - fb_state.breach_s < ctrl_cfg.breach_memory_s
    )
    if remembering and fb_state.breach_setpoint is not None:
        target = max(target, min(fb_state.breach_setpoint + ctrl_cfg.max_step_down, ctrl_cfg.ceiling))
    target = max(target, current - ctrl_cfg.max_step_down)  # bounded steps down
    reason = REASON_FEEDFORWARD if ctrl_cfg.clamp(target) != current else REASON_FEEDFORWARD_HOLD
    return to(target, reason)
