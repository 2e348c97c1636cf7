"""A load step to 1.5x under the REAL sidecar's clock governor: how fast the clock gets to what the new
load needs, and what the SLOs do over the step (issue 13's "within 2 s, and the SLO holds").

One replica of eo-sim's server model (``sim.server.Cluster``: continuous batching, chunked prefill, the
calibrated H100 / Llama-3.1-8B iteration and prefill times at the locked SM clock) serves Poisson
arrivals with the Azure conversation trace's request mix (Splitwise, Patel et al., ISCA 2024;
CC-BY 4.0) at ``--base-rps``, then ``--step`` times that. The replica publishes a vLLM /metrics page
(running, waiting, KV use, the TTFT histogram, the ITL sum and count) on real HTTP; the sidecar is
``start_powercap`` itself (``--control auto`` with the scenario's TTFT and ITL targets, the simulated
GPU, ticked on the simulated clock every ``--interval-seconds``), and the clock it locks on the
simulated GPU is the clock the replica runs at.

"The clock the new state needs" comes from the model, not from the governor: the lowest of the
simulated GPU's clocks at which the same replica, locked there, holds both SLOs for ``--quantile`` of
the requests of a ``--needed-minutes`` Poisson stream at the post-step rate (same request mix, its own
seed); found by bisection (attainment grows with the clock). Printed per interval: the clock the
governor held in the minute before the step (median), the needed clock after it, the time from the
step to the first raise and to the first clock at or above the needed one, the median clock over the
minute after the step, and attainment (share of requests within both SLOs) in the minute before, the
minute after the step, and over the run.

    .venv/bin/python bench/governor_step.py [--intervals 5,1] [--base-rps 4] [--step 1.5]
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.simbench import print_table
from bench.simbench import trace as named_trace
from common.settings import from_values
from devices.simulated import SimulatedGpu
from gpumodel import H100_LLAMA_8B
from powercap.latency import LatencySample
from powercap.settings import Settings
from powercap.sidecar import start_powercap
from sim.observe import ITL_BUCKETS_S, TTFT_BUCKETS_S
from sim.scenario import default_slos
from sim.server import Cluster, ServerConfig
from sim.slo import Slos
from sim.trace import Request, Trace

DT_S = 0.05


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class NoLatency:
    """The end-to-end latency source: the governor runs on the server's own histograms here."""

    def read(self, now_s: float) -> LatencySample:
        return LatencySample(None, None)


class ReplicaPage:
    """The replica's vLLM /metrics page, rendered from the simulator's cumulative counters."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def __call__(self, path: str, payload: bytes) -> tuple[int, str, bytes]:
        r = self.cluster.replicas[0]
        m = '{model_name="m"}'
        lines = [
            f"vllm:num_requests_running{m} {float(r.running)!r}",
            f"vllm:num_requests_waiting{m} {float(r.waiting)!r}",
            # KV use moves with the batch (a live server's does); the model has no KV limit.
            f"vllm:kv_cache_usage_perc{m} {min(0.9, r.running / 512)!r}",
        ]
        total = 0.0
        for le, count in zip(TTFT_BUCKETS_S, r.ttft_counts_total, strict=False):
            total += count
            lines.append(f'vllm:time_to_first_token_seconds_bucket{{le="{le}",model_name="m"}} {total}')
        total += r.ttft_counts_total[-1]
        lines += [
            f'vllm:time_to_first_token_seconds_bucket{{le="+Inf",model_name="m"}} {total}',
            f"vllm:time_to_first_token_seconds_count{m} {total}",
            f"vllm:time_to_first_token_seconds_sum{m} {r.ttft_sum_s!r}",
            f"vllm:prompt_tokens_total{m} {r.prompt_tokens_total!r}",
        ]
        tokens = sum(r.itl_counts_total)
        assert len(r.itl_counts_total) == len(ITL_BUCKETS_S) + 1
        lines += [
            f'vllm:inter_token_latency_seconds_bucket{{le="+Inf",model_name="m"}} {tokens}',
            f"vllm:inter_token_latency_seconds_count{m} {tokens}",
            f"vllm:inter_token_latency_seconds_sum{m} {r.itl_sum_s}",
        ]
        return 200, "text/plain; version=0.0.4", ("\n".join(lines) + "\n").encode()


@contextmanager
def serving(page: Callable[[str, bytes], tuple[int, str, bytes]]) -> Iterator[str]:
    """``page`` on real HTTP on loopback (port 0); yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, kind, body = page(self.path, b"")
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def arrivals(mix: Trace, base_rps: float, step: float, step_s: float, end_s: float) -> Trace:
    rng = random.Random(1)
    t, out = 0.0, list[Request]()
    while True:
        t += rng.expovariate(base_rps * (step if t >= step_s else 1.0))
        if t >= end_s:
            return Trace("step", tuple(out))
        r = mix.requests[rng.randrange(len(mix.requests))]
        out.append(Request(t, r.prompt_tokens, r.output_tokens))


