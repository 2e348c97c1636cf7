"""Energy Orchestrator's own decision code behind the simulator's adapter interface. No re-implementation:

* ``EoTrigger`` evaluates the trigger's signals as declared in ``scaler/signals.py`` (the same parts,
  windows and subquery steps that ``scaler/queries.py`` renders as PromQL) over ``SimPrometheus``
  (``SimSeries``, the simulator's side of ``signals.SeriesView``), turns them into the
  ``scaler.policy.Observation`` with the scaler's own ``scaler.queries.observation_from_values`` and
  calls the real ``scaler.policy.decide``; KEDA trigger metadata is parsed by the real
  ``scaler.metadata.parse_metadata``, so the simulator takes exactly what a ScaledObject holds.
* ``EoCapController`` runs the real ``powercap.controller.step`` per replica with the
  ``ControllerConfig`` the sidecar derives from its settings: ``powercap.settings.controller_config``
  over ``powercap.settings.Settings`` (its defaults, the flags the simulator exposes) and the GPU's range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from common.settings import from_values
from gpumodel.model import ServerProfile
from powercap import settings as powercap_settings
from powercap.controller import ControllerConfig, ControllerState, Reading, initial_state, step
from powercap.settings import GpuRange, Settings
from scaler import signals as sig
from scaler.metadata import TriggerConfig, parse_metadata
from scaler.policy import Observation, decide
from scaler.queries import observation_from_values, signals_for
from sim.engine import Policy
from sim.keda import HpaConfig
from sim.observe import SimPrometheus
from sim.policies import CapController, CapReading, CapSetting, ScalerAnswer, StaticSchedule
from sim.slo import Slos

# The gateway's arrival rate over this window is the demand (the activationQuery a scale-from-zero
# deployment needs: at zero replicas nothing else sees demand).
DEMAND_WINDOW_S = 60.0
# The HPA behaviour of manifests/examples/scaledobject.yaml: the scaler applies its own scale-down
# window (stabilizationWindowSeconds), so the HPA's is short.
HPA_SCALE_DOWN_WINDOW_S = 60.0
_HISTOGRAMS = {
    sig.E2E_HISTOGRAM: "e2e",
    sig.TTFT_HISTOGRAM: "ttft",
    sig.ITL_HISTOGRAM: "itl",
    sig.REQUEST_ITL_HISTOGRAM: "request_itl",
}


class SimSeries:
    """``signals.SeriesView`` over the simulator's Prometheus: what the exporter's mirrored series
    would hold for the workload. Before the trace starts there is no series (the evaluators see what a
    Prometheus with no older history sees); the KV cache is not modelled, so its gauge is absent."""

    def __init__(self, prom: SimPrometheus) -> None:
        self.prom = prom

    def counter_rate(self, metric: str, window_s: float, at_s: float) -> float | None:
        if at_s <= 0:
            return None  # a rate needs two samples; the first is at the end of the first slot
        if metric == sig.REQUESTS:
            return self.prom.rate(window_s, at_s)
        if metric == sig.TOKENS:
            return self.prom.token_rate(window_s, at_s)
        histogram = _HISTOGRAMS.get(metric.removesuffix("_count"))
        if histogram is not None and metric.endswith("_count"):
            return self.prom.count_rate(histogram, window_s, at_s)
        return None

    def quantile(self, metric: str, q: float, window_s: float, at_s: float) -> float | None:
        if at_s < 0:
            return None
        kind = _HISTOGRAMS.get(metric)
        if kind is None:
            return None
        read = {
            "e2e": self.prom.latency_quantile,
            "ttft": self.prom.ttft_quantile,
            "itl": self.prom.itl_quantile,
            "request_itl": self.prom.request_itl_quantile,
        }
        value = read[kind](q, window_s, at_s)
        return math.nan if value is None else value  # PromQL: NaN over empty buckets

    def share_within(self, metric: str, bound_s: float, window_s: float, at_s: float) -> float | None:
        kind = _HISTOGRAMS.get(metric)
        if at_s <= 0 or kind is None:
            return None
        return self.prom.share_within(kind, bound_s, window_s, at_s)

    def gauge(self, metric: str, aggregation: str, at_s: float) -> float | None:
        if at_s < 0 or self.prom.replicas(at_s) <= 0:
            return None
        if metric == sig.WAITING:
            return float(self.prom.waiting(at_s))
        if metric == sig.RUNNING:
            return float(self.prom.running(at_s))
        return None

    def replicas(self, at_s: float) -> int:
        return self.prom.replicas(at_s) if at_s >= 0 else 0


class EoTrigger:
    """The eo-scaler KEDA trigger: observation from (simulated) Prometheus, then ``decide()``."""

    def __init__(self, metadata: Mapping[str, str], supply_demand: bool = True, name: str = "eo") -> None:
        full = {"namespace": "sim", "workload": "llm", **metadata}
        self.trigger: TriggerConfig = parse_metadata(full)
        self.config = self.trigger.policy_config()
        self.supply_demand = supply_demand
        self.name = name
        self.signals = signals_for(self.trigger)
        # Values of subquery points already evaluated in one run: its simulated history only grows.
        self._memo: sig.Memo = {}
        self._memo_of: SimPrometheus | None = None

    def values(
        self, prom: SimPrometheus, now_s: float, view: sig.SeriesView | None = None
    ) -> dict[str, float]:
        """Every part of the trigger's query at ``now_s``: the signals as declared (over ``view``, by
        default ``SimSeries(prom)``), and the pod evidence a healthy exporter pipeline gives (fresh
        heartbeat, every pod seen and serving)."""
        view = view if view is not None else SimSeries(prom)
        if self._memo_of is not prom:
            self._memo, self._memo_of = {}, prom
        replicas = view.replicas(now_s)
        values = sig.evaluate(self.signals.parts, view, now_s, self._memo)
        values.update(heartbeat_age=0.0, visible_pods=float(replicas), unwatched_nodes=0.0,
                      replicas=float(replicas))  # fmt: skip
        if self.supply_demand:
            values["demand"] = prom.arrival_rate(DEMAND_WINDOW_S, now_s)
        return values

    def observe(self, prom: SimPrometheus, now_s: float) -> Observation:
        """scaler.queries.observation_from_values on the parts evaluated at ``now_s``."""
        return observation_from_values(self.trigger, self.values(prom, now_s))

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
    floor_mhz: float | None = None
    """The sidecar's ``--floor-mhz`` (clock actuator): the lowest SM clock it may lock."""


