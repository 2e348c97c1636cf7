"""The replica policy: one pure function from an observation to a replica decision.

``decide(observation, config)`` answers "how many replicas should this workload run now, and why".
It is stateless on purpose: everything it must remember (the peak load over the stabilisation window,
the capacity per replica learned while the SLO held, how long the workload has been idle) arrives
inside the ``Observation``, derived by the caller from Prometheus history. Several scaler replicas
therefore agree, a restart changes nothing, and the simulator (``sim/``) can drive the same code
with observations it builds. No I/O and no clock: time comes in as numbers of seconds.

Order of precedence, from strongest to weakest:

1. Idle: no requests for ``idle_before_zero_s`` (and no demand) with ``min_replicas == 0`` -> 0.
2. Power budget: a hard ceiling, ``replicas * per_replica_watts <= budget``. When it conflicts with the
   latency SLO the budget wins: a budget is usually a breaker, a rack or a contract limit that the
   operator set knowing it may cost latency, and exceeding it has consequences outside this workload.
   The decision says so (reason ``power_budget``). ``min_replicas``/``max_replicas`` still bound the
   answer (KEDA's HPA enforces them anyway), reason ``power_budget_below_min`` flags the conflict.
3. Latency SLO: a breach scales up at once, never down, in proportion to what it observes: to the
   replicas the demand needs at ``target_utilization`` of the capacity, and to ``settled * latency/slo``
   (capped at ``max_breach_step_ratio``), at least +1 and 10% + 1 (clearing the HPA's 10% tolerance).
   ``settled`` is the fewest replicas serving over the last breach-settle window (a cold start plus
   the latency window), not the current count: replicas started for this breach and now serving do
   not count as "already tried", so repeated answers to one breach do not compound while its first
   answer is still coming up.
4. Load: the fewest replicas that carry the demand at ``target_utilization`` of the per-replica
   capacity: ``ceil(demand / (capacity * target_utilization))``, scaled up to at once.
5. Consolidation with hysteresis: scale down to ``ceil(peak / (capacity * scale_down_utilization))``
   where ``peak`` is the highest load over the stabilisation window, and not while latency is near the
   SLO (``near_slo_ratio``). Latency headroom lets it go further: with latency at most
   ``roomy_latency_ratio`` of the SLO the replicas can take more, and consolidation goes to
   ``target_utilization``. Scale-up (step 4) needs more than the target utilisation, so between the
   two the current count holds and a constant load never flaps.
6. Energy target: when joules per request exceed the target and latency has headroom, remove one
   replica at a time down to the load threshold of the window's peak (fuller batches cost less energy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

# Capacity ratios are computed in floats; this keeps ceil(2.0000000001) from adding a replica.
_EPS = 1e-9
_HUGE = 10**6  # more replicas than any cluster runs; keeps int() away from inf


class Reason(StrEnum):
    """Why a decision came out as it did (the ``reason`` label of ``eo_scaler_decisions_total``)."""

    IDLE_ZERO = "idle_zero"
    WAKE = "wake"
    SLO_BREACH = "slo_breach"
    SCALE_UP_LOAD = "scale_up_load"
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
    """What the world looked like, with the memory the policy needs derived from history.

    current_replicas: pods of the workload serving now.
    load_rps: requests per second served now (all replicas together).
    peak_load_rps: highest load over the stabilisation window (>= load_rps; the policy takes the max).
    latency_s: the SLO quantile of request latency, None when there were no requests to measure.
    idle_for_s: how long no request was served (0 when requests are flowing). A source that can only
        tell "none in the last W seconds" reports W.
    demand_rps: demand seen upstream of the pods (gateway, queue), the only signal at zero replicas.
    learned_capacity_rps: highest per-replica load observed while latency held the SLO, or None.
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


@dataclass(frozen=True)
class PolicyConfig:
    """Tunables of the policy, units in the names."""

    min_replicas: int
    max_replicas: int
    latency_slo_s: float
    target_utilization: float = 0.9
    scale_down_utilization: float = 0.8
    # Latency above this fraction of the SLO blocks scale-down (the SLO has little room left).
    near_slo_ratio: float = 0.85
    replica_capacity_rps: float | None = None
    power_budget_watts: float | None = None
    replica_power_watts: float | None = None
    target_joules_per_request: float | None = None
    idle_before_zero_s: float = 300.0
    activation_rps: float = 0.05
    max_breach_step_ratio: float = 2.0
    # Latency at or below this fraction of the SLO lets consolidation reach target_utilization.
    roomy_latency_ratio: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")
        if self.max_replicas < 1:
            raise ValueError("max_replicas must be >= 1")
        if not 0 < self.scale_down_utilization <= self.target_utilization <= 1:
            raise ValueError("need 0 < scale_down_utilization <= target_utilization <= 1")
        if self.latency_slo_s <= 0:
            raise ValueError("latency_slo_s must be > 0")
        if not 0 <= self.roomy_latency_ratio <= self.near_slo_ratio:
            raise ValueError("need 0 <= roomy_latency_ratio <= near_slo_ratio")
        if self.max_breach_step_ratio < 1:
            raise ValueError("max_breach_step_ratio must be >= 1")


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


