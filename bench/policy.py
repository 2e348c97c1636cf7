"""Policy benchmark: both Azure traces at native speed and compressed 8x, and two traces of our own making
(a compressed diurnal day with bursts, long-context chat), every policy, one set of tables.

SLOs: the default TTFT + ITL pair of each trace (2x its unloaded p99, rounded up to a vLLM bucket);
attainment is the share of requests within both at once. Prints, per trace: energy of each policy;
Energy Orchestrator's (eo, eo-learned) energy against the threshold searched on the trace, the
user-set threshold, static provisioning and the joint optimum; all-SLO attainment; every policy's
latencies; then the sidecar-alone figure (issue 6) on the conversation trace.

    python bench/policy.py            # ~1-2 min on one core
    python bench/policy.py --markdown # the tables as Markdown (docs/simulator.md)

Traces: "Splitwise: Efficient generative LLM inference using phase splitting" (Patel et al., ISCA 2024),
Azure/AzurePublicDataset, CC-BY 4.0; synthetic ones from sim/synth.py (seed 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.simbench import LABELS, print_table, trace
from gpumodel.model import H100_LLAMA_8B
from sim.engine import RunResult
from sim.eo import CapOptions, caps_only_policy
from sim.report import ATTRIBUTION, Summary, summarize
from sim.scenario import (
    PROVISION_UTILIZATION,
    Scenario,
    joint_optimum,
    make_scenario,
    static_peak,
    static_replicas,
    tuned_optimum,
    tuned_threshold,
    user_threshold,
)
from sim.server import ServerConfig
from sim.slo import RequestLatencies, Slos
from sim.slo import attainment as slo_attainment


def saved(a: float, b: float) -> str:
    """Energy saved by ``a`` relative to ``b`` (negative: ``a`` spent more)."""
    return f"{(1 - a / b) * 100:+.1f}%" if b > 0 else "n/a"


def over(a: float, b: float) -> str:
    """How much more energy ``a`` used than ``b``."""
    return f"{(a / b - 1) * 100:+.1f}%" if b > 0 else "n/a"


# The workload's young phase: until ten minutes of its own history exist the scaler plans with the
# young-workload headroom (scaler.policy.YOUNG_HISTORY_MINUTES) and cannot know its bursts.
YOUNG_S = 600.0


def attainment_after(result: RunResult, slos: Slos, start_s: float) -> float | None:
    """Share of the requests arriving at or after ``start_s`` within all SLOs (None: none arrive)."""
    keep = [i for i, a in enumerate(result.arrival_s) if a >= start_s]
    if not keep:
        return None
    lat = result.latencies()
    sample = RequestLatencies([lat.ttft_s[i] for i in keep], [lat.itl_s[i] for i in keep],
                              [lat.e2e_s[i] for i in keep])  # fmt: skip
    return slo_attainment(sample, slos).all


def run_all(sc: Scenario) -> tuple[int, int, dict[str, Summary], dict[str, RunResult]]:
    n_static, static = static_peak(sc)
    n_min, static_min = static_replicas(sc)
    replica_only = tuned_optimum(sc)
    runs = {
        "static": static,
        "static-min": static_min,
        "threshold": user_threshold(sc),
        "threshold-tuned": tuned_threshold(sc),
        "optimum-replicas": replica_only,
        "optimum": joint_optimum(sc, replica_only),
        "eo": sc.run(sc.eo_policy("eo", sidecar=True)),
        "eo-replicas": sc.run(sc.eo_policy("eo-replicas")),
        "eo-learned": sc.run(sc.eo_policy("eo-learned", learned=True, sidecar=True)),
    }  # fmt: skip
    return n_static, n_min, {k: summarize(r, sc.slos) for k, r in runs.items()}, runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--only", help="comma-separated trace labels (e.g. 'conv x1,long-context')")
    args = ap.parse_args()
    md = args.markdown
    server = ServerConfig(H100_LLAMA_8B)
    started = time.perf_counter()
    energy: list[list[str]] = []
    against: list[list[str]] = []
    detail: list[list[str]] = []
    sidecar: list[list[str]] = []
    mature: list[list[str]] = []
    timings: list[str] = []
    wanted = set(args.only.split(",")) if args.only else None
    for label in LABELS:
        if wanted is not None and label not in wanted:
            continue
        replayed = trace(label)
        t0 = time.perf_counter()
        sc = make_scenario(replayed, server)
        n_static, n_min, s, results = run_all(sc)
        after = []
        for k in ("threshold", "optimum", "eo", "eo-replicas", "eo-learned"):
            mature_share = attainment_after(results[k], sc.slos, YOUNG_S)
            short = mature_share is None or results[k].duration_s < 2 * YOUNG_S
            after.append("—" if short else f"{mature_share:.2%}")
        mature.append([label, f"{s['eo'].slo_attainment:.2%}", *after])
        e = {k: v.energy_kwh for k, v in s.items()}
        slos = ", ".join(f"{k.upper()} {v:g}" for k, v in sc.slos.given())
        energy.append([
            label, slos, f"{sc.capacity_rps:.2f}", f"{n_static} / {n_min}",
            *(f"{e[k]:.3f}" for k in ("static", "static-min", "threshold", "threshold-tuned",
                                       "optimum-replicas", "optimum", "eo", "eo-replicas", "eo-learned")),
        ])  # fmt: skip
        against.append([
            label,
            saved(e["eo"], e["threshold-tuned"]), saved(e["eo"], e["threshold"]), saved(e["eo"], e["static"]),
            over(e["eo"], e["optimum"]), f"{s['eo'].slo_attainment:.2%}",
            saved(e["eo-learned"], e["threshold-tuned"]), over(e["eo-learned"], e["eo"]),
            f"{s['eo-learned'].slo_attainment:.2%}",
            f"{s['optimum'].slo_attainment:.2%}", saved(e["optimum"], e["optimum-replicas"]),
        ])  # fmt: skip
        for k, v in s.items():
            detail.append([
                label, k, f"{v.energy_kwh:.3f}", f"{v.joules_per_request:.0f}", f"{v.idle_energy_share:.0%}",
                f"{v.ttft_p99_s:.2f}", f"{v.itl_p99_s * 1000:.1f}", f"{v.latency_p99_s:.2f}",
                f"{v.ttft_attainment or 0:.2%}", f"{v.itl_attainment or 0:.2%}", f"{v.slo_attainment:.2%}",
                f"{v.replica_minutes:.0f}", f"{v.cold_starts}",
            ])  # fmt: skip
        if label.startswith("conv"):
            # The power actuator runs the feedback loop on the end-to-end SLO; the clocks, the sidecar's
            # default: the governor on the TTFT and ITL SLOs (Scenario.sidecar_alone, as eo-sim's caps-only).
            for actuator in ("power", "clocks"):
                options = CapOptions(sc.policy_slo_s, actuator, sc.quantile)
                loop = caps_only_policy(n_static, options, server.profile)
                cap = sc.run(sc.sidecar_alone(n_static) if actuator == "clocks" else loop)
                cs = summarize(cap, sc.slos)
                sidecar.append([label, actuator, f"{n_static}", f"{s['static'].energy_kwh:.3f}",
                                f"{cs.energy_kwh:.3f}", saved(cs.energy_kwh, s["static"].energy_kwh),
                                f"{s['static'].slo_attainment:.2%}", f"{cs.slo_attainment:.2%}"])  # fmt: skip
        timings.append(f"{label} {time.perf_counter() - t0:.0f} s")
    elapsed = time.perf_counter() - started

    def show(title: str, header: list[str], body: list[list[str]]) -> None:
        print(f"\n{title}\n")
        print_table(header, body, markdown=md, align="right")

    share = f"{PROVISION_UTILIZATION:.0%}"
    show(
        "Energy (kWh) per policy. SLOs: p99 TTFT and ITL in seconds (ITL: each request's mean); capacity = "
        f"load-tested req/s per replica at both; static = peak minute at {share} of capacity, threshold = "
        f"KEDA rate trigger at {share} of capacity (as users set them); static n = peak / static-min; "
        "optimum = joint (replicas and clocks)",
        ["trace", "SLOs s", "capacity", "static n", "static", "static-min", "threshold", "threshold-tuned",
         "optimum-replicas", "optimum", "eo", "eo-replicas", "eo-learned"],
        energy,
    )  # fmt: skip
    show(
        "Energy Orchestrator against the baselines: energy saved vs X (positive = less than X), over the "
        "joint optimum, and the share of requests within all SLOs",
        ["trace", "eo vs threshold-tuned", "eo vs threshold", "eo vs static", "eo over optimum",
         "eo in SLOs", "eo-learned vs threshold-tuned", "eo-learned over eo", "eo-learned in SLOs",
         "optimum in SLOs", "joint vs replica-only optimum"],
        against,
    )  # fmt: skip
    show(
        f"Within all SLOs over the whole trace (eo) and from minute {YOUNG_S / 60:.0f} on, once the workload "
        "has its own history (burst headroom, learned capacity, forecasts); — where the trace is "
        "shorter than twice that",
        ["trace", "eo, whole trace", "threshold", "optimum", "eo", "eo-replicas", "eo-learned"],
        mature,
    )  # fmt: skip
    show(
        "Every policy (ITL in ms)",
        ["trace", "policy", "kWh", "J/req", "idle", "TTFT p99 s", "ITL p99", "E2E p99 s", "in TTFT",
         "in ITL", "in all SLOs", "replica-min", "starts"],
        detail,
    )  # fmt: skip
    show(
        "Sidecar alone (caps-only) at the static (peak) replica count: power = the feedback loop on the "
        "end-to-end SLO; clocks = the sidecar's default, the governor on the TTFT and ITL SLOs",
        ["trace", "actuator", "replicas", "uncapped kWh", "capped kWh", "saved", "uncapped in SLOs",
         "capped in SLOs"],
        sidecar,
    )  # fmt: skip
    print(f"\n{ATTRIBUTION}\nbench/policy.py ran in {elapsed:.1f} s ({'; '.join(timings)})")


if __name__ == "__main__":
    main()