def sidecar_settings(options: CapOptions) -> Settings:
    """The sidecar's ``Settings`` for ``options``: the flags given, ``Settings``' defaults for the rest."""
    values: dict[str, object] = {"latency_target_s": options.latency_target_s, "actuator": options.actuator}
    if options.floor_mhz is not None:
        values["floor_mhz"] = options.floor_mhz
    return from_values(Settings, values, environ={})


def controller_config(options: CapOptions, profile: ServerProfile) -> tuple[ControllerConfig, float]:
    """(config, original setting) as the sidecar derives them for a GPU of ``profile``: its own
    ``powercap.settings.controller_config`` over the GPU's range.

    Power: per GPU, as the sidecar sets the same limit on each of the pod's GPUs: between the GPU's
    minimum and its original (default) limit. Clocks: between the GPU's minimum and maximum SM clock,
    original = the maximum.
    """
    n = profile.num_gpus
    if options.actuator == "power":
        default_w = profile.power_limit_default_w / n
        gpus = GpuRange(low=profile.power_limit_min_w / n, high=default_w, original=default_w)
    else:
        top_mhz = float(profile.max_sm_clock_mhz)
        gpus = GpuRange(low=float(profile.min_sm_clock_mhz), high=top_mhz, original=top_mhz)
    return powercap_settings.controller_config(sidecar_settings(options), gpus), gpus.original


