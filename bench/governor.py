"""The clock governor (issue 13) in eo-sim: energy and attainment against the old feedback loop.

Per trace, with the default TTFT + ITL SLO pair (docs/simulator.md):

* sidecar alone at the static (peak) replica count: no caps; the old loop (``step()`` on the
  end-to-end SLO, clocks); the governor (``govern()`` on the TTFT and ITL targets, clocks);
* with the scaler (eo-scaler ``decide()`` through KEDA/HPA on the scenario's TTFT and ITL SLOs, as
  eo-sim and bench/policy.py run it): ``eo-replicas`` (no sidecar); ``eo`` with the old loop; ``eo``
  (eo-sim's default: the governor and the cold-start bridge); the same without the bridge (ablation);
  and with a power budget per GPU held alongside (budget guard).

    python bench/governor.py                    # conv x1 and the diurnal day (~2-4 min on one core)
    python bench/governor.py --only "conv x8"   # conv x1, conv x8, code x1, diurnal-bursts, long-context
    python bench/governor.py --markdown

Traces: "Splitwise: Efficient generative LLM inference using phase splitting" (Patel et al., ISCA 2024),
Azure/AzurePublicDataset, CC-BY 4.0; synthetic ones from sim/synth.py (seed 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.simbench import print_table, trace
from gpumodel.model import H100_LLAMA_8B
from sim.engine import Policy
from sim.eo import CapOptions, EoCapController, caps_only_policy
from sim.governor import EoGovernorController, GovernorOptions
from sim.policies import CapSetting
from sim.report import summarize
from sim.scenario import Scenario, make_scenario, static_peak
from sim.server import ServerConfig


def governor_options(sc: Scenario, **kw: object) -> GovernorOptions:
    return GovernorOptions(sc.slos.itl_s, sc.slos.ttft_s, sc.quantile, **kw)  # type: ignore[arg-type]


def _reasons(policy: Policy) -> Counter[str]:
    return policy.caps.reasons if isinstance(policy.caps, EoGovernorController) else Counter()


def run_trace(sc: Scenario, budget_w: float | None) -> tuple[int, list[tuple[str, object, Counter[str]]]]:
    """The runs of one trace, as eo-sim runs them (``Scenario.sidecar_alone``, ``Scenario.eo_policy``:
    the scenario's TTFT and ITL SLOs in the trigger and the governor)."""
    profile = sc.server.profile
    n_static, static = static_peak(sc)
    rows: list[tuple[str, object, Counter[str]]] = [("static (no sidecar)", static, Counter())]
    old = caps_only_policy(n_static, CapOptions(sc.policy_slo_s, "clocks", sc.quantile), profile)
    rows.append(("sidecar alone: old loop", sc.run(old), Counter()))
    gov = sc.sidecar_alone(n_static)
    rows.append(("sidecar alone: governor", sc.run(gov), _reasons(gov)))
    base = sc.eo_policy("eo-replicas")
    rows.append(("eo-replicas", sc.run(base), Counter()))
    old_eo = dataclasses.replace(base, name="eo: old loop", caps=EoCapController(sc.sidecar_loop(), profile))
    rows.append(("eo: old loop", sc.run(old_eo), Counter()))
    for label, bridge in (("eo: governor + bridge", True), ("eo: governor, no bridge", False)):
        policy = dataclasses.replace(sc.eo_policy("eo", sidecar=True, bridge=bridge), name=label)
        rows.append((label, sc.run(policy), _reasons(policy)))
    if budget_w is not None:
        label = f"eo: power limit {budget_w:.0f} W only"
        limit = dataclasses.replace(base, name=label, caps=_FixedLimit(budget_w))
        rows.append((label, sc.run(limit), Counter()))
        label = f"eo: governor + bridge + {budget_w:.0f} W limit"
        ctl = EoGovernorController(governor_options(sc, budget_w=budget_w), profile)
        rows.append((label, sc.run(dataclasses.replace(base, name=label, caps=ctl)), ctl.reasons))
    return n_static, rows


class _FixedLimit:
    """A power limit per GPU held on every replica: the budget actuator alone."""

    name = "power-limit"
    interval_s = 5.0
    window_s = 60.0
    quantile = 0.99

    def __init__(self, watts: float) -> None:
        self.watts = watts

    def start(self, replica_id: int, now_s: float) -> CapSetting:
        return CapSetting(power_cap_w=self.watts * H100_LLAMA_8B.num_gpus)

    def control(self, replica_id: int, reading: object) -> CapSetting:
        return self.start(replica_id, 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="conv x1,diurnal-bursts", help="comma-separated trace labels")
    ap.add_argument("--budget-watts", type=float, default=None, help="also run a per-GPU power budget")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    server = ServerConfig(H100_LLAMA_8B)
    header = ["trace", "run", "kWh", "saved vs static", "saved vs eo-replicas", "in all SLOs", "in TTFT",
              "in ITL", "TTFT p99 s", "ITL p99 ms", "top reasons"]  # fmt: skip
    body: list[list[str]] = []
    for label in args.only.split(","):
        t0 = time.perf_counter()
        sc = make_scenario(trace(label), server)
        n_static, rows = run_trace(sc, args.budget_watts)
        summaries = {name: summarize(r, sc.slos) for name, r, _ in rows}  # type: ignore[arg-type]
        static_kwh = summaries["static (no sidecar)"].energy_kwh
        replicas_kwh = summaries["eo-replicas"].energy_kwh
        for name, _, reasons in rows:
            s = summaries[name]
            top = ", ".join(f"{k} {v}" for k, v in reasons.most_common(4))
            body.append([
                f"{label} (static {n_static})", name, f"{s.energy_kwh:.3f}",
                f"{(1 - s.energy_kwh / static_kwh) * 100:+.1f}%",
                f"{(1 - s.energy_kwh / replicas_kwh) * 100:+.1f}%" if name.startswith("eo") else "",
                f"{s.slo_attainment:.2%}", f"{s.ttft_attainment or 0:.2%}", f"{s.itl_attainment or 0:.2%}",
                f"{s.ttft_p99_s:.2f}", f"{s.itl_p99_s * 1000:.1f}", top,
            ])  # fmt: skip
        print(f"# {label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print_table(header, body, markdown=args.markdown)


if __name__ == "__main__":
    main()
