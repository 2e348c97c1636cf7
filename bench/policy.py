"""Policy benchmark: both Azure traces at native speed and compressed 8x, every policy, one table.

Prints, per trace variant, energy of each policy, Energy Orchestrator's saving against static
provisioning and the threshold autoscaler, the share of the (static - optimum) gap it closes, SLO
attainment; then the sidecar-alone figure (issue 6): caps at fixed replicas on the conversation trace.

    python bench/policy.py            # ~15 s on one core
    python bench/policy.py --markdown # the tables as Markdown (docs/simulator.md)

Traces: "Splitwise: Efficient generative LLM inference using phase splitting" (Patel et al., ISCA 2024),
Azure/AzurePublicDataset, CC-BY 4.0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gpumodel.model import H100_LLAMA_8B
from sim.eo import CapOptions, caps_only_policy, eo_policy
from sim.report import ATTRIBUTION, Summary, summarize
from sim.scenario import (
    PROVISION_UTILIZATION,
    make_scenario,
    static_peak,
    static_replicas,
    tuned_optimum,
    tuned_threshold,
    user_threshold,
)
from sim.server import ServerConfig
from sim.trace import compress, load_trace

TRACES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "traces"
CANDIDATES = [TRACES, Path("/work/shared/data/traces"), Path.cwd().parent / "shared" / "data" / "traces"]


def find(name: str) -> Path:
    for base in CANDIDATES:
        if (base / name).is_file():
            return base / name
    sys.exit(f"bench/policy.py: {name} not found in {', '.join(map(str, CANDIDATES))}")


def pct(a: float, b: float) -> str:
    """Energy saved by ``a`` relative to ``b`` (negative: ``a`` spent more)."""
    return f"{(1 - a / b) * 100:+.1f}%" if b > 0 else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = ap.parse_args()
    md = args.markdown
    server = ServerConfig(H100_LLAMA_8B)
    started = time.perf_counter()
    rows: list[list[str]] = []
    detail: list[list[str]] = []
    sidecar: list[list[str]] = []
    for trace_name in ("azure_llm_2023_conv.csv", "azure_llm_2023_code.csv"):
        base = load_trace(find(trace_name))
        for speedup in (1.0, 8.0):
            trace = compress(base, speedup)
            sc = make_scenario(trace, server)
            first = sc.first_minute_replicas()
            n_static, static = static_peak(sc)
            n_min, static_min = static_replicas(sc)
            caps = CapOptions(sc.slo_s * sc.cap_target_ratio, sc.cap_actuator, sc.quantile)
            runs = {
                "static": static,
                "threshold": user_threshold(sc),
                "optimum": tuned_optimum(sc),
                "eo": sc.run(eo_policy("eo", sc.slo_s, sc.quantile, sc.capacity_rps, server.profile, first,
                                       caps)),
                "eo-replicas": sc.run(eo_policy("eo-replicas", sc.slo_s, sc.quantile, sc.capacity_rps,
                                                server.profile, first, None)),
                "eo-learned": sc.run(eo_policy("eo-learned", sc.slo_s, sc.quantile, None, server.profile,
                                               first, None)),
                "static-min": static_min,
                "threshold-tuned": tuned_threshold(sc),
            }  # fmt: skip
            s: dict[str, Summary] = {k: summarize(r, sc.slo_s) for k, r in runs.items()}
            e = {k: v.energy_kwh for k, v in s.items()}
            gap = e["static"] - e["optimum"]
            closed = f"{(e['static'] - e['eo']) / gap * 100:.0f}%" if gap > 1e-9 else "n/a (no gap)"
            label = f"{trace_name.removeprefix('azure_llm_2023_').removesuffix('.csv')} x{speedup:g}"
            rows.append([
                label, f"{sc.slo_s:g}", f"{n_static} / {n_min}",
                f"{e['static']:.3f}", f"{e['threshold']:.3f}", f"{e['optimum']:.3f}", f"{e['eo']:.3f}",
                pct(e["eo"], e["static"]), pct(e["eo"], e["threshold"]),
                f"{(e['eo'] / e['optimum'] - 1) * 100:+.1f}%",
                closed, f"{s['eo'].slo_attainment:.2%}",
            ])  # fmt: skip
            for k, v in s.items():
                detail.append([
                    label, k, f"{v.energy_kwh:.3f}", f"{v.joules_per_request:.0f}",
                    f"{v.idle_energy_share:.0%}", f"{v.latency_p99_s:.2f}", f"{v.ttft_p99_s:.2f}",
                    f"{v.slo_attainment:.2%}", f"{v.replica_minutes:.0f}", f"{v.cold_starts}",
                ])  # fmt: skip
            if trace_name.endswith("conv.csv"):
                for actuator in ("power", "clocks"):
                    cap = sc.run(caps_only_policy(n_static, CapOptions(sc.slo_s, actuator, sc.quantile),
                                                  server.profile))  # fmt: skip
                    cs = summarize(cap, sc.slo_s)
                    sidecar.append([label, actuator, f"{n_static}", f"{s['static'].energy_kwh:.3f}",
                                    f"{cs.energy_kwh:.3f}", pct(cs.energy_kwh, s["static"].energy_kwh),
                                    f"{s['static'].latency_p99_s:.2f}", f"{cs.latency_p99_s:.2f}",
                                    f"{sc.slo_s:g}", f"{cs.slo_attainment:.2%}"])  # fmt: skip
    elapsed = time.perf_counter() - started

    def show(title: str, header: list[str], body: list[list[str]]) -> None:
        print(f"\n{title}\n")
        if md:
            print("| " + " | ".join(header) + " |")
            print("|" + "---|" * len(header))
            for r in body:
                print("| " + " | ".join(r) + " |")
            return
        widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
        for r in [header, *body]:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))

    show("Energy (kWh) per policy and Energy Orchestrator's (eo) savings; SLO = p99 end-to-end latency; "
         f"static = peak minute at {PROVISION_UTILIZATION:.0%} of capacity, threshold = KEDA rate trigger at "
         f"{PROVISION_UTILIZATION:.0%} of capacity (as users set them); static n = peak / static-min",
         ["trace", "SLO s", "static n", "static", "threshold", "optimum", "eo", "eo saved vs static",
          "eo saved vs threshold", "eo over optimum", "gap closed", "eo in SLO"], rows)  # fmt: skip
    show("Every policy", ["trace", "policy", "kWh", "J/req", "idle", "E2E p99 s", "TTFT p99 s", "in SLO",
                          "replica-min", "starts"], detail)  # fmt: skip
    show("Sidecar alone (issue 6): eo-powercap step() at the static (peak) replica count, target = the SLO",
         ["trace", "actuator", "replicas", "uncapped kWh", "capped kWh", "saved", "p99 uncapped s",
          "p99 capped s", "SLO s", "in SLO"], sidecar)  # fmt: skip
    print(f"\n{ATTRIBUTION}\nbench/policy.py ran in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