class EoCapController:
    """One eo-powercap sidecar per replica, each running the real ``step()`` at the sidecar interval."""

    def __init__(self, options: CapOptions, profile: ServerProfile, name: str = "eo-powercap") -> None:
        self.options = options
        self.config, self.original = controller_config(options, profile)
        self.interval_s = sidecar_settings(options).interval_s
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
    slo_s: float | None,
    quantile: float,
    capacity_rps: float | None,
    max_replicas: int = 100,
    slos: Slos | None = None,
    cold_start_s: float | None = None,
) -> dict[str, str]:
    """The ScaledObject trigger metadata the simulator gives the eo-scaler (as a user would write it).

    With ``slos`` the trigger holds exactly those, each at ``quantile``, read from per-request
    histograms (ITL from each request's mean time per output token, which the simulated servers publish
    as vLLM does; the token histogram's high quantile would over-state the per-request tail). Without,
    the end-to-end ``slo_s`` at ``quantile``.
    """
    md = {"minReplicas": "0", "maxReplicas": str(max_replicas)}
    if slos is None:
        if slo_s is None:
            raise ValueError("give slo_s or slos")
        md.update(latencySloSeconds=f"{slo_s:g}", latencyQuantile=f"{quantile:g}")
    else:
        if slos.ttft_s is not None:
            md.update(ttftSloSeconds=f"{slos.ttft_s:g}", ttftQuantile=f"{quantile:g}")
        if slos.itl_s is not None:
            md.update(itlSloSeconds=f"{slos.itl_s:g}", itlQuantile=f"{quantile:g}")
        if slos.e2e_s is not None:
            md.update(latencySloSeconds=f"{slos.e2e_s:g}", latencyQuantile=f"{quantile:g}")
    if capacity_rps is not None:
        md["replicaCapacityRps"] = f"{capacity_rps:.4g}"
    if cold_start_s is not None:
        md["coldStartSeconds"] = f"{cold_start_s:g}"
    return md


def eo_policy(
    name: str,
    slo_s: float | None,
    quantile: float,
    capacity_rps: float | None,
    profile: ServerProfile,
    initial_replicas: int,
    caps: CapOptions | None,
    metadata: Mapping[str, str] | None = None,
    slos: Slos | None = None,
    cold_start_s: float | None = None,
    sidecar: CapController | None = None,
) -> Policy:
    """Energy Orchestrator as deployed: the eo-scaler trigger (minReplicaCount 0) and, optionally, the
    eo-powercap sidecar in every replica: ``sidecar`` as given (the clock governor,
    ``sim.governor.EoGovernorController``), or the feedback loop on ``caps``."""
    if caps is not None and sidecar is not None:
        raise ValueError("give caps (the feedback loop) or sidecar, not both")
    md = {
        **eo_metadata(slo_s, quantile, capacity_rps, slos=slos, cold_start_s=cold_start_s),
        **(metadata or {}),
    }
    trigger = EoTrigger(md, name=name)
    return Policy(
        name,
        trigger=trigger,
        caps=EoCapController(caps, profile) if caps is not None else sidecar,
        hpa=HpaConfig(
            min_replicas=trigger.config.min_replicas,
            max_replicas=trigger.config.max_replicas,
            scale_down_window_s=HPA_SCALE_DOWN_WINDOW_S,
        ),
        initial_replicas=initial_replicas,
    )


def caps_only_policy(
    replicas: int, caps: CapOptions | CapController, profile: ServerProfile, name: str = "caps-only"
) -> Policy:
    """The sidecar alone: a fixed replica count, in each replica the given sidecar (the governor) or
    the feedback loop on ``caps``."""
    sidecar = EoCapController(caps, profile) if isinstance(caps, CapOptions) else caps
    return Policy(name, schedule=StaticSchedule(replicas), caps=sidecar)
