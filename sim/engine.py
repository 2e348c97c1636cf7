"""The simulation loop: replay a trace through a cluster under one policy, at a fixed control step.

Every ``step_s`` the cluster runs one slot (exact event loop per replica inside it); on slot boundaries
the control loops fire at their own periods, as they do live: the HPA sync (15 s) and KEDA poll (30 s)
ask the replica trigger, each ready replica's sidecar runs its cap controller at its interval, and a
schedule (static, optimum) sets the count directly. The run ends once the trace is over and every
request has finished (or ``max_tail_s`` after the last arrival).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from sim.keda import Autoscaler, HpaConfig
from sim.observe import SimPrometheus, SlidingWindow
from sim.policies import (
    CapController,
    CapReading,
    CapSetting,
    ReplicaController,
    ReplicaSchedule,
    ReplicaScrape,
    ScalerAnswer,
)
from sim.server import Cluster, ServerConfig
from sim.slo import RequestLatencies
from sim.trace import Trace


@dataclass(frozen=True)
class Policy:
    """A replica control (a KEDA trigger or a schedule) with an optional per-replica cap controller."""

    name: str
    trigger: ReplicaController | None = None
    schedule: ReplicaSchedule | None = None
    caps: CapController | None = None
    hpa: HpaConfig = field(default_factory=HpaConfig)
    initial_replicas: int = 1
    """Replicas ready at 0 s under a trigger (the service was already running before the trace)."""

    def __post_init__(self) -> None:
        if (self.trigger is None) == (self.schedule is None):
            raise ValueError(f"policy {self.name}: give exactly one of trigger or schedule")


@dataclass(frozen=True)
class SimConfig:
    step_s: float = 0.25
    sample_s: float = 10.0
    max_tail_s: float = 900.0

    def __post_init__(self) -> None:
        if not 0 < self.step_s <= 1.0:
            raise ValueError("step_s must be in (0, 1] seconds")
        for period in (5.0, 15.0, 30.0, self.sample_s):
            if abs(period / self.step_s - round(period / self.step_s)) > 1e-9:
                raise ValueError(
                    f"step_s must divide the control periods (5, 15, 30 s and {self.sample_s} s)"
                )


@dataclass
class RunResult:
    policy: str
    trace: str
    arrival_s: list[float]
    first_token_s: list[float]
    end_s: list[float]
    itl_s: list[float]
    """Per request, mean seconds per output token after the first; NaN when unfinished or with a
    single output token."""
    prompt_tokens: int
    output_tokens: int
    energy_j: float
    idle_energy_j: float
    replica_seconds: float
    cold_starts: int
    duration_s: float
    decisions: list[tuple[float, float, bool, str, int]]
    """Each trigger answer: (t_s, metric value, active, reason, replicas set after it)."""
    series: dict[str, list[float]]
    """Time series every ``sample_s``: t_s, arrival_rps, replicas (ready), replicas_total, power_w,
    latency_p99_s, ttft_p99_s, itl_p99_s (histogram quantiles over the sample window, NaN when none
    was observed), mean_cap_w, mean_clock_cap_mhz (the highest SM clock allowed, the profile's maximum
    when unlocked)."""

    def latencies(self) -> RequestLatencies:
        ttft = [f - a for a, f in zip(self.arrival_s, self.first_token_s, strict=True)]
        e2e = [e - a for a, e in zip(self.arrival_s, self.end_s, strict=True)]
        return RequestLatencies(ttft, self.itl_s, e2e)


def _periods(step_s: float, period_s: float) -> int:
    return max(1, round(period_s / step_s))


def simulate(
    trace: Trace,
    server: ServerConfig,
    policy: Policy,
    config: SimConfig | None = None,
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    cfg = config or SimConfig()
    dt = cfg.step_s
    cluster = Cluster(server, trace.requests)
    prom = SimPrometheus(dt)
    caps = policy.caps
    windows: dict[int, SlidingWindow] = {}
    capped: set[int] = set()
    autoscaler: Autoscaler | None = None
    prestart_energy = 0.0
    prestart_seconds = 0.0
    cold = server.cold_start
    idle_w = server.profile.idle_power_w

    if policy.schedule is not None:
        cluster.scale_to(policy.schedule.replicas_at(0.0), 0.0, warm=True)
    else:
        autoscaler = Autoscaler(policy.hpa, policy.initial_replicas)
        cluster.scale_to(policy.initial_replicas, 0.0, warm=True)

    hpa_every = _periods(dt, policy.hpa.sync_s)
    poll_every = _periods(dt, policy.hpa.polling_s)
    cap_every = _periods(dt, caps.interval_s) if caps else 0
    sample_every = _periods(dt, cfg.sample_s)
    series: dict[str, list[float]] = {
        k: []
        for k in (
            "t_s",
            "arrival_rps",
            "replicas",
            "replicas_total",
            "power_w",
            "latency_p99_s",
            "ttft_p99_s",
            "itl_p99_s",
            "mean_cap_w",
            "mean_clock_cap_mhz",
        )
    }
    span = trace.span_s
    end_limit = span + cfg.max_tail_s
    sample_energy = 0.0
    decisions: list[tuple[float, float, bool, str, int]] = []
    k = 0
    t = 0.0
    while True:
        if policy.schedule is not None and k > 0:
            want = policy.schedule.replicas_at(t)
            have = len(cluster.active())
            if want != have:
                if want > have and policy.schedule.prestart:
                    # Started a cold start ahead of need: idle power and GPU time for that long.
                    prestart_energy += (want - have) * idle_w * cold
                    prestart_seconds += (want - have) * cold
                cluster.scale_to(want, t, warm=policy.schedule.prestart)
        outcome = cluster.step(t, t + dt)
        k += 1
        t = k * dt
        sample_energy += outcome.energy_j
        prom.record_slot([b for _, _, b in outcome.finished], outcome.arrivals, cluster.ready_count(t),
                         outcome.first_token_buckets, outcome.itl_tokens, outcome.tokens, outcome.waiting,
                         outcome.running, outcome.request_itl_buckets)  # fmt: skip
        if caps is not None:
            for rid, done in outcome.per_replica.items():
                window = windows.get(rid)
                if window is not None:
                    for end_s, _, bucket in done:
                        window.add(end_s, bucket)

        if autoscaler is not None and policy.trigger is not None:
            answer: ScalerAnswer | None = None
            if k % hpa_every == 0 and autoscaler.replicas > 0:
                answer = policy.trigger.answer(prom, t)
                autoscaler.hpa_sync(t, answer.value, answer.target)
            if k % poll_every == 0:
                answer = answer or policy.trigger.answer(prom, t)
                autoscaler.keda_poll(t, answer.active)
            if answer is not None:
                decisions.append((t, answer.value, answer.active, answer.reason, autoscaler.replicas))
            if len(cluster.active()) != autoscaler.replicas:
                cluster.scale_to(autoscaler.replicas, t)

        if caps is not None:
            # Scaling up: the Deployment wants more replicas than are ready (new pods cold-starting).
            scaling_up = None if autoscaler is None else autoscaler.replicas > cluster.ready_count(t)
            _run_caps(caps, cluster, windows, capped, t, tick=k % cap_every == 0, scaling_up=scaling_up)

        if k % sample_every == 0:
            _sample(series, cluster, prom, t, cfg.sample_s, sample_energy)
            sample_energy = 0.0
            if progress is not None:
                progress(min(1.0, t / max(span, dt)))
        if (t >= span and cluster.pending == 0) or t >= end_limit:
            break
    cluster.close(t)
    log = cluster.log
    itl = RequestLatencies.of(log.arrival_s, log.first_token_s, log.end_s,
                              [r.output_tokens for r in trace.requests]).itl_s  # fmt: skip
    return RunResult(
        policy=policy.name,
        trace=trace.name,
        arrival_s=log.arrival_s,
        first_token_s=log.first_token_s,
        end_s=log.end_s,
        itl_s=list(itl),
        prompt_tokens=sum(r.prompt_tokens for r in trace.requests),
        output_tokens=sum(r.output_tokens for r in trace.requests),
        energy_j=cluster.energy_j + prestart_energy,
        idle_energy_j=cluster.idle_energy_j + prestart_energy,
        replica_seconds=cluster.replica_seconds + prestart_seconds,
        cold_starts=cluster.cold_starts,
        duration_s=t,
        decisions=decisions,
        series=series,
    )


def _run_caps(
    caps: CapController,
    cluster: Cluster,
    windows: dict[int, SlidingWindow],
    started: set[int],
    now_s: float,
    tick: bool,
    scaling_up: bool | None = None,
) -> None:
    """Each ready replica's sidecar: start it once the pod is ready, then one step per interval."""
    for r in cluster.replicas:
        if not r.is_ready(now_s):
            continue
        setting: CapSetting | None = None
        if r.id not in started:
            started.add(r.id)
            windows[r.id] = SlidingWindow(caps.window_s)
            setting = caps.start(r.id, now_s)
        elif tick:
            window = windows[r.id]
            reading_latency = window.quantile(caps.quantile, now_s)
            scrape = ReplicaScrape(r.running, r.waiting, tuple(r.ttft_counts_total),
                                   tuple(r.itl_counts_total), r.itl_sum_s, r.locked_clock_mhz,
                                   r.ttft_sum_s, r.prompt_tokens_total)  # fmt: skip
            setting = caps.control(
                r.id, CapReading(now_s, reading_latency, window.rate(now_s), scrape, scaling_up)
            )
        if setting is not None:
            r.power_cap_w = setting.power_cap_w
            r.locked_clock_mhz = setting.locked_clock_mhz


