"""Energy Orchestrator's own decision code behind the simulator's adapter interface. No re-implementation:

* ``EoTrigger`` builds the ``scaler.policy.Observation`` the way ``scaler/queries.py`` builds it from
  Prometheus (same parts, same windows, same PromQL semantics, evaluated on ``SimPrometheus``) and calls
  the real ``scaler.policy.decide``; KEDA trigger metadata is parsed by the real
  ``scaler.metadata.parse_metadata``, so the simulator takes exactly what a ScaledObject holds. The
  simulated Prometheus also holds the TTFT and inter-token-latency histograms the exporter mirrors
  (``_ttft``, ``_itl``), for a trigger that holds those SLOs; today's trigger holds end-to-end latency.
* ``EoCapController`` runs the real ``powercap.controller.step`` per replica with the
  ``ControllerConfig`` the sidecar derives from its settings (``powercap.settings.Settings``
  defaults, bounds intersected with the GPU's range as ``sidecar.py`` does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gpumodel.model import ServerProfile
from powercap.controller import ControllerConfig, ControllerState, Reading, initial_state, step
from powercap.settings import Settings
from scaler.metadata import TriggerConfig, parse_metadata
from scaler.policy import Observation, decide
from scaler.queries import LEARNED_CAPACITY_MAX_EXTRAPOLATION, SETTLED_REPLICAS_STEP
from sim.engine import Policy
from sim.keda import HpaConfig
from sim.observe import SimPrometheus
from sim.policies import CapReading, CapSetting, ScalerAnswer, StaticSchedule

# scaler/queries.py: the load KPI is a rate over 5 minutes, the latency quantile a rate over 1 minute,
# the learned capacity a 1-minute subquery, the settled replicas a 15-s subquery, and recording rules
# are evaluated every 15 s.
LOAD_WINDOW_S = 300.0
LATENCY_WINDOW_S = 60.0
SUBQUERY_STEP_S = 60.0
SETTLED_STEP_S = float(SETTLED_REPLICAS_STEP.removesuffix("s"))
RULE_INTERVAL_S = 15.0
DEMAND_WINDOW_S = 60.0


class EoTrigger:
    """The eo-scaler KEDA trigger: observation from (simulated) Prometheus, then ``decide()``."""

    def __init__(self, metadata: Mapping[str, str], supply_demand: bool = True, name: str = "eo") -> None:
        full = {"namespace": "sim", "workload": "llm", **metadata}
        self.trigger: TriggerConfig = parse_metadata(full)
        self.config = self.trigger.policy_config()
        self.supply_demand = supply_demand
        self.name = name
        self._capacity_samples: dict[int, float | None] = {}

    # Each helper is one part of scaler.queries.parts(), evaluated at ``at_s``.
    def _load(self, prom: SimPrometheus, at_s: float) -> float:
        return prom.rate(LOAD_WINDOW_S, at_s)

    def _latency(self, prom: SimPrometheus, at_s: float) -> float | None:
        return prom.latency_quantile(self.trigger.latency_quantile, LATENCY_WINDOW_S, at_s)

    def _ttft(self, prom: SimPrometheus, at_s: float, quantile: float) -> float | None:
        """``histogram_quantile(q, sum by (le) (rate(ttft_bucket[1m])))``: the TTFT quantile input, over
        the mirrored ``vllm:time_to_first_token_seconds`` (for a trigger that takes a TTFT SLO)."""
        return prom.ttft_quantile(quantile, LATENCY_WINDOW_S, at_s)

    def _itl(self, prom: SimPrometheus, at_s: float, quantile: float) -> float | None:
        """The same over the mirrored inter-token-latency histogram (a quantile over tokens)."""
        return prom.itl_quantile(quantile, LATENCY_WINDOW_S, at_s)

    def _peak(self, prom: SimPrometheus, now_s: float) -> float:
        """``max_over_time(load_kpi[stabilization])`` over the rule's evaluations."""
        window = self.trigger.stabilization_window_s
        n = max(1, int(window // RULE_INTERVAL_S))
        last = math.floor(now_s / RULE_INTERVAL_S) * RULE_INTERVAL_S
        times = [last - i * RULE_INTERVAL_S for i in range(n)]
        return max(self._load(prom, t) for t in times if t >= 0) if last >= 0 else 0.0

    def _settled(self, prom: SimPrometheus, now_s: float) -> int | None:
        """``min_over_time(replicas[breach_settle:15s])`` (instants with no pod series are absent)."""
        n = max(1, int(self.trigger.breach_settle_s // SETTLED_STEP_S))
        last = math.floor(now_s / SETTLED_STEP_S) * SETTLED_STEP_S
        times = [last - i * SETTLED_STEP_S for i in range(n)]
        present = [c for c in (prom.replicas(t) for t in times if t >= 0) if c > 0]
        return min(present) if present else None

    def _capacity(self, prom: SimPrometheus, now_s: float) -> float | None:
        """``max_over_time((load / replicas * clamp_max(slo / latency, 3) and on() latency <= slo)
        [lookback:1m])``."""
        if self.trigger.replica_capacity_rps is not None:
            return None
        last = int(now_s // SUBQUERY_STEP_S)
        first = max(0, last - int(self.trigger.capacity_lookback_s // SUBQUERY_STEP_S) + 1)
        best: float | None = None
        for m in range(first, last + 1):
            if m not in self._capacity_samples or m == last:
                self._capacity_samples[m] = self._capacity_at(prom, m * SUBQUERY_STEP_S)
            v = self._capacity_samples[m]
            if v is not None and (best is None or v > best):
                best = v
        return best

    def _capacity_at(self, prom: SimPrometheus, at_s: float) -> float | None:
        replicas = prom.replicas(at_s)
        latency = self._latency(prom, at_s)
        slo = self.trigger.latency_slo_s
        if replicas <= 0 or latency is None or latency > slo:
            return None
        most = LEARNED_CAPACITY_MAX_EXTRAPOLATION
        headroom = min(slo / latency, most) if latency > 0 else most
        return self._load(prom, at_s) / replicas * headroom

    def observe(self, prom: SimPrometheus, now_s: float) -> Observation:
        """scaler.queries.to_observation on the parts evaluated at ``now_s``."""
        trig = self.trigger
        demand = prom.arrival_rate(DEMAND_WINDOW_S, now_s) if self.supply_demand else None
        recent = prom.increase(trig.idle_before_zero_s, now_s)
        replicas = prom.replicas(now_s)
        capacity = self._capacity(prom, now_s)
        peak = self._peak(prom, now_s)
        if replicas == 0:
            return Observation(
                current_replicas=0,
                load_rps=0.0,
                peak_load_rps=max(0.0, peak),
                latency_s=None,
                idle_for_s=trig.idle_before_zero_s if not recent else 0.0,
                demand_rps=demand,
                learned_capacity_rps=capacity,
                settled_replicas=0,
            )
        load = self._load(prom, now_s)
        return Observation(
            current_replicas=replicas,
            load_rps=load,
            peak_load_rps=max(load, peak),
            latency_s=self._latency(prom, now_s),
            idle_for_s=0.0 if recent > 0 else trig.idle_before_zero_s,
            demand_rps=demand,
            learned_capacity_rps=capacity,
            settled_replicas=self._settled(prom, now_s),
        )

    def answer(self, prom: SimPrometheus, now_s: float) -> ScalerAnswer:
        decision = decide(self.observe(prom, now_s), self.config)
        # service.py: one MetricSpec with target 1 and the desired replicas as the value.
        return ScalerAnswer(float(decision.replicas), 1.0, decision.active, str(decision.reason))


@dataclass(frozen=True)
class CapOptions:
    """The sidecar flags the simulator exposes; everything else keeps ``Settings``' defaults."""

    latency_target_s: float
    actuator: str = "power"
    latency_quantile: float = 0.95
    latency_window_s: float = 60.0


def controller_config(options: CapOptions, profile: ServerProfile) -> tuple[ControllerConfig, float]:
    """(config, original setting) as ``sidecar.py`` derives them for a GPU of ``profile``.

    Power: per GPU, as the sidecar sets the same limit on each of the pod's GPUs: floor = the GPU's
    minimum limit, ceiling = its original (default) limit. Clocks: between the GPU's minimum and maximum
    SM clock, original = the maximum.
    """
    s = Settings(latency_target_s=options.latency_target_s, actuator=options.actuator)
    n = profile.num_gpus
    if options.actuator == "power":
        low, original = profile.power_limit_min_w / n, profile.power_limit_default_w / n
        floor = max(s.floor_w if s.floor_w is not None else low, low)
        ceiling = min(s.ceiling_w if s.ceiling_w is not None else original, original)
        step_size = s.max_step_w
    else:
        low, original = float(profile.min_sm_clock_mhz), float(profile.max_sm_clock_mhz)
        floor = max(s.floor_mhz if s.floor_mhz is not None else low, low)
        ceiling = min(s.ceiling_mhz if s.ceiling_mhz is not None else original, original)
        step_size = s.max_step_mhz
    config = ControllerConfig(
        actuator="power" if options.actuator == "power" else "clocks",
        floor=floor,
        ceiling=ceiling,
        target_latency_s=s.latency_target_s,
        max_step_down=step_size,
        lower_below_ratio=s.lower_below_ratio,
        raise_above_ratio=s.raise_above_ratio,
        raise_fraction=s.raise_fraction,
        settle_s=s.settle_s,
        stale_after_s=s.stale_after_s,
        thermal_margin_c=s.thermal_margin_c,
        breach_memory_s=s.breach_memory_s,
        load_jump_ratio=s.load_jump_ratio,
    )
    return config, original


class EoCapController:
    """One eo-powercap sidecar per replica, each running the real ``step()`` at the sidecar interval."""

    def __init__(self, options: CapOptions, profile: ServerProfile, name: str = "eo-powercap") -> None:
        self.options = options
        self.config, self.original = controller_config(options, profile)
        self.interval_s = Settings(latency_target_s=options.latency_target_s).interval_s
        self.window_s = options.latency_window_s
        self.quantile = options.latency_quantile
        self.name = name
        self._gpus = profile.num_gpus
        self._states: dict[int, ControllerState] = {}

    def _setting(self, setpoint: float) -> CapSetting:
        if self.config.actuator == "power":
            return CapSetting(power_cap_w=setpoint * self._gpus)  # the model takes the replica's total
        return CapSetting(locked_clock_mhz=setpoint)

    def start(self, replica_id: int, now_s: float) -> CapSetting:
        state = initial_state(self.original, self.config)
        self._states[replica_id] = state
        return self._setting(state.setpoint)

    def control(self, replica_id: int, reading: CapReading) -> CapSetting:
        state = self._states[replica_id]
        new_state, decision = step(
            state,
            Reading(now_s=reading.now_s, latency_s=reading.latency_s, load_rps=reading.load_rps),
            self.config,
        )
        self._states[replica_id] = new_state
        return self._setting(decision.setpoint)


def eo_metadata(
    slo_s: float, quantile: float, capacity_rps: float | None, max_replicas: int = 100
) -> dict[str, str]:
    """The ScaledObject trigger metadata the simulator gives the eo-scaler (as a user would write it)."""
    md = {
        "latencySloSeconds": f"{slo_s:g}",
        "latencyQuantile": f"{quantile:g}",
        "minReplicas": "0",
        "maxReplicas": str(max_replicas),
    }
    if capacity_rps is not None:
        md["replicaCapacityRps"] = f"{capacity_rps:.4g}"
    return md


def eo_policy(
    name: str,
    slo_s: float,
    quantile: float,
    capacity_rps: float | None,
    profile: ServerProfile,
    initial_replicas: int,
    caps: CapOptions | None,
    metadata: Mapping[str, str] | None = None,
) -> Policy:
    """Energy Orchestrator as deployed: the eo-scaler trigger (minReplicaCount 0) and, optionally, the
    eo-powercap sidecar in every replica."""
    md = {**eo_metadata(slo_s, quantile, capacity_rps), **(metadata or {})}
    trigger = EoTrigger(md, name=name)
    return Policy(
        name,
        trigger=trigger,
        caps=EoCapController(caps, profile) if caps is not None else None,
        hpa=HpaConfig(min_replicas=trigger.config.min_replicas, max_replicas=trigger.config.max_replicas),
        initial_replicas=initial_replicas,
    )


def caps_only_policy(replicas: int, caps: CapOptions, profile: ServerProfile) -> Policy:
    """The sidecar alone: a fixed replica count, the cap controller in each replica."""
    return Policy("caps-only", schedule=StaticSchedule(replicas), caps=EoCapController(caps, profile))
