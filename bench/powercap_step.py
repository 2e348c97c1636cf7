"""How much GPU energy the power-cap sidecar saves on one replica, and what it costs in latency.

Replays the Azure conversation trace (Splitwise, Patel et al., ISCA 2024; CC-BY 4.0) through a simple
continuous-batching queue on one SimulatedGpu (the calibrated H100 / Llama-3.1-8B model), with the REAL
sidecar (``start_powercap``, ticked on a simulated clock, reading a vLLM-bucketed e2e histogram through
the same sliding window as in production). Prints energy and the share of 60 s windows whose exact p95
e2e latency held the target, for no sidecar, the power actuator and the clock actuator.

    .venv/bin/python bench/powercap_step.py [--speedup 1] [--target-factors 1.25,1.5,2] [--minutes 58]
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import tempfile
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from common.settings import from_values
from devices.simulated import SimulatedGpu
from gpumodel import H100_LLAMA_8B, operating_point
from powercap.histogram import SlidingWindow, snapshot_from_buckets
from powercap.latency import LatencySample
from powercap.settings import Settings
from powercap.sidecar import start_powercap

REPO = Path(__file__).resolve().parents[1]
# The shared data sit beside the checkout (../shared) or beside the worktrees' parent (../../shared).
TRACES = [
    base / "shared" / "data" / "traces" / "azure_llm_2023_conv.csv"
    for base in (REPO.parent, REPO.parent.parent)
]
# vLLM's buckets for vllm:e2e_request_latency_seconds.
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    math.inf,
)
DT_S = 0.05
SLO_WINDOW_S = 60.0
PROFILE = H100_LLAMA_8B


@dataclass
class Request:
    arrival_s: float
    prompt: int
    tokens_left: float
    started_s: float = -1.0


def load_trace(path: Path, speedup: float, minutes: float) -> list[Request]:
    out: list[Request] = []
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    t0 = datetime.fromisoformat(rows[0]["TIMESTAMP"][:26])
    for row in rows:
        t = (datetime.fromisoformat(row["TIMESTAMP"][:26]) - t0).total_seconds() / speedup
        if t > minutes * 60:
            break
        out.append(Request(t, int(row["ContextTokens"]), max(int(row["GeneratedTokens"]), 1)))
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class HistogramSource:
    """The replica's vLLM e2e histogram, read through the sidecar's own sliding window."""

    def __init__(self, quantile: float, window_s: float) -> None:
        self.counts = dict.fromkeys(E2E_BUCKETS, 0.0)
        self.window = SlidingWindow(window_s, quantile)

    def observe(self, latency_s: float) -> None:
        for le in E2E_BUCKETS:
            if latency_s <= le:
                self.counts[le] += 1

    def read(self, now_s: float) -> LatencySample:
        self.window.add(snapshot_from_buckets(now_s, self.counts))
        stats = self.window.stats()
        return LatencySample(stats.quantile_s, stats.rate_rps)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def simulate(
    trace: list[Request], actuator: str | None, target_s: float, args: argparse.Namespace
) -> dict[str, float]:
    clock = Clock()
    batch = {"b": 0.0}
    gpu = SimulatedGpu(0, PROFILE, load=lambda: batch["b"], clock=clock)
    source = HistogramSource(0.95, args.window)
    handle = None
    handle_state_dir = Path(tempfile.mkdtemp(prefix="eo-powercap-bench-"))
    if actuator is not None:
        values = {
            "latency_target_s": target_s,
            "actuator": actuator,
            "interval_s": args.interval,
            "settle_s": args.settle,
            "lower_below_ratio": args.lower_below_ratio,
            "raise_above_ratio": args.raise_above_ratio,
            "state_dir": handle_state_dir,
            "listen_address": "127.0.0.1",
            "port": 0,
        }
        settings = from_values(Settings, values, environ={})  # the bench's values, no EO_* variable
        handle = start_powercap(settings, [gpu], source, clock=clock, run_loop=False)
    pending = deque(sorted(trace, key=lambda r: r.arrival_s))
    waiting: deque[Request] = deque()
    running: list[Request] = []
    done: list[tuple[float, float]] = []  # (finish time, e2e latency)
    end_s = trace[-1].arrival_s + 120.0
    next_tick = 0.0
    limit_w_time = 0.0
    while clock.now < end_s or running or waiting:
        while pending and pending[0].arrival_s <= clock.now:
            waiting.append(pending.popleft())
        while waiting and len(running) < PROFILE.max_batch:
            running.append(waiting.popleft())
        cap_w = gpu.power_limit_mw() / 1000
        locked = None
        if handle is not None and handle.sidecar.gpus[0].locked_max_mhz is not None:
            locked = handle.sidecar.gpus[0].locked_max_mhz
        batch["b"] = float(len(running))
        gpu.power_usage_mw()  # integrate energy up to now at the previous batch, then take the new one
        op = operating_point(PROFILE, len(running), power_cap_w=cap_w, locked_clock_mhz=locked)
        still: list[Request] = []
        for r in running:
            if r.started_s < 0:
                # Prefill is compute-bound: it slows with the SM clock.
                r.started_s = clock.now + r.prompt / (PROFILE.prefill_tokens_per_s * op.clock_ratio)
            if clock.now >= r.started_s:
                r.tokens_left -= DT_S / op.iteration_time_s
            if r.tokens_left <= 0:
                latency = clock.now + DT_S - r.arrival_s
                done.append((clock.now + DT_S, latency))
                source.observe(latency)
            else:
                still.append(r)
        running = still
        limit_w_time += cap_w * DT_S
        clock.now += DT_S
        if handle is not None and clock.now >= next_tick:
            handle.sidecar.tick()
            next_tick = clock.now + args.interval
    energy_j = gpu.total_energy_mj() / 1000
    if handle is not None:
        handle.stop()
    shutil.rmtree(handle_state_dir, ignore_errors=True)
    # SLO held: share of 60 s windows (with requests) whose exact p95 e2e latency is under target.
    windows: dict[int, list[float]] = {}
    for finish, latency in done:
        windows.setdefault(int(finish // SLO_WINDOW_S), []).append(latency)
    held = sum(1 for w in windows.values() if p95(w) <= target_s)
    return {
        "energy_kj": energy_j / 1000,
        "p95_s": p95([lat for _, lat in done]),
        "slo_held": held / len(windows),
        "mean_limit_w": limit_w_time / clock.now,
        "requests": float(len(done)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speedup", type=float, default=1.0, help="compress the trace's time (more load)")
    p.add_argument("--minutes", type=float, default=58.0, help="how much of the trace to replay")
    p.add_argument(
        "--target-factors", default="1.25,1.5,2", help="SLO targets as multiples of the uncapped p95"
    )
    # The sidecar's own defaults, from its settings (declared once there).
    for flag, field in (
        ("--interval", "interval_s"),
        ("--settle", "settle_s"),
        ("--window", "latency_window_s"),
        ("--lower-below-ratio", "lower_below_ratio"),
        ("--raise-above-ratio", "raise_above_ratio"),
    ):
        p.add_argument(flag, type=float, default=Settings.model_fields[field].default)
    p.add_argument("--trace", type=Path, default=next((t for t in TRACES if t.exists()), TRACES[0]))
    args = p.parse_args()
    if not args.trace.exists():
        raise SystemExit(f"trace not found at {args.trace}; pass --trace")
    trace = load_trace(args.trace, args.speedup, args.minutes)
    print(f"trace: {len(trace)} requests over {trace[-1].arrival_s / 60:.1f} min (speedup x{args.speedup:g})")
    base = simulate(copy(trace), None, math.inf, args)
    print(f"no cap: {base['energy_kj']:.1f} kJ GPU energy, p95 e2e {base['p95_s']:.2f} s (exact, whole run)")
    print(f"SLO held = share of {SLO_WINDOW_S:.0f} s windows whose exact p95 e2e latency <= target")
    print(
        f"{'target':>16}{'actuator':>10}{'GPU energy kJ':>15}{'saved':>8}{'p95 s':>8}{'SLO held':>10}"
        f"{'mean limit W':>14}"
    )
    for factor in (float(f) for f in args.target_factors.split(",")):
        target = factor * base["p95_s"]
        for actuator in ("power", "clocks"):
            r = simulate(copy(trace), actuator, target, args)
            saved = 1 - r["energy_kj"] / base["energy_kj"]
            label = f"{target:.2f}s ({factor:g}x)"
            print(
                f"{label:>16}{actuator:>10}{r['energy_kj']:>15.1f}{saved:>8.1%}{r['p95_s']:>8.2f}"
                f"{r['slo_held']:>10.1%}{r['mean_limit_w']:>14.0f}"
            )


def copy(trace: list[Request]) -> list[Request]:
    return [Request(r.arrival_s, r.prompt, r.tokens_left) for r in trace]


if __name__ == "__main__":
    main()
