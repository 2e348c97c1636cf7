"""The replica policy: one pure function from an observation to a replica decision.

``decide(observation, config)`` answers "how many replicas should this workload run now, and why".
It is stateless on purpose: everything it must remember (peak load over the stabilisation window, the
capacity per replica learned while every SLO held, how far load rose within a cold start, the trend,
how long the workload has been idle) arrives inside the ``Observation``, derived by the caller from
Prometheus history (``scaler/signals.py`` declares those signals once, for Prometheus and for the
simulator). Several scaler replicas therefore agree, a restart changes nothing, and the simulator
(``sim/``) drives the same code. No I/O and no clock: time comes in as numbers of seconds.

SLOs: any of time to first token (TTFT), inter-token latency (ITL) and end-to-end latency, each read at
its own quantile; the policy holds every one given, through the worst ``reading / SLO`` ratio.

Capacity: learned in tokens/s per replica (prompt plus generation, a unit that follows a change of
request mix) and turned into requests/s at today's tokens per request; ``replicaCapacityRps``, when
configured, is a floor the learned value can only raise (with learning off, the capacity itself).
Without it, until one minute with every SLO held has been seen, the policy only wakes, holds, and
answers breaches and queues (the first minutes are handled on latency and queue, never on a guess).

Order of precedence, from strongest to weakest:

1. Idle: no requests for ``idle_before_zero_s`` (and no demand) with ``min_replicas == 0`` -> 0.
2. Power budget: a hard ceiling, ``replicas * per_replica_watts <= budget``. When it conflicts with the
   SLOs the budget wins: a budget is usually a breaker, a rack or a contract limit that the operator
   set knowing it may cost latency, and exceeding it has consequences outside this workload. The
   decision says so (reason ``power_budget``). ``min_replicas``/``max_replicas`` still bound the answer
   (KEDA's HPA enforces them anyway), reason ``power_budget_below_min`` flags the conflict.
3. SLO breach: any reading above its SLO beyond chance (``breaching``: a budget overspent by no more
   than a window's noise is not one, and only blocks scale-down) scales up at once, never down, in
   proportion to what it observes: to the replicas the demand needs at ``target_utilization`` of the
   capacity, else one more than ``settled`` (a burst or backlog the settled replicas carry on
   average), or without a capacity ``settled * worst ratio`` (capped at ``max_breach_step_ratio``),
   at least +1 and 10% + 1 (clearing the HPA's 10% tolerance). ``settled`` is the fewest replicas
   serving over the last breach-settle window, so the answers to one breach do not compound while
   its first answer is still starting.
4. Leading signals, before latency breaks: a forming queue (waiting requests above zero for 30 s,
   reason ``queue_forming``) or KV-cache saturation (``kv_saturation``) scale up from ``settled`` by
   the queue's share of the running requests (at least one more, at most double).
5. Load on the short window: the fewest replicas that carry the demand (1-minute rate) times the burst
   headroom at ``target_utilization`` of the capacity: ``ceil(demand * headroom / (capacity * target))``.
   The headroom is the workload's own: how far its rate rose within one cold start, at a high quantile
   over the lookback (1 to ``max_burst_headroom``); reason ``burst_headroom`` when the demand alone
   would not have scaled up. Scaled up to at once.
6. Forecast floor: the replicas the forecast rate one cold start ahead needs (a trend fitted to the
   last 10 minutes, and a seasonal forecast once a season of history exists), reason ``forecast``.
7. Consolidation on longer evidence: scale down to ``ceil(peak * headroom / (capacity *
   scale_down_utilization))`` where ``peak`` is the highest 1-minute rate over the stabilisation
   window, never below the forecast floor, and not while a reading is near its SLO (``near_slo_ratio``),
   a queue is forming or the KV cache is saturated. With every reading at most ``roomy_latency_ratio``
   of its SLO consolidation goes to ``target_utilization``. Between scale-up and scale-down thresholds
   the count holds, so a constant load never flaps. A young workload (under ``YOUNG_HISTORY_MINUTES``
   of history) whose capacity is learned, none configured, does not scale down: its capacity is an
   extrapolation from minutes that never reached the knee, and its load is still finding its level.
8. Energy target: when joules per request exceed the target and latency has headroom, remove one
   replica at a time down to the load threshold of the window's peak (fuller batches cost less energy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from common.misses import significant_ratio
from scaler.signals import BUDGET_MIN_OBSERVATIONS

# Capacity ratios are computed in floats; this keeps ceil(2.0000000001) from adding a replica.
_EPS = 1e-9
_HUGE = 10**6  # more replicas than any cluster runs; keeps int() away from inf
_TINY_RPS = 0.05  # below this a tokens-per-request ratio is noise
# Fewer minutes of rise history than this and the burst headroom is not the workload's own yet
# (scaler.signals.HEADROOM_MIN_POINTS: the burst_rise part is absent until then).
YOUNG_HISTORY_MINUTES = 10.0
# Plan for all of the per-replica capacity at the SLO: the capacity is measured *at* the SLOs, the
# growth within a cold start is the burst headroom's (from the workload's own rises), and a margin here
# too would count it twice (eo-sim: 5-9% less energy on five of six traces, <= 0.3 points of
# attainment; docs/simulator.md). Scale down only to 8/9 of that: the band between the two is the
# hysteresis that keeps a constant load from flapping.
DEFAULT_TARGET_UTILIZATION = 1.0
DEFAULT_SCALE_DOWN_SHARE = 8 / 9


class Reason(StrEnum):
    """Why a decision came out as it did (the ``reason`` label of ``eo_scaler_decisions_total``)."""

    IDLE_ZERO = "idle_zero"
    WAKE = "wake"
    SLO_BREACH = "slo_breach"
    QUEUE_FORMING = "queue_forming"
    KV_SATURATION = "kv_saturation"
    SCALE_UP_LOAD = "scale_up_load"
    BURST_HEADROOM = "burst_headroom"
    FORECAST = "forecast"
    CONSOLIDATE = "consolidate"
    ENERGY_TARGET = "energy_target"
    HOLD = "hold"
    HOLD_NEAR_SLO = "hold_near_slo"
    CAPACITY_UNKNOWN = "capacity_unknown"
    POWER_BUDGET = "power_budget"
    POWER_BUDGET_BELOW_MIN = "power_budget_below_min"
    MIN_REPLICAS = "min_replicas"
    MAX_REPLICAS = "max_replicas"


@dataclass(frozen=True)
class Observation:
    """What the world looked like, with the memory the policy needs derived from history. None is "no
    reading", never zero.

    current_replicas: pods of the workload serving now.
    load_rps: requests per second served over the short window (all replicas together).
    peak_load_rps: highest short-window load over the stabilisation window (the policy takes the max).
    latency_s: the end-to-end latency quantile, None without a reading (no requests, or no such SLO).
    ttft_s, itl_s: the time-to-first-token and inter-token-latency quantiles, None without a reading.
    idle_for_s: how long no request was served (0 when requests are flowing). A source that can only
        tell "none in the last W seconds" reports W.
    demand_rps: demand seen upstream of the pods (gateway, queue), the only signal at zero replicas.
    learned_capacity_rps: a per-replica capacity in requests/s learned elsewhere, or None.
    learned_capacity_tps: the per-replica capacity in tokens/s (prompt + generation) learned while
        every SLO held, or None.
    load_tps, peak_load_tps: tokens per second over the short window, and its peak over the
        stabilisation window (they give today's tokens per request).
    waiting_requests: the fewest requests waiting over the last 30 s (sustained queue), None unknown.
    running_requests: requests running now, None unknown.
    kv_usage_ratio: the fullest pod's KV-cache use (0..1), None unknown.
    burst_rise: how far the rate rose within one cold start, at a high quantile over the lookback.
    history_minutes: minutes of rise history behind ``burst_rise`` (None: the source does not say; a
        young workload, under ``YOUNG_HISTORY_MINUTES``, plans with ``young_burst_headroom``).
    ttft_ratio, itl_ratio, latency_ratio: how close each SLO is to breaking, 1 at the SLO: the share of
        its error budget used (requests over the SLO over ``1 - quantile``, exact where the SLO is a
        bucket bound), else the quantile over the SLO; None: the policy divides the reading itself.
    ttft_observations, itl_observations, latency_observations: how many observations each SLO's ratio
        is read over (its histogram's count over the short window: first tokens, tokens, requests);
        None: unknown, and then every ratio over 1 is a breach.
    forecast_rps: the forecast rate one cold start ahead (None: forecasting off or history too short).
    workload_power_watts: power drawn by all replicas together, or None when unknown.
    historical_replica_power_watts: the highest power per replica seen over the lookback, so the budget
        ceiling is known at zero replicas too (else the policy would start one, learn it does not fit,
        stop it, forget, and start again).
    joules_per_request: energy per request now, or None when unknown.
    settled_replicas: the fewest replicas serving over the last breach-settle window, None when
        unknown (then the current count is used). Replicas started by an SLO-breach answer show up
        here only once the window has passed, so a breach is answered once per window.
    """

    current_replicas: int
    load_rps: float
    peak_load_rps: float
    latency_s: float | None
    idle_for_s: float = 0.0
    demand_rps: float | None = None
    learned_capacity_rps: float | None = None
    workload_power_watts: float | None = None
    joules_per_request: float | None = None
    historical_replica_power_watts: float | None = None
    settled_replicas: int | None = None
    ttft_s: float | None = None
    itl_s: float | None = None
    load_tps: float | None = None
    peak_load_tps: float | None = None
    learned_capacity_tps: float | None = None
    waiting_requests: float | None = None
    running_requests: float | None = None
    kv_usage_ratio: float | None = None
    burst_rise: float | None = None
    forecast_rps: float | None = None
    ttft_ratio: float | None = None
    itl_ratio: float | None = None
    latency_ratio: float | None = None
    ttft_observations: float | None = None
    itl_observations: float | None = None
    latency_observations: float | None = None
    history_minutes: float | None = None


@dataclass(frozen=True)
class PolicyConfig:
    """Tunables of the policy, units in the names. At least one SLO (TTFT, ITL, end-to-end)."""

    min_replicas: int
    max_replicas: int
    latency_slo_s: float | None = None
    target_utilization: float = DEFAULT_TARGET_UTILIZATION
    scale_down_utilization: float = DEFAULT_TARGET_UTILIZATION * DEFAULT_SCALE_DOWN_SHARE
    # A reading above this fraction of its SLO blocks scale-down (the SLO has little room left).
    near_slo_ratio: float = 0.85
    replica_capacity_rps: float | None = None
    power_budget_watts: float | None = None
    replica_power_watts: float | None = None
    target_joules_per_request: float | None = None
    idle_before_zero_s: float = 300.0
    activation_rps: float = 0.05
    max_breach_step_ratio: float = 2.0
    # Every reading at or below this fraction of its SLO lets consolidation reach target_utilization.
    roomy_latency_ratio: float = 0.5
    ttft_slo_s: float | None = None
    itl_slo_s: float | None = None
    kv_saturation_ratio: float = 0.9
    max_burst_headroom: float = 2.0
    # The headroom while the workload's own history is too short to size it (its first ten minutes):
    # the usual 30% margin users provision, until the rises it has shown replace it.
    young_burst_headroom: float = 1.3
    # Each SLO's quantile (its error budget is 1 - quantile), for the breach evidence test; None: that
    # SLO's ratio over 1 is a breach whatever the count behind it.
    ttft_quantile: float | None = None
    itl_quantile: float | None = None
    latency_quantile: float | None = None
    # A ratio over 1 is a breach only when its misses would come less often than this at the budget's
    # own rate (common.misses); 0: every ratio over 1 is one.
    breach_significance: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")
        if self.max_replicas < 1:
            raise ValueError("max_replicas must be >= 1")
        if not 0 < self.scale_down_utilization <= self.target_utilization <= 1:
            raise ValueError("need 0 < scale_down_utilization <= target_utilization <= 1")
        slos = self.slos()
        if not slos:
            raise ValueError("give at least one SLO: ttft_slo_s, itl_slo_s or latency_slo_s")
        if any(not slo > 0 for _, slo in slos):
            raise ValueError("every SLO must be > 0 seconds")
        if not 0 <= self.roomy_latency_ratio <= self.near_slo_ratio:
            raise ValueError("need 0 <= roomy_latency_ratio <= near_slo_ratio")
        if self.max_breach_step_ratio < 1:
            raise ValueError("max_breach_step_ratio must be >= 1")
        if not 1 <= self.young_burst_headroom <= self.max_burst_headroom:
            raise ValueError("need 1 <= young_burst_headroom <= max_burst_headroom")
        for q in (self.ttft_quantile, self.itl_quantile, self.latency_quantile):
            if q is not None and not 0 < q < 1:
                raise ValueError("every SLO quantile must be in (0, 1)")
        if not 0 <= self.breach_significance < 1:
            raise ValueError("breach_significance must be in [0, 1)")

    def slos(self) -> list[tuple[str, float]]:
        """``(kind, seconds)`` of the SLOs given: ``ttft``, ``itl``, ``e2e``."""
        given = (("ttft", self.ttft_slo_s), ("itl", self.itl_slo_s), ("e2e", self.latency_slo_s))
        return [(kind, slo) for kind, slo in given if slo is not None]


@dataclass(frozen=True)
class ReplicaDecision:
    """The answer: desired replicas, whether the workload is active (KEDA's IsActive), and why."""

    replicas: int
    active: bool
    reason: Reason
    detail: str


def _bounded_int(value: float, rounding: str) -> int:
    """ceil/floor of a ratio, with absurd (denormal divisor, infinite) ratios pinned to _HUGE."""
    if not math.isfinite(value) or value > _HUGE:
        return _HUGE
    return max(0, math.ceil(value - _EPS) if rounding == "ceil" else math.floor(value + _EPS))


def _replicas_for(load_rps: float, capacity_rps: float, utilization: float) -> int:
    per_replica = capacity_rps * utilization
    return _bounded_int(load_rps / per_replica, "ceil") if per_replica > 0 else _HUGE


def per_replica_watts(observation: Observation, config: PolicyConfig) -> float | None:
    """Configured power per replica, else observed now (workload power / replicas), else from history."""
    if config.replica_power_watts is not None and config.replica_power_watts > 0:
        return config.replica_power_watts
    power = observation.workload_power_watts
    if power is not None and observation.current_replicas > 0 and power / observation.current_replicas > 0:
        return power / observation.current_replicas
    historical = observation.historical_replica_power_watts
    if historical is not None and historical > 0:
        return historical
    return None


def budget_ceiling(observation: Observation, config: PolicyConfig) -> int | None:
    """Most replicas the power budget allows, None without a budget.

    When the per-replica power is not yet known (no replicas running and none configured) the ceiling
    is the current count, at least one: grow only as far as can be measured.
    """
    if config.power_budget_watts is None:
        return None
    watts = per_replica_watts(observation, config)
    if watts is None:
        return max(observation.current_replicas, 1)
    return _bounded_int(config.power_budget_watts / watts, "floor")


def slo_ratios(observation: Observation, config: PolicyConfig) -> dict[str, float]:
    """How close every SLO with a reading is to breaking (1 at the SLO): the observation's ratio (error
    budget used) when it has one, else ``reading / SLO`` (a NaN is no reading)."""
    o = observation
    readings = {"ttft": o.ttft_s, "itl": o.itl_s, "e2e": o.latency_s}
    given = {"ttft": o.ttft_ratio, "itl": o.itl_ratio, "e2e": o.latency_ratio}
    out: dict[str, float] = {}
    for kind, slo in config.slos():
        ratio, value = given[kind], readings[kind]
        if ratio is not None and not math.isnan(ratio):
            out[kind] = ratio
        elif value is not None and not math.isnan(value):
            out[kind] = value / slo
    return out


def breaching(observation: Observation, config: PolicyConfig, ratios: dict[str, float]) -> dict[str, float]:
    """The ratios over 1 that are evidence of a breach: every one, unless the SLO's quantile and the
    observations behind its ratio are known; then only where that many misses would come less often
    than ``breach_significance`` at the budget's own rate (``common.misses``). A p99 budget over 900
    first tokens expects 9 misses at exactly the SLO: 10 or 12 are its noise, not a shortfall
    (a clock governor holding the SLO's slack makes such windows common). The ratio is read as the
    budget used, exact where the SLO is a bucket bound (``scaler.signals.BudgetUsed``: its floor of
    ``BUDGET_MIN_OBSERVATIONS`` misses' worth of observations is undone here); a quantile-over-SLO
    ratio (an SLO off the buckets) is read the same way, an approximation."""
    o, c = observation, config
    known = {
        "ttft": (o.ttft_observations, c.ttft_quantile),
        "itl": (o.itl_observations, c.itl_quantile),
        "e2e": (o.latency_observations, c.latency_quantile),
    }
    out: dict[str, float] = {}
    for kind, ratio in ratios.items():
        if not ratio > 1:
            continue
        count, quantile = known[kind]
        if count is None or quantile is None:
            out[kind] = ratio
            continue
        budget = 1.0 - quantile
        judged_over = max(count, BUDGET_MIN_OBSERVATIONS / budget)
        if significant_ratio(ratio, count, budget, c.breach_significance, judged_over):
            out[kind] = ratio
    return out


@dataclass(frozen=True)
class _Work:
    """Demand, peak, forecast and per-replica capacity in one unit: requests/s with a configured (or
    externally learned) capacity, tokens/s with the capacity learned in tokens."""

    demand: float
    peak: float
    forecast: float | None
    capacity: float | None
    unit: str
    source: str
    learned: bool = False
    """The capacity comes from what replicas served, no configured capacity behind it."""


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _tokens_per_request(obs: Observation) -> float | None:
    """Today's tokens per request: the short window's, else the stabilisation window's peaks."""
    for tokens, requests in ((obs.load_tps, obs.load_rps), (obs.peak_load_tps, obs.peak_load_rps)):
        if tokens is not None and tokens > 0 and requests >= _TINY_RPS:
            return tokens / requests
    return None


def _work(obs: Observation, cfg: PolicyConfig) -> _Work:
    demand = max(obs.load_rps, obs.demand_rps or 0.0)
    peak = max(obs.peak_load_rps, demand)
    forecast = _finite(obs.forecast_rps)
    tps = _finite(obs.learned_capacity_tps)
    per_request = _tokens_per_request(obs)
    learned_rps = tps / per_request if tps is not None and tps > 0 and per_request is not None else None
    configured = cfg.replica_capacity_rps
    if configured is not None and configured > 0:
        # The configured capacity is a floor: a single-replica load test understates what replicas
        # behind one router carry together, and minutes in which they served more with every SLO
        # held are evidence of it (eo-sim, long-context: 25% less energy at 99.8% within the SLOs). A
        # young workload (under ten minutes of its own history) trusts its load test: conv x8, all
        # young, fell from 99.4% to 97.5% without this guard. Not learned (learnCapacity false): no
        # sample arrives and the configured value stands.
        seasoned = obs.history_minutes is not None and obs.history_minutes >= YOUNG_HISTORY_MINUTES
        if learned_rps is not None and learned_rps > configured and seasoned:
            source = f"configured {configured:.3f}, raised by what replicas served within the SLOs"
            return _Work(demand, peak, forecast, learned_rps, "rps", source)
        return _Work(demand, peak, forecast, configured, "rps", "configured")
    if obs.learned_capacity_rps is not None and obs.learned_capacity_rps > 0:
        return _Work(demand, peak, forecast, obs.learned_capacity_rps, "rps", "learned", learned=True)
    if tps is None or not tps > 0 or per_request is None:
        return _Work(demand, peak, forecast, None, "rps", "")
    demand_t = max(obs.load_tps or 0.0, (obs.demand_rps or 0.0) * per_request)
    peak_t = max(obs.peak_load_tps or 0.0, demand_t)
    forecast_t = forecast * per_request if forecast is not None else None
    source = f"learned, {per_request:.0f} tokens/request now"
    return _Work(demand_t, peak_t, forecast_t, tps, "tokens/s", source, learned=True)


def _settled(obs: Observation) -> int:
    cur = obs.current_replicas
    settled = cur if obs.settled_replicas is None else max(0, min(obs.settled_replicas, cur))
    return max(settled, 1)


def _one_more(settled: int) -> int:
    """The smallest step up from ``settled`` that the HPA acts on: one more replica, and past its 10%
    tolerance (at 18 replicas a 19th is a 5.6% change, which the HPA ignores: 20)."""
    return max(settled + 1, math.floor(settled * 1.1) + 1)


def _breach(obs: Observation, cfg: PolicyConfig, work: _Work, worst: float) -> int:
    """Replicas an SLO breach asks for (step 3 of the module docstring); never below the current count."""
    cur = obs.current_replicas
    settled = _settled(obs)
    capacity = work.capacity
    # A rising load shows in the breach before the short window catches up: plan for the forecast too.
    demand = max(work.demand, work.forecast or 0.0)
    need = _replicas_for(demand, capacity, cfg.target_utilization) if capacity is not None else None
    if need is not None and need <= settled:
        # The settled replicas carry the demand at the target utilisation: the breach is not a
        # capacity shortfall at the observed load (a burst inside the window, a backlog, a few long
        # requests). One more replica per settle window, not a multiple: by the time more would be
        # ready the burst is usually over, and they would idle until consolidation.
        return max(_one_more(settled), cur)
    if need is not None:
        # A shortfall: exactly what the demand needs at the target utilisation.
        return max(need, cur)
    # No capacity known: the worst latency ratio is the only measure of the shortfall.
    ratio = min(worst, cfg.max_breach_step_ratio)
    step = max(_one_more(settled), math.ceil(settled * ratio - _EPS))
    return max(step, cur)


def _leading(obs: Observation, cfg: PolicyConfig) -> tuple[Reason, str, int] | None:
    """A forming queue or a saturated KV cache (step 4): the reason, its detail and the step."""
    cur = obs.current_replicas
    if cur <= 0:
        return None
    settled = _settled(obs)
    waiting, running = obs.waiting_requests, obs.running_requests
    if waiting is not None and waiting > 0:
        share = waiting / max(running or 0.0, 1.0)
        step = min(max(_one_more(settled), math.ceil(settled * (1 + share) - _EPS)), 2 * settled)
        detail = f"{waiting:.0f} requests waiting for 30 s ({running or 0:.0f} running) at {cur} replicas"
        return Reason.QUEUE_FORMING, detail, max(step, cur)
    kv = obs.kv_usage_ratio
    if kv is not None and kv >= cfg.kv_saturation_ratio:
        detail = f"KV cache {kv:.0%} used (>= {cfg.kv_saturation_ratio:.0%}) at {cur} replicas"
        return Reason.KV_SATURATION, detail, max(_one_more(settled), cur)
    return None


def _headroom(obs: Observation, cfg: PolicyConfig) -> float:
    rise = obs.burst_rise
    if rise is None or not math.isfinite(rise):
        young = obs.history_minutes is not None and obs.history_minutes < YOUNG_HISTORY_MINUTES
        return cfg.young_burst_headroom if young else 1.0
    return min(max(rise, 1.0), cfg.max_burst_headroom)


def _scaling(obs: Observation, cfg: PolicyConfig, active: bool) -> tuple[int, Reason, str]:
    """Steps 3-8 of the module docstring: the count the SLOs, the leading signals and the load ask for."""
    cur = obs.current_replicas
    work = _work(obs, cfg)
    floor_active = 1 if active else 0
    capacity = work.capacity
    ratios = slo_ratios(obs, cfg)
    worst = max(ratios.values()) if ratios else 0.0
    breached = breaching(obs, cfg, ratios)

    if cur > 0 and breached:
        breach_kind, breach = max(breached.items(), key=lambda kv: kv[1])
        step = _breach(obs, cfg, work, breach)
        settled = "" if obs.settled_replicas is None else f" (settled {obs.settled_replicas})"
        detail = f"{_describe(ratios)}: {breach_kind} above its SLO at {cur} replicas{settled}"
        return step, Reason.SLO_BREACH, detail

    leading = _leading(obs, cfg)
    if leading is not None and leading[2] > cur:
        reason, detail, step = leading
        return step, reason, detail

    if capacity is None:
        if cur < floor_active:
            return floor_active, Reason.WAKE, f"demand {work.demand:.3f} rps at zero replicas"
        return cur, Reason.CAPACITY_UNKNOWN, "no per-replica capacity configured or learned yet: hold"

    headroom = _headroom(obs, cfg)
    target, demand, peak = cfg.target_utilization, work.demand, work.peak
    need_plain = max(_replicas_for(demand, capacity, target), floor_active)
    need_now = max(_replicas_for(demand * headroom, capacity, target), floor_active)
    forecast = work.forecast
    need_forecast = 0
    if active and forecast is not None and forecast > 0:
        need_forecast = max(_replicas_for(forecast, capacity, target), floor_active)
    # Every reading well under its SLO at today's per-replica load: the replicas can take more, so
    # consolidation may go all the way to the target utilisation instead of stopping at the
    # scale-down threshold.
    roomy = bool(ratios) and worst <= cfg.roomy_latency_ratio
    down_utilization = target if roomy else cfg.scale_down_utilization
    keep_for_peak = max(
        _replicas_for(peak * headroom, capacity, down_utilization), floor_active, need_forecast
    )
    need_peak = max(_replicas_for(peak, capacity, target), floor_active)
    near_slo = worst > cfg.near_slo_ratio
    unit = work.unit
    load_txt = (
        f"load {demand:.3f} {unit} (window peak {peak:.3f}), headroom x{headroom:.2f}, capacity "
        f"{capacity:.3f} {unit}/replica ({work.source})"
    )
    if forecast is not None:
        load_txt += f", forecast {forecast:.3f} {unit}"
    if ratios:
        load_txt += f", {_describe(ratios)}"
    by_chance = [kind for kind, ratio in ratios.items() if ratio > 1 and kind not in breached]
    if by_chance:
        load_txt += f" ({', '.join(by_chance)} over the SLO within chance: not a breach)"
    if roomy:
        load_txt += f" (all <= {cfg.roomy_latency_ratio:g} x SLO)"

    if cur < need_now:
        if cur == 0:
            return need_now, Reason.WAKE, load_txt
        return need_now, Reason.SCALE_UP_LOAD if cur < need_plain else Reason.BURST_HEADROOM, load_txt
    if cur < need_forecast:
        return need_forecast, Reason.FORECAST, load_txt
    blocked = near_slo or leading is not None
    # A learned capacity extrapolates minutes that held every SLO by up to 2.5x; a young workload has
    # not yet shown where the knee is, and its load is still rising to its level. Consolidating then
    # put conv x8's eo-learned (eo-sim) on 3 replicas a minute before 60 req/s came (79.9% within the
    # SLOs; 97.7% holding). A configured capacity is a load test's: trusted from the first minute.
    young = work.learned and obs.history_minutes is not None and obs.history_minutes < YOUNG_HISTORY_MINUTES
    if cur > keep_for_peak and not blocked and not young:
        return keep_for_peak, Reason.CONSOLIDATE, load_txt
    jpr, target_jpr = obs.joules_per_request, cfg.target_joules_per_request
    energy_room = not blocked and not young and cur > need_peak
    if target_jpr is not None and jpr is not None and jpr > target_jpr and energy_room:
        detail = f"{jpr:.2f} J/request > target {target_jpr:.2f}; {load_txt}"
        return max(need_peak, need_forecast, cur - 1), Reason.ENERGY_TARGET, detail
    if cur > keep_for_peak and blocked:
        why = leading[1] if leading is not None else f"{load_txt}: near the SLOs, which"
        return cur, Reason.HOLD_NEAR_SLO, f"{why} blocks scale-down"
    if cur > keep_for_peak:
        young_txt = f"{obs.history_minutes:.0f} of {YOUNG_HISTORY_MINUTES:.0f} minutes of history"
        return (
            cur,
            Reason.HOLD,
            f"young workload ({young_txt}): a learned capacity does not scale down yet; {load_txt}",
        )
    return cur, Reason.HOLD, load_txt


def _describe(ratios: dict[str, float]) -> str:
    return (
        ", ".join(f"{kind} at {ratio:.0%} of its SLO" for kind, ratio in ratios.items())
        or "no latency reading"
    )


def decide(observation: Observation, config: PolicyConfig) -> ReplicaDecision:
    """The replica count for ``observation`` under ``config`` (see the module docstring)."""
    obs, cfg = observation, config
    demand = max(obs.load_rps, obs.demand_rps or 0.0)
    # A latency reading means requests were served: a breach must never be answered with zero.
    recently_busy = obs.idle_for_s < cfg.idle_before_zero_s or bool(slo_ratios(obs, cfg))
    active = demand >= cfg.activation_rps or (recently_busy and obs.current_replicas > 0)

    if not active and cfg.min_replicas == 0:
        detail = f"no requests for {obs.idle_for_s:.0f}s (>= {cfg.idle_before_zero_s:.0f}s)"
        return ReplicaDecision(0, False, Reason.IDLE_ZERO, detail)

    replicas, reason, detail = _scaling(obs, cfg, active)

    if replicas > cfg.max_replicas:
        detail = f"{reason.value} wanted {replicas}, capped at maxReplicas; {detail}"
        replicas, reason = cfg.max_replicas, Reason.MAX_REPLICAS
    if replicas < cfg.min_replicas:
        detail = f"{reason.value} wanted {replicas}, raised to minReplicas; {detail}"
        replicas, reason = cfg.min_replicas, Reason.MIN_REPLICAS

    ceiling = budget_ceiling(obs, cfg)
    if ceiling is not None and replicas > ceiling:
        budget = f"power budget {cfg.power_budget_watts:.0f} W allows {ceiling} replicas"
        detail = f"{reason.value} wanted {replicas}; {budget} (the budget is a hard ceiling); {detail}"
        if ceiling < cfg.min_replicas:
            replicas, reason = cfg.min_replicas, Reason.POWER_BUDGET_BELOW_MIN
        else:
            replicas, reason = ceiling, Reason.POWER_BUDGET
    # Active only with replicas to run: a budget that allows none must not let KEDA activate one.
    return ReplicaDecision(replicas, active and replicas > 0, reason, detail)


def advisory(decision: ReplicaDecision, observation: Observation) -> ReplicaDecision:
    """What advisory mode reports to KEDA: the current count (nothing changes), same reason and detail.

    The computed decision is still published on the scaler's metrics, so operators see what enforce
    mode would do before they switch it on.
    """
    current = observation.current_replicas
    detail = f"advisory: would set {decision.replicas}; {decision.detail}"
    return ReplicaDecision(current, current > 0, decision.reason, detail)
