"""The offline optimum: replicas per slot and SM clocks per sub-slot, by dynamic programming, knowing the
whole future.

Feasibility comes from measured capacity: ``capacities`` maps an SM clock to the highest request rate
one replica serves at that clock with every SLO held (the simulator's own load test, the one that sets
the baselines). A slot of ``slot_s`` (1 minute) with ``n`` replicas is feasible when, in each of its
sub-slots of ``sub_s`` (15 s), some clock gives ``n * capacity(clock) * margin`` at least the
sub-slot's arrival rate; the sub-slot then runs at the feasible clock that costs least.

Energy comes from gpumodel's calibrated model in steady state. One replica serving ``rate``
requests/s (mean prefill tokens ``p``, mean output tokens ``m``) at clock ratio ``r``: prefill takes
the share ``rho = rate * p / prefill_rate(r)`` of the GPU's time (compute-bound, slows as ``1/r``),
decode the rest; a decode iteration takes ``t(b, r) = (t0 + t1*b) * (mu + (1 - mu)/r)`` (``mu`` the
memory-bound share), so Little's law for the decoding batch gives
``b = rate*m*t0*s / (1 - rho - rate*m*t1*s)`` with ``s`` the stretch. Power is the time-weighted mix of
prefill power and the decode power ``P(b)`` at the clock (``static + (P - static) * r**2``).

Each replica started pays a cold start of idle power (it must be up before its slot). Dynamic
programming over (slot, replicas) finds the cheapest plan exactly; clocks change for free (the sidecar
moves them within a second), so each (slot, replicas) cell takes its cheapest clocks. With the clock
held at its maximum this is the replica-only optimum; the joint plan's modelled energy is never
higher, since full clocks are one of its choices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gpumodel.model import ServerProfile, prefill_point
from sim.server import ServerConfig
from sim.trace import Trace


@dataclass(frozen=True)
class Workload:
    """What the steady-state model needs to know about a trace's requests."""

    mean_prefill_tokens: float
    mean_output_tokens: float

    @staticmethod
    def of(trace: Trace, server: ServerConfig) -> Workload:
        n = max(1, len(trace.requests))
        pre = sum(server.prefill_tokens(r) for r in trace.requests)
        out = sum(float(r.output_tokens) for r in trace.requests)
        return Workload(pre / n, out / n)


@dataclass(frozen=True)
class SteadyState:
    rate_rps: float
    clock_ratio: float
    batch: float
    token_time_s: float
    """Mean time per output token (the decode iteration stretched by the prefill share)."""
    prefill_share: float
    power_w: float


def steady_state(
    profile: ServerProfile, work: Workload, rate_rps: float, clock_ratio: float = 1.0
) -> SteadyState | None:
    """One replica at ``rate_rps`` with its SM clock at ``clock_ratio`` of the maximum; None when it
    cannot keep up."""
    ratio = min(1.0, max(profile.min_clock_ratio, clock_ratio))
    pre = prefill_point(profile, locked_clock_mhz=ratio * profile.max_sm_clock_mhz)
    if rate_rps <= 0:
        return SteadyState(0.0, ratio, 0.0, profile.iteration_time_s(0, ratio), 0.0, profile.idle_power_w)
    stretch = profile.iteration_time_s(0, ratio) / profile.iteration_time_s(0)
    rho = rate_rps * work.mean_prefill_tokens / pre.tokens_per_s
    demand = rate_rps * work.mean_output_tokens
    free = 1.0 - rho - demand * profile.iter_per_seq_s * stretch
    if free <= 0:
        return None
    batch = demand * profile.iter_base_s * stretch / free
    token_time = profile.iteration_time_s(batch, ratio) / (1.0 - rho)
    decode_w = profile.power_at_clock_w(batch, ratio)
    power = rho * pre.power_w + (1.0 - rho) * decode_w
    return SteadyState(rate_rps, ratio, batch, token_time, rho, power)


def sub_slot_rates(trace: Trace, slot_s: float, sub_s: float) -> list[list[float]]:
    """Per slot, the arrival rate of each of its sub-slots (requests/s)."""
    if not trace.requests:
        return []
    n_sub = max(1, round(slot_s / sub_s))
    n = math.floor(trace.span_s / slot_s) + 1
    counts = [0] * (n * n_sub)
    sub = slot_s / n_sub
    for r in trace.requests:
        counts[min(len(counts) - 1, int(r.arrival_s / sub))] += 1
    return [[c / sub for c in counts[i * n_sub : (i + 1) * n_sub]] for i in range(n)]