def _sample(
    series: dict[str, list[float]],
    cluster: Cluster,
    prom: SimPrometheus,
    now_s: float,
    window_s: float,
    energy_j: float,
) -> None:
    series["t_s"].append(now_s)
    series["arrival_rps"].append(prom.arrival_rate(window_s, now_s))
    series["replicas"].append(float(cluster.ready_count(now_s)))
    series["replicas_total"].append(float(len(cluster.replicas)))
    series["power_w"].append(energy_j / window_s)
    for key, quantile in (("latency_p99_s", prom.latency_quantile), ("ttft_p99_s", prom.ttft_quantile),
                          ("itl_p99_s", prom.itl_quantile)):  # fmt: skip
        p99 = quantile(0.99, window_s, now_s)
        series[key].append(math.nan if p99 is None else p99)
    ready = [r for r in cluster.replicas if r.is_ready(now_s)]
    caps = [
        r.power_cap_w if r.power_cap_w is not None else r.config.profile.power_limit_default_w for r in ready
    ]
    series["mean_cap_w"].append(sum(caps) / len(caps) if caps else math.nan)
    clocks = [r.locked_clock_mhz or r.config.profile.max_sm_clock_mhz for r in ready]
    series["mean_clock_cap_mhz"].append(sum(clocks) / len(clocks) if clocks else math.nan)