def poisson(mix: Trace, rps: float, end_s: float, seed: int) -> Trace:
    rng = random.Random(seed)
    t, out = 0.0, list[Request]()
    while True:
        t += rng.expovariate(rps)
        if t >= end_s:
            return Trace("steady", tuple(out))
        r = mix.requests[rng.randrange(len(mix.requests))]
        out.append(Request(t, r.prompt_tokens, r.output_tokens))


def attainment_at(server: ServerConfig, load: Trace, clock_mhz: float, slos: Slos) -> float:
    """Share of ``load``'s requests within both SLOs on one replica locked at ``clock_mhz``."""
    cluster = Cluster(server, load.requests)
    cluster.scale_to(1, 0.0, warm=True)
    cluster.replicas[0].locked_clock_mhz = clock_mhz
    t, end = 0.0, load.requests[-1].arrival_s
    while t < end or cluster.pending:
        cluster.step(t, t + 0.25)
        t += 0.25
    return _within(cluster, load, slos, range(len(load.requests)))


def needed_clock(
    server: ServerConfig, load: Trace, slos: Slos, clocks: list[float], quantile: float
) -> float:
    """The lowest of ``clocks`` (ascending) at which ``load`` keeps ``quantile`` within both SLOs."""
    lo, hi = 0, len(clocks) - 1
    if attainment_at(server, load, clocks[hi], slos) < quantile:
        return clocks[hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if attainment_at(server, load, clocks[mid], slos) >= quantile:
            hi = mid
        else:
            lo = mid + 1
    return clocks[lo]


def _within(cluster: Cluster, load: Trace, slos: Slos, idx: Iterable[int]) -> float:
    log, ok, n = cluster.log, 0, 0
    for i in idx:
        first, end = log.first_token_s[i], log.end_s[i]
        out = load.requests[i].output_tokens
        ttft = first - log.arrival_s[i]
        itl = (end - first) / (out - 1) if out > 1 else 0.0
        ok += ttft <= (slos.ttft_s or math.inf) and itl <= (slos.itl_s or math.inf)
        n += 1
    return ok / n if n else math.nan


def run(interval_s: float, args: argparse.Namespace, mix: Trace, needed: float) -> list[str]:
    server = ServerConfig(H100_LLAMA_8B)
    slos = default_slos(mix, server)
    load = arrivals(mix, args.base_rps, args.step, args.step_at_s, args.minutes * 60.0)
    cluster = Cluster(server, load.requests)
    cluster.scale_to(1, 0.0, warm=True)
    clock = SimClock()
    gpu = SimulatedGpu(0, clock=clock)
    state = tempfile.mkdtemp(prefix="eo-governor-step-")
    top = float(H100_LLAMA_8B.max_sm_clock_mhz)
    trail: list[tuple[float, float]] = []
    try:
        with serving(ReplicaPage(cluster)) as url:
            values = {"actuator": "clocks", "latency_target_s": 10.0, "ttft_target_s": slos.ttft_s,
                      "itl_target_s": slos.itl_s, "metrics_url": url + "/metrics", "interval_s": interval_s,
                      "state_dir": Path(state), "listen_address": "127.0.0.1", "port": 0}  # fmt: skip
            handle = start_powercap(from_values(Settings, values, environ={}), [gpu], NoLatency(),
                                    clock=clock, run_loop=False)  # fmt: skip
            every = round(interval_s / DT_S)
            k = 0
            try:
                while clock.now < args.minutes * 60.0 or cluster.pending:
                    replica = cluster.replicas[0]
                    replica.locked_clock_mhz = gpu.locked_sm_clock_mhz
                    cluster.step(clock.now, clock.now + DT_S)
                    k += 1
                    clock.now = k * DT_S
                    if k % every == 0:
                        decision = handle.sidecar.tick()
                        trail.append((clock.now, gpu.locked_sm_clock_mhz or top))
                        if args.trail and abs(clock.now - args.step_at_s) <= args.trail:
                            gs = handle.sidecar.governor_state
                            ratio = (
                                gs.prefill.ratio if gs is not None and gs.prefill is not None else math.nan
                            )
                            print(f"  {interval_s:g} s interval, t {clock.now - args.step_at_s:+6.1f} s: "
                                  f"{trail[-1][1]:.0f} MHz {decision.reason} (prefill ratio {ratio:.2f})",
                                  file=sys.stderr)  # fmt: skip
                    if clock.now > args.minutes * 60.0 + 300.0:
                        break
            finally:
                handle.stop()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    step_s = args.step_at_s
    before = [c for t, c in trail if step_s - 60.0 <= t < step_s]
    after = [c for t, c in trail if step_s <= t < step_s + 60.0]
    reached = next((t - step_s for t, c in trail if t >= step_s and c >= needed), None)
    raised = next((t - step_s for t, c in trail if t >= step_s and c > trail_at(trail, step_s)), None)

    def within(lo: float, hi: float) -> str:
        idx = [i for i, a in enumerate(cluster.log.arrival_s) if lo <= a < hi]
        return f"{_within(cluster, load, slos, idx):.2%} of {len(idx)}" if idx else "—"

    return [
        f"{interval_s:g} s",
        f"{statistics.median(before):.0f}" if before else "—",
        f"{needed:.0f}",
        f"{raised:.1f} s" if raised is not None else "never",
        f"{reached:.1f} s" if reached is not None else "never",
        f"{statistics.median(after):.0f}" if after else "—",
        within(step_s - 60.0, step_s),
        within(step_s, step_s + 60.0),
        within(0.0, args.minutes * 60.0),
    ]


def trail_at(trail: list[tuple[float, float]], at_s: float) -> float:
    before = [c for t, c in trail if t < at_s]
    return before[-1] if before else trail[0][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--intervals", default="5,2,1", help="sidecar intervals (s) to compare")
    ap.add_argument("--base-rps", type=float, default=4.0)
    ap.add_argument("--step", type=float, default=1.5)
    ap.add_argument("--step-at-s", type=float, default=300.0)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--quantile", type=float, default=0.99, help="share held within both SLOs")
    ap.add_argument("--needed-minutes", type=float, default=10.0)
    ap.add_argument("--trail", type=float, default=0.0, help="log each decision this close to the step (s)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    mix = named_trace("conv x1")
    server = ServerConfig(H100_LLAMA_8B)
    slos = default_slos(mix, server)
    clocks = sorted(float(c) for c in SimulatedGpu(0).supported_sm_clocks_mhz())
    steady = poisson(mix, args.base_rps * args.step, args.needed_minutes * 60.0, seed=2)
    needed = needed_clock(server, steady, slos, clocks, args.quantile)
    header = ["interval", "clock before MHz", "needed after MHz", "first raise", "reaches needed",
              "median clock, minute after", "in SLOs, minute before", "in SLOs, minute after",
              "in SLOs, run"]  # fmt: skip
    body = [run(float(x), args, mix, needed) for x in args.intervals.split(",")]

    print(f"# step {args.base_rps:g} -> {args.base_rps * args.step:g} req/s at {args.step_at_s:g} s; "
          f"SLOs TTFT {slos.ttft_s:g} s, ITL {slos.itl_s:g} s at {args.quantile:g}; needed clock: the "
          f"lowest locked clock holding both at {args.base_rps * args.step:g} req/s")  # fmt: skip
    print_table(header, body, markdown=args.markdown)


if __name__ == "__main__":
    main()
