"""A what-if scenario: a trace, a server, its SLOs, and the policies compared on it, set up fairly.

* SLOs (``sim.slo``): by default a pair, time to first token and inter-token latency, each twice the
  trace's unloaded p99 (each request alone on a replica) rounded up to a bucket boundary of vLLM's
  histogram for it, because the scaler and the sidecar read those histograms and a target inside a
  wide bucket is read imprecisely. An end-to-end SLO (the previous default, derived the same way) can
  be given too or instead. Attainment is the share of requests within every SLO at once.
* Replica capacity at the SLOs: a load test in the simulator, as a user would run one: one replica,
  Poisson arrivals with the trace's own request mix, the highest rate at which the ``quantile`` of
  the requests meets every SLO.
* Baselines as users set them (the ones the issue's targets are measured against): ``static`` =
  the peak minute's request rate over the load-tested capacity at the utilisation users provision for
  (``PROVISION_UTILIZATION``, 0.7), rounded up; ``threshold`` = KEDA's prometheus scaler on request rate
  with threshold = that same share of the load-tested capacity per replica.
* Oracle-tuned variants, searched in the simulator on this very trace (the strongest version of each,
  reported as extra rows), each holding the attainment target within all SLOs: ``static-min`` = the
  fewest fixed replicas; ``threshold-tuned`` = the highest threshold; ``optimum-replicas`` = the
  replica-only plan (``sim.optimum``, clocks at full) at the largest planning margin; ``optimum`` =
  the joint plan of replicas and SM clocks, the cheapest holding one of its margins (and never worse
  than ``optimum-replicas``, a plan it could have chosen). Energy Orchestrator is not tuned per trace:
  it gets the load-tested capacity and its SLO, as its trigger metadata would.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gpumodel.model import prefill_point
from sim.engine import Policy, RunResult, SimConfig, simulate
from sim.eo import CapOptions, caps_only_policy, eo_policy
from sim.governor import EoGovernorController, GovernorOptions
from sim.keda import HpaConfig
from sim.observe import ITL_BUCKETS_S, LATENCY_BUCKETS_S, TTFT_BUCKETS_S
from sim.optimum import OptimumPlan, optimum
from sim.policies import SlotClocks, SlotSchedule, StaticSchedule, ThresholdTrigger
from sim.server import ServerConfig
from sim.slo import Attainment, RequestLatencies, Slos
from sim.slo import attainment as slo_attainment
from sim.trace import Request, Trace

POLICY_NAMES = (
    "static",
    "threshold",
    "optimum",
    "eo",
    "eo-replicas",
    "caps-only",
    "static-min",
    "threshold-tuned",
    "optimum-replicas",
    "eo-learned",
)
DEFAULT_POLICIES = POLICY_NAMES[:6]  # the oracle-searched variants run when asked for
DESCRIPTIONS = {
    "static": "fixed replicas for the peak minute at 70% of load-tested capacity, no caps",
    "threshold": "KEDA prometheus scaler on request rate, threshold 70% of capacity, no caps",
    "static-min": "fewest fixed replicas holding the SLO target (searched on the trace: oracle)",
    "threshold-tuned": "KEDA rate threshold searched on the trace to hold the SLO target (oracle)",
    "optimum": "offline joint optimum: replicas per minute and SM clocks per 15 s (DP, knows the future)",
    "optimum-replicas": "offline replica-only optimum, clocks at full (DP over 1-min slots, knows future)",
    "eo": "Energy Orchestrator: decide() via KEDA/HPA + the clock governor with the cold-start bridge",
    "eo-replicas": "Energy Orchestrator decide() only, no caps",
    "eo-learned": "Energy Orchestrator as eo, no capacity given (learned online: no load test)",
    "caps-only": "eo-powercap's clock governor alone at the static replica count",
}


def unloaded_ttft_s(server: ServerConfig, request: Request) -> float:
    """Time to first token alone on a replica at full clocks: its prefill."""
    return server.prefill_tokens(request) / prefill_point(server.profile).tokens_per_s


def unloaded_latency_s(server: ServerConfig, request: Request) -> float:
    """End-to-end latency alone on a replica at full clocks: prefill, then one token per iteration."""
    decode_s = max(0, request.output_tokens - 1) * server.profile.iteration_time_s(1)
    return unloaded_ttft_s(server, request) + decode_s


def _round_up(value: float, bounds: Sequence[float]) -> float:
    return next((b for b in bounds if b >= value), value)


def _unloaded_p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * (len(ordered) - 1)))] if ordered else 0.0


def default_slo_s(trace: Trace, server: ServerConfig, factor: float = 2.0) -> float:
    """End-to-end SLO: ``factor`` x the unloaded p99, rounded up to a vLLM e2e-latency bucket bound."""
    p99 = _unloaded_p99([unloaded_latency_s(server, r) for r in trace.requests])
    return _round_up(factor * p99, LATENCY_BUCKETS_S)


def default_ttft_slo_s(trace: Trace, server: ServerConfig, factor: float = 2.0) -> float:
    """TTFT SLO: ``factor`` x the unloaded p99, rounded up to a vLLM TTFT bucket bound."""
    p99 = _unloaded_p99([unloaded_ttft_s(server, r) for r in trace.requests])
    return _round_up(factor * p99, TTFT_BUCKETS_S)


def default_itl_slo_s(trace: Trace, server: ServerConfig, factor: float = 2.0) -> float:
    """ITL SLO: ``factor`` x the unloaded p99, rounded up to a vLLM ITL bucket bound. Alone on a replica
    every decode iteration runs at batch 1, so the unloaded ITL is one iteration at batch 1."""
    decoding = [server.profile.iteration_time_s(1) for r in trace.requests if r.output_tokens > 1]
    return _round_up(factor * _unloaded_p99(decoding or [server.profile.iteration_time_s(1)]), ITL_BUCKETS_S)


def default_slos(trace: Trace, server: ServerConfig) -> Slos:
    """The default objectives: the TTFT and ITL pair."""
    return Slos(ttft_s=default_ttft_slo_s(trace, server), itl_s=default_itl_slo_s(trace, server))


def attainment(result: RunResult, slos: Slos | float) -> Attainment:
    """Per-SLO and all-SLO attainment of a run (a bare number is an end-to-end SLO)."""
    return slo_attainment(result.latencies(), _as_slos(slos))


def _as_slos(slos: Slos | float) -> Slos:
    return slos if isinstance(slos, Slos) else Slos(e2e_s=float(slos))


def load_test_capacity(
    trace: Trace,
    server: ServerConfig,
    slos: Slos | float,
    q: float = 0.99,
    duration_s: float = 600.0,
    seed: int = 1,
    clock_mhz: float | None = None,
    at_most_rps: float | None = None,
) -> float:
    """Highest Poisson rate one replica serves with the ``q`` share of requests within every SLO (a bare
    number is an end-to-end SLO); ``clock_mhz`` locks the replica's SM clock during the test, and
    ``at_most_rps`` bounds the search from above. 0.0 when even a trickle misses."""
    targets = _as_slos(slos)
    rng = random.Random(seed)
    mix = trace.requests
    sim_cfg = SimConfig(step_s=0.25)
    clocks = SlotClocks(duration_s, [clock_mhz]) if clock_mhz is not None else None

    def holds(rate: float) -> bool:
        t, reqs = 0.0, []
        while t < duration_s:
            t += rng.expovariate(rate)
            r = mix[rng.randrange(len(mix))]
            reqs.append(Request(t, r.prompt_tokens, r.output_tokens))
        test = Trace("load test", tuple(reqs))
        policy = Policy("load-test", schedule=StaticSchedule(1), caps=clocks)
        result = simulate(test, server, policy, sim_cfg)
        warm = [i for i, a in enumerate(result.arrival_s) if a >= duration_s / 10]
        lat = result.latencies()
        sample = RequestLatencies([lat.ttft_s[i] for i in warm], [lat.itl_s[i] for i in warm],
                                  [lat.e2e_s[i] for i in warm])  # fmt: skip
        got = slo_attainment(sample, targets)
        return all((got.of_kind(kind) or 0.0) >= q for kind, _ in targets.given())

    lo, hi = 0.0, 1.0
    if at_most_rps is not None:
        hi = at_most_rps  # known not to hold above it (e.g. the capacity at a higher clock)
    else:
        while holds(hi) and hi < 1e4:
            lo, hi = hi, hi * 2
    for _ in range(7):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return lo


# Beside the scaler the clock governor holds the trigger's SLOs at a quantile that spends half of
# their error budget (the trigger's 1% of requests over the SLO: the governor's 0.5%), leaving the
# other half to the replica policy: spending the same budget twice, the governor's lowered clocks read
# as breaches to the scaler, which starts replicas the clocks then idle (eo-sim: on conv x1, 89
# replica-minutes and 1.4% more energy than eo-replicas at the whole budget; 66 and 13.9% less at half).
SIDECAR_BUDGET_SHARE = 0.5


def sidecar_quantile(trigger_quantile: float) -> float:
    """The quantile at which the governor beside the scaler holds an SLO the trigger holds at
    ``trigger_quantile`` (e.g. 0.99 -> 0.995, 0.9 -> 0.95)."""
    return 1.0 - (1.0 - trigger_quantile) * SIDECAR_BUDGET_SHARE


@dataclass(frozen=True)
class Scenario:
    trace: Trace
    server: ServerConfig
    slos: Slos
    capacity_rps: float
    policy_slo_s: float
    """The end-to-end latency the clock sidecar is given (it reads end-to-end latency only; the scaler
    holds the scenario's SLOs themselves): the end-to-end SLO when one is among ``slos``, else the
    default end-to-end SLO (2x the unloaded p99)."""
    quantile: float = 0.99
    target_attainment: float = 0.99
    """Share of requests within all SLOs the oracle-searched baselines must hold."""
    sim: SimConfig = field(default_factory=SimConfig)
    cap_target_ratio: float = 1.0
    """The sidecar's latency target as a share of the SLO when the scaler runs too. The sidecar raises
    its clocks at once when latency nears its target, so the latency a consolidation adds is absorbed
    by higher clocks first (see docs/simulator.md for the measured alternatives)."""
    cap_actuator: str = "clocks"
    """What the sidecar moves in the combined ``eo`` run: locked SM clocks save more than power caps at
    the small batches of these traces (the GPU draws well under its limit there)."""

    def sidecar_target_s(self) -> float:
        """The end-to-end latency target the clock sidecar holds in the ``eo`` run (it reads end-to-end
        latency only): ``cap_target_ratio`` x the end-to-end SLO the policies fall back on."""
        return self.policy_slo_s * self.cap_target_ratio

    def sidecar_floor_mhz(self) -> float | None:
        """A conservative clock floor for the sidecar, derived from the TTFT SLO: the sidecar reads
        end-to-end latency only, and prefill slows as 1/clock, so a clock it lowers for end-to-end
        headroom can break TTFT first. The floor lets prefill slow by at most the square root of the
        SLO's margin over the trace's unloaded p99 TTFT (half the margin on a log scale, the other half
        left for queueing). None without a TTFT SLO."""
        if self.slos.ttft_s is None:
            return None
        unloaded = _unloaded_p99([unloaded_ttft_s(self.server, r) for r in self.trace.requests])
        top = float(self.server.profile.max_sm_clock_mhz)
        ratio = math.sqrt(min(1.0, max(unloaded, 1e-9) / self.slos.ttft_s))
        return max(float(self.server.profile.min_sm_clock_mhz), ratio * top)

    def sidecar_governor(
        self, bridge: bool = True, beside_scaler: bool = True
    ) -> EoGovernorController | None:
        """The sidecar as eo-powercap runs by default (``--control auto`` with a TTFT or ITL target):
        the clock governor on the scenario's TTFT and ITL SLOs, the cold-start bridge on
        (``bridge=False``: the ablation). Beside the scaler it holds the SLOs at the quantile that
        spends ``SIDECAR_BUDGET_SHARE`` of their error budget (``sidecar_quantile``); alone, all of it.
        None where it cannot run: the power actuator, or no TTFT or ITL SLO (then the sidecar runs its
        feedback loop on end-to-end latency)."""
        if self.cap_actuator != "clocks" or (self.slos.ttft_s is None and self.slos.itl_s is None):
            return None
        quantile = sidecar_quantile(self.quantile) if beside_scaler else self.quantile
        options = GovernorOptions(self.slos.itl_s, self.slos.ttft_s, quantile, bridge=bridge)
        return EoGovernorController(options, self.server.profile)

    def sidecar_loop(self) -> CapOptions:
        """The sidecar's feedback loop (``--control feedback``): ``step()`` on the end-to-end target."""
        floor = self.sidecar_floor_mhz() if self.cap_actuator == "clocks" else None
        return CapOptions(self.sidecar_target_s(), self.cap_actuator, self.quantile, floor_mhz=floor)

    def sidecar_alone(self, replicas: int) -> Policy:
        """``caps-only``: the sidecar's default in every one of a fixed number of replicas: the
        governor where it runs, else the loop on the end-to-end SLO itself (no scaler to leave room
        for)."""
        governor = self.sidecar_governor(beside_scaler=False)
        loop = CapOptions(self.policy_slo_s, self.cap_actuator, self.quantile)
        return caps_only_policy(replicas, governor if governor is not None else loop, self.server.profile)

    def eo_policy(
        self, name: str, learned: bool = False, sidecar: bool = False, bridge: bool = True
    ) -> Policy:
        """Energy Orchestrator on this scenario, as its trigger metadata would be written: the scenario's
        SLOs at its quantile, the load-tested capacity (none when ``learned``: learned online), the
        server's cold start; with ``sidecar`` the sidecar's default in every replica: the clock
        governor with the cold-start bridge (``bridge=False``: without, the ablation), or the feedback
        loop where the governor cannot run (``sidecar_governor``)."""
        caps, governor = None, None
        if sidecar:
            governor = self.sidecar_governor(bridge)
            caps = self.sidecar_loop() if governor is None else None
        capacity = None if learned else self.capacity_rps
        first = self.first_minute_replicas()
        return eo_policy(name, None, self.quantile, capacity, self.server.profile, first, caps,
                         slos=self.slos, cold_start_s=self.server.cold_start, sidecar=governor)  # fmt: skip

    def first_minute_replicas(self) -> int:
        first = sum(1 for r in self.trace.requests if r.arrival_s < 60.0) / 60.0
        return max(1, math.ceil(first / self.capacity_rps))

    def run(self, policy: Policy, progress: Callable[[float], None] | None = None) -> RunResult:
        return simulate(self.trace, self.server, policy, self.sim, progress)

    def attainment(self, result: RunResult) -> Attainment:
        return attainment(result, self.slos)

    def holds(self, result: RunResult) -> bool:
        return self.attainment(result).all >= self.target_attainment


def make_scenario(trace: Trace, server: ServerConfig, slos: Slos | None = None, **kw: object) -> Scenario:
    """A scenario with the default SLOs (unless given) and the load-tested capacity at them."""
    targets = slos if slos is not None else default_slos(trace, server)
    quantile = float(kw.get("quantile", 0.99))  # type: ignore[arg-type]
    capacity = load_test_capacity(trace, server, targets, quantile)
    if capacity <= 0:
        raise ValueError(f"one idle replica cannot hold {targets.describe(quantile)} for this trace")
    policy_slo = targets.e2e_s if targets.e2e_s is not None else default_slo_s(trace, server)
    return Scenario(trace, server, targets, capacity, policy_slo, **kw)  # type: ignore[arg-type]


# The share of load-tested capacity users provision for (and set a KEDA rate threshold at): the
# common 70% rule of thumb, leaving 30% for bursts inside the peak minute.
PROVISION_UTILIZATION = 0.7


def peak_minute_rps(trace: Trace) -> float:
    """Requests per second in the trace's busiest (wall-clock) minute."""
    counts = [0] * (int(trace.span_s // 60) + 1)
    for r in trace.requests:
        counts[int(r.arrival_s // 60)] += 1
    return max(counts) / 60.0


def peak_replicas(sc: Scenario, utilization: float = PROVISION_UTILIZATION) -> int:
    """Static provisioning as users do it: ``ceil(peak minute rps / (capacity * utilization))``."""
    return max(1, math.ceil(peak_minute_rps(sc.trace) / (sc.capacity_rps * utilization) - 1e-9))


def static_peak(sc: Scenario, utilization: float = PROVISION_UTILIZATION) -> tuple[int, RunResult]:
    """The ``static`` baseline: fixed replicas for the peak minute (see ``peak_replicas``)."""
    n = peak_replicas(sc, utilization)
    return n, sc.run(Policy("static", schedule=StaticSchedule(n)))


def user_threshold(sc: Scenario, utilization: float = PROVISION_UTILIZATION) -> RunResult:
    """The ``threshold`` baseline: KEDA's rate trigger at ``utilization`` x the load-tested capacity."""
    policy = Policy("threshold", trigger=ThresholdTrigger(utilization * sc.capacity_rps),
                    hpa=HpaConfig(min_replicas=1), initial_replicas=sc.first_minute_replicas())  # fmt: skip
    return sc.run(policy)


def static_replicas(sc: Scenario, name: str = "static-min") -> tuple[int, RunResult]:
    """Fewest fixed replicas that hold the SLO attainment target (from the peak minute's need):
    an oracle, searched in the simulator on the trace itself."""
    n = max(1, math.ceil(peak_minute_rps(sc.trace) / sc.capacity_rps))
    tried: dict[int, RunResult] = {}

    def run(k: int) -> RunResult:
        if k not in tried:
            tried[k] = sc.run(Policy(name, schedule=StaticSchedule(k)))
        return tried[k]

    while not sc.holds(run(n)) and n < 200:
        n += 1
    while n > 1 and sc.holds(run(n - 1)):
        n -= 1
    return n, run(n)


# Multipliers of the load-tested capacity the searches try, largest first. Above 1: a single-replica
# load test understates what several replicas behind one router hold together (a burst spreads over
# them), so the oracles may find that fewer replicas still hold the SLOs.
SEARCH_SCALES = (2.0, 1.75, 1.5, 1.3, 1.15, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)


def _largest_holding(
    sc: Scenario, scales: Sequence[float], policy_for: Callable[[float], Policy]
) -> RunResult:
    """The run of the largest scale whose replay holds the attainment target, by bisection over
    ``scales`` (largest first; holding is taken to be monotone: a smaller scale means more capacity
    provisioned). None holding: the smallest scale's run."""
    runs: dict[int, RunResult] = {}

    def holds(i: int) -> bool:
        if i not in runs:
            runs[i] = sc.run(policy_for(scales[i]))
        return sc.holds(runs[i])

    lo, hi = 0, len(scales) - 1  # the answer is the first holding index in [lo, hi]
    if not holds(hi):
        return runs[hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid + 1
    return runs[lo]


def tuned_threshold(
    sc: Scenario, scales: Sequence[float] = SEARCH_SCALES, name: str = "threshold-tuned"
) -> RunResult:
    """The highest KEDA rate threshold (a multiple of the load-tested capacity) that holds the SLO
    attainment target (an oracle: searched in the simulator on the trace itself)."""
    hpa = HpaConfig(min_replicas=1)
    first = sc.first_minute_replicas()

    def policy(scale: float) -> Policy:
        trigger = ThresholdTrigger(scale * sc.capacity_rps, name=name)
        return Policy(name, trigger=trigger, hpa=hpa, initial_replicas=first)

    return _largest_holding(sc, scales, policy)


def tuned_optimum(
    sc: Scenario, scales: Sequence[float] = SEARCH_SCALES, name: str = "optimum-replicas"
) -> RunResult:
    """The replica-only optimum (clocks at full): its plan at the largest capacity scale whose replay
    holds the SLO attainment target."""
    clock = float(sc.server.profile.max_sm_clock_mhz)

    def policy(scale: float) -> Policy:
        p = optimum(sc.trace, sc.server, {clock: sc.capacity_rps}, margin=scale)
        return Policy(name, schedule=SlotSchedule(p.slot_s, p.counts, name=name))

    return _largest_holding(sc, scales, policy)


# SM clocks the joint optimum chooses among, as shares of the maximum: below ~0.4 prefill (which slows
# as 1/clock) leaves no TTFT room at the default SLOs.
JOINT_CLOCK_RATIOS = (1.0, 0.85, 0.7, 0.55, 0.4)


def clock_capacities(sc: Scenario, ratios: Iterable[float] = JOINT_CLOCK_RATIOS) -> dict[float, float]:
    """SM clock (MHz) -> load-tested capacity at that clock (the scenario's own at the maximum). A lower
    clock never serves more, so each test searches below the capacity at the clock above it."""
    top = sc.server.profile.max_sm_clock_mhz
    caps = {float(top): sc.capacity_rps}
    above = sc.capacity_rps
    for r in sorted(ratios, reverse=True):
        clock = float(round(r * top))
        if clock not in caps and above > 0:
            above = caps[clock] = load_test_capacity(sc.trace, sc.server, sc.slos, sc.quantile,
                                                     clock_mhz=clock, at_most_rps=above)  # fmt: skip
    return caps


def planned_policy(plan: OptimumPlan, name: str = "optimum") -> Policy:
    """Replay a joint plan: its replica schedule, and its clocks on every ready replica."""
    return Policy(name, schedule=SlotSchedule(plan.slot_s, plan.counts, name=name),
                  caps=SlotClocks(plan.sub_s, plan.clocks_mhz, name=name))  # fmt: skip


def joint_optimum(
    sc: Scenario,
    replica_only: RunResult | None = None,
    scales: Sequence[float] = SEARCH_SCALES,
    capacities: dict[float, float] | None = None,
    name: str = "optimum",
) -> RunResult:
    """The joint optimum: replicas and clocks planned together at the largest capacity scale whose
    replay holds the SLO attainment target; the cheaper of that run and the replica-only optimum (a
    plan with every clock at full is one of the joint plans, so the joint limit is never above it)."""
    caps = capacities if capacities is not None else clock_capacities(sc)
    base = replica_only if replica_only is not None else tuned_optimum(sc)

    def policy(scale: float) -> Policy:
        return planned_policy(optimum(sc.trace, sc.server, caps, margin=scale), name)

    joint = _largest_holding(sc, scales, policy)
    if sc.holds(joint) and (not sc.holds(base) or joint.energy_j <= base.energy_j):
        return joint
    return dataclasses.replace(base, policy=name)