def _breach(obs: Observation, cfg: PolicyConfig, demand: float, capacity: float | None) -> int:
    """Replicas an SLO breach asks for (step 3 of the module docstring); never below the current count."""
    cur = obs.current_replicas
    settled = cur if obs.settled_replicas is None else max(0, min(obs.settled_replicas, cur))
    settled = max(settled, 1)
    need = _replicas_for(demand, capacity, cfg.target_utilization) if capacity is not None else None
    if need is not None and need <= settled:
        # The settled replicas carry the demand at the target utilisation: the breach is not a
        # capacity shortfall at the observed load (a burst inside the window, a backlog, a few long
        # requests). One more replica per settle window, not a multiple: by the time more would be
        # ready the burst is usually over, and they would idle until consolidation.
        return max(settled + 1, cur)
    if need is not None:
        # A shortfall: exactly what the demand needs at the target utilisation.
        return max(need, cur)
    # No capacity known: the latency ratio is the only measure of the shortfall.
    ratio = min((obs.latency_s or 0.0) / cfg.latency_slo_s, cfg.max_breach_step_ratio)
    step = max(settled + 1, math.floor(settled * 1.1) + 1, math.ceil(settled * ratio - _EPS))
    return max(step, cur)


def _scaling(obs: Observation, cfg: PolicyConfig, active: bool) -> tuple[int, Reason, str]:
    """Steps 3-6 of the module docstring: the count the SLO and the load ask for."""
    cur = obs.current_replicas
    demand = max(obs.load_rps, obs.demand_rps or 0.0)
    peak = max(obs.peak_load_rps, demand)
    floor_active = 1 if active else 0
    capacity = cfg.replica_capacity_rps or obs.learned_capacity_rps
    capacity = capacity if capacity is not None and capacity > 0 else None
    latency = obs.latency_s
    slo = cfg.latency_slo_s

    if cur > 0 and latency is not None and latency > slo:
        step = _breach(obs, cfg, demand, capacity)
        settled = "" if obs.settled_replicas is None else f" (settled {obs.settled_replicas})"
        return step, Reason.SLO_BREACH, f"latency {latency:.3f}s > SLO {slo:.3f}s at {cur} replicas{settled}"

    if capacity is None:
        if cur < floor_active:
            return floor_active, Reason.WAKE, f"demand {demand:.3f} rps at zero replicas"
        return cur, Reason.CAPACITY_UNKNOWN, "no per-replica capacity configured or learned yet: hold"

    need_now = max(_replicas_for(demand, capacity, cfg.target_utilization), floor_active)
    need_peak = max(_replicas_for(peak, capacity, cfg.target_utilization), floor_active)
    # Latency well under the SLO at today's per-replica load: the replicas can take more, so
    # consolidation may go all the way to the target utilisation instead of stopping at the
    # scale-down threshold.
    roomy = latency is not None and latency <= cfg.roomy_latency_ratio * slo
    down_utilization = cfg.target_utilization if roomy else cfg.scale_down_utilization
    keep_for_peak = max(_replicas_for(peak, capacity, down_utilization), floor_active)
    near_slo = latency is not None and latency > cfg.near_slo_ratio * slo
    load_txt = f"load {demand:.3f} rps (window peak {peak:.3f}), capacity {capacity:.3f} rps/replica"
    if roomy:
        load_txt += f", latency {latency:.3f}s <= {cfg.roomy_latency_ratio:g} x SLO"

    if cur < need_now:
        reason = Reason.WAKE if cur == 0 else Reason.SCALE_UP_LOAD
        return need_now, reason, load_txt
    if cur > keep_for_peak and not near_slo:
        return keep_for_peak, Reason.CONSOLIDATE, load_txt
    jpr, target_jpr = obs.joules_per_request, cfg.target_joules_per_request
    if target_jpr is not None and jpr is not None and jpr > target_jpr and not near_slo and cur > need_peak:
        detail = f"{jpr:.2f} J/request > target {target_jpr:.2f}; {load_txt}"
        return max(need_peak, cur - 1), Reason.ENERGY_TARGET, detail
    if cur > keep_for_peak:
        return cur, Reason.HOLD_NEAR_SLO, f"latency {latency}s near SLO {slo}s blocks scale-down"
    return cur, Reason.HOLD, load_txt


def decide(observation: Observation, config: PolicyConfig) -> ReplicaDecision:
    """The replica count for ``observation`` under ``config`` (see the module docstring)."""
    obs, cfg = observation, config
    demand = max(obs.load_rps, obs.demand_rps or 0.0)
    # A latency reading means requests were served: a breach must never be answered with zero.
    recently_busy = obs.idle_for_s < cfg.idle_before_zero_s or obs.latency_s is not None
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