def plan(
    needs: Sequence[int],
    slot_cost_j: Callable[[int, int], float],
    start_cost_j: float,
    max_replicas: int,
) -> tuple[list[int], float]:
    """Cheapest replica counts per slot: ``counts[i] >= needs[i]``, cost = sum of ``slot_cost_j(i, n)``
    plus ``start_cost_j`` per replica started (the first slot's replicas are already running).

    Exact dynamic programming over (slot, replicas): O(slots * max_replicas^2).
    """
    if not needs:
        return [], 0.0
    if max(needs) > max_replicas:
        raise ValueError(f"a slot needs {max(needs)} replicas, more than max_replicas={max_replicas}")
    inf = math.inf
    best = [slot_cost_j(0, n) if n >= needs[0] else inf for n in range(max_replicas + 1)]
    back: list[list[int]] = []
    for i in range(1, len(needs)):
        row = [inf] * (max_replicas + 1)
        arg = [0] * (max_replicas + 1)
        for n in range(needs[i], max_replicas + 1):
            cost_here = slot_cost_j(i, n)
            if cost_here == inf:
                continue
            for prev, prev_cost in enumerate(best):
                if prev_cost == inf:
                    continue
                total = prev_cost + max(0, n - prev) * start_cost_j + cost_here
                if total < row[n]:
                    row[n], arg[n] = total, prev
        back.append(arg)
        best = row
    n = min(range(max_replicas + 1), key=lambda j: best[j])
    total = best[n]
    if total == inf:
        raise ValueError("no feasible plan (a slot's load fits no replica count up to max_replicas)")
    counts = [n]
    for arg in reversed(back):
        n = arg[n]
        counts.append(n)
    counts.reverse()
    return counts, total


@dataclass(frozen=True)
class OptimumPlan:
    slot_s: float
    counts: list[int]
    """Replicas per slot."""
    sub_s: float
    clocks_mhz: list[float]
    """SM clock per sub-slot (``len(counts) * slot_s / sub_s`` of them)."""
    energy_j: float
    """The plan's energy by the steady-state model (the simulator measures its own when replaying)."""


def optimum(
    trace: Trace,
    server: ServerConfig,
    capacities: Mapping[float, float],
    margin: float = 1.0,
    slot_s: float = 60.0,
    sub_s: float = 15.0,
) -> OptimumPlan:
    """The cheapest plan of replicas per slot and clocks per sub-slot (see the module docstring).

    ``capacities``: SM clock (MHz) -> requests/s one replica holds every SLO at; give only the maximum
    clock for the replica-only optimum.
    """
    usable = sorted(((c, cap * margin) for c, cap in capacities.items() if cap > 0), reverse=True)
    if not usable:
        raise ValueError("no clock at which a replica holds the SLOs")
    profile = server.profile
    work = Workload.of(trace, server)
    rates = sub_slot_rates(trace, slot_s, sub_s)
    top = max(cap for _, cap in usable)
    needs = [math.ceil(max(sub) / top - 1e-9) for sub in rates]
    max_n = max(needs) + 2
    ratios = {c: c / profile.max_sm_clock_mhz for c, _ in usable}
    sub_len = slot_s / max(1, round(slot_s / sub_s))
    power_cache: dict[tuple[float, float], float] = {}

    def sub_cost(rate: float, n: int) -> tuple[float, float]:
        """(joules, clock) of the cheapest feasible clock for one sub-slot at ``n`` replicas."""
        best = (math.inf, usable[0][0])
        for clock, cap in usable:
            if n * cap < rate - 1e-9:
                continue
            key = (rate / n, clock)
            watts = power_cache.get(key)
            if watts is None:
                s = steady_state(profile, work, rate / n, ratios[clock])
                watts = power_cache[key] = math.inf if s is None else s.power_w
            if n * watts * sub_len < best[0]:
                best = (n * watts * sub_len, clock)
        return best

    def cost(i: int, n: int) -> float:
        if n == 0:
            return 0.0 if not any(rates[i]) else math.inf
        return sum(sub_cost(rate, n)[0] for rate in rates[i])

    counts, energy = plan(needs, cost, profile.idle_power_w * server.cold_start, max_n)
    clocks: list[float] = []
    for i, n in enumerate(counts):
        for rate in rates[i]:
            clocks.append(sub_cost(rate, n)[1] if n > 0 else usable[0][0])
    return OptimumPlan(slot_s, counts, sub_len, clocks, energy)
