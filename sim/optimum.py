"""Steady-state capacity of a replica at the SLO, and the offline optimum by dynamic programming.

Steady state of one replica serving ``rate`` requests/s (mean prefill tokens ``p``, mean output tokens
``m``): prefill takes the share ``rho = rate * p / prefill_tokens_per_s`` of the GPU's time, decode the
rest, so a token takes ``tau(b) = t(b) / (1 - rho)`` and Little's law for the decoding batch gives
``b = rate * m * tau(b)``, i.e. ``b = rate*m*t0 / (1 - rho - rate*m*t1)`` with ``t(b) = t0 + t1*b``.
The slowest requests (the ``q``-quantile of output length ``m_q``) then take about ``m_q * tau(b)``
plus their own prefill: the capacity at the SLO is the highest rate keeping that under
``slo * margin``.

The optimum plans replicas per slot (1 minute) knowing the whole future: at least the replicas the
slot's peak rate needs at the SLO, energy of each slot from the steady state above at the batch the
load gives each replica, and every replica started pays a cold start of idle power (it must be up
before its slot). Dynamic programming over (slot, replicas) finds the cheapest plan exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gpumodel.model import ServerProfile, prefill_point
from sim.server import ServerConfig
from sim.trace import Trace


@dataclass(frozen=True)
class Workload:
    """What the steady-state model needs to know about a trace's requests."""

    mean_prefill_tokens: float
    mean_output_tokens: float
    quantile_output_tokens: float
    quantile_prefill_tokens: float

    @staticmethod
    def of(trace: Trace, server: ServerConfig, quantile: float = 0.99) -> Workload:
        pre = sorted(server.prefill_tokens(r) for r in trace.requests)
        out = sorted(float(r.output_tokens) for r in trace.requests)
        i = min(len(out) - 1, int(quantile * (len(out) - 1)))
        return Workload(sum(pre) / len(pre), sum(out) / len(out), out[i], pre[i])


@dataclass(frozen=True)
class SteadyState:
    rate_rps: float
    batch: float
    token_time_s: float
    prefill_share: float
    power_w: float
    tail_latency_s: float


def steady_state(profile: ServerProfile, work: Workload, rate_rps: float) -> SteadyState | None:
    """One replica at ``rate_rps``; None when it cannot keep up."""
    pre = prefill_point(profile)
    if rate_rps <= 0:
        return SteadyState(0.0, 0.0, profile.iter_base_s, 0.0, profile.idle_power_w, 0.0)
    rho = rate_rps * work.mean_prefill_tokens / pre.tokens_per_s
    demand = rate_rps * work.mean_output_tokens
    free = 1.0 - rho - demand * profile.iter_per_seq_s
    if free <= 0:
        return None
    batch = demand * profile.iter_base_s / free
    token_time = (profile.iter_base_s + profile.iter_per_seq_s * batch) / (1.0 - rho)
    decode_w = profile.native_power_w(batch)
    power = rho * pre.power_w + (1.0 - rho) * decode_w
    tail = work.quantile_output_tokens * token_time + work.quantile_prefill_tokens / pre.tokens_per_s
    return SteadyState(rate_rps, batch, token_time, rho, power, tail)


def capacity_rps(server: ServerConfig, work: Workload, slo_s: float, margin: float = 0.8) -> float:
    """Highest rate one replica serves with its tail latency under ``slo_s * margin`` (bisection).

    The margin leaves room for what the steady state ignores: Poisson bursts and queueing at arrival.
    """
    profile = server.profile
    limit = slo_s * margin

    def ok(rate: float) -> bool:
        s = steady_state(profile, work, rate)
        return s is not None and s.tail_latency_s <= limit and s.batch <= server.max_batch

    if not ok(1e-6):
        raise ValueError(f"the SLO {slo_s:g}s is below what one idle replica achieves for this trace")
    lo, hi = 1e-6, 1.0
    while ok(hi):
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def slot_rates(trace: Trace, slot_s: float, burst_s: float) -> list[float]:
    """Per slot, the highest arrival rate over ``burst_s`` sub-windows (what the replicas must absorb)."""
    if not trace.requests:
        return []
    n_sub = max(1, round(slot_s / burst_s))
    n = math.floor(trace.span_s / slot_s) + 1
    counts = [0] * (n * n_sub)
    for r in trace.requests:
        counts[min(len(counts) - 1, int(r.arrival_s / burst_s))] += 1
    sub = slot_s / n_sub
    return [max(counts[i * n_sub : (i + 1) * n_sub]) / sub for i in range(n)]


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
    energy_j: float
    """The plan's energy by the steady-state model (the simulator measures its own when replaying)."""
    capacity_rps: float


def optimum(
    trace: Trace,
    server: ServerConfig,
    slo_s: float,
    slot_s: float = 60.0,
    burst_s: float = 15.0,
    margin: float = 0.8,
) -> OptimumPlan:
    work = Workload.of(trace, server)
    capacity = capacity_rps(server, work, slo_s, margin)
    rates = slot_rates(trace, slot_s, burst_s)
    needs = [math.ceil(r / capacity - 1e-9) for r in rates]
    # Energy uses the slot's mean rate; the need uses its peak sub-window.
    means = [0.0] * len(rates)
    for r in trace.requests:
        means[min(len(means) - 1, int(r.arrival_s / slot_s))] += 1 / slot_s
    profile = server.profile
    max_n = max(needs) + 2

    def cost(i: int, n: int) -> float:
        if n == 0:
            return 0.0 if means[i] == 0 else math.inf
        s = steady_state(profile, work, means[i] / n)
        return math.inf if s is None else n * s.power_w * slot_s

    counts, energy = plan(needs, cost, profile.idle_power_w * server.cold_start, max_n)
    return OptimumPlan(slot_s, counts, energy, capacity)
