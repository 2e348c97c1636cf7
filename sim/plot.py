"""PNG of a comparison: one row per policy; load and replicas, GPU power, each SLO's p99 against it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from sim.engine import RunResult
from sim.report import ATTRIBUTION, Summary

# matplotlib (with numpy, pillow, fontTools) is the `plot` extra, not a runtime dependency of the image.
INSTALL_HINT = "pip install 'energy-orchestrator[plot]'"


class PlottingUnavailable(ValueError):
    """``--plot`` was asked for where matplotlib is not installed."""


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only backend, or ``PlottingUnavailable`` saying how to get it."""
    try:
        import matplotlib  # noqa: PLC0415 (optional: only a plot needs it)
    except ImportError:
        raise PlottingUnavailable(
            f"--plot needs matplotlib, which is not installed ({INSTALL_HINT})"
        ) from None
    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot(results: Sequence[RunResult], summaries: Sequence[Summary], title: str, path: Path) -> None:
    plt = pyplot()
    rows = len(results)
    fig, axes = plt.subplots(rows, 3, figsize=(15, 2.8 * rows + 0.8), squeeze=False, sharex=True)
    for row, (r, s) in enumerate(zip(results, summaries, strict=True)):
        t_min = [t / 60.0 for t in r.series["t_s"]]
        ax_load, ax_power, ax_lat = axes[row]
        ax_load.plot(t_min, r.series["arrival_rps"], color="tab:gray", lw=0.8, label="arrivals (req/s)")
        ax_load.set_ylabel("requests / s")
        ax_rep = ax_load.twinx()
        ax_rep.step(
            t_min, r.series["replicas"], where="post", color="tab:blue", lw=1.2, label="ready replicas"
        )
        ax_rep.step(t_min, r.series["replicas_total"], where="post", color="tab:blue", lw=0.8, ls=":",
                    label="replicas incl. starting")  # fmt: skip
        ax_rep.set_ylabel("replicas")
        ax_rep.set_ylim(bottom=0)
        handles = ax_load.get_legend_handles_labels()[0] + ax_rep.get_legend_handles_labels()[0]
        ax_load.legend(handles=handles, loc="upper left", fontsize=7)
        ax_load.set_title(f"{s.policy}: load and replicas ({s.replica_minutes:.0f} replica-min)", fontsize=9)

        ax_power.plot(t_min, r.series["power_w"], color="tab:red", lw=0.9, label="GPU power (W)")
        ax_power.set_ylabel("watts")
        ax_power.set_ylim(bottom=0)
        ax_cap = ax_power.twinx()
        if _clocks_moved(r):
            ax_cap.plot(t_min, r.series["mean_clock_cap_mhz"], color="tab:orange", lw=0.8, ls="--",
                        label="mean SM clock cap (MHz)")  # fmt: skip
            ax_cap.set_ylabel("clock cap, MHz")
        else:
            ax_cap.plot(t_min, r.series["mean_cap_w"], color="tab:orange", lw=0.8, ls="--",
                        label="mean power cap (W)")  # fmt: skip
            ax_cap.set_ylabel("cap, W")
        handles = ax_power.get_legend_handles_labels()[0] + ax_cap.get_legend_handles_labels()[0]
        ax_power.legend(handles=handles, loc="upper left", fontsize=7)
        ax_power.set_title(f"{s.policy}: GPU power ({s.energy_kwh:.3f} kWh, idle {s.idle_energy_share:.0%})",
                           fontsize=9)  # fmt: skip

        # Each SLO's p99 as a share of its target, so TTFT (s), ITL (ms) and end-to-end share one axis.
        worst = 1.0
        for key, target, colour, label in (
            ("ttft_p99_s", s.ttft_slo_s, "tab:purple", "TTFT"),
            ("itl_p99_s", s.itl_slo_s, "tab:olive", "ITL"),
            ("latency_p99_s", s.e2e_slo_s, "tab:green", "end-to-end"),
        ):
            if target is None:
                continue
            share = [v / target for v in r.series[key]]
            ax_lat.plot(t_min, share, color=colour, lw=0.9, label=f"{label} p99 / SLO {target:g} s")
            worst = max([worst, *(v for v in share if math.isfinite(v))])
        ax_lat.axhline(1.0, color="black", ls="--", lw=0.8, label="SLO")
        ax_lat.set_ylabel("p99 / SLO (10 s window)")
        # Linear, clipped at 4x the SLO: a backlog's minutes-long latencies would flatten the rest.
        ax_lat.set_ylim(0, max(1.5, min(worst * 1.05, 4.0)))
        ax_lat.legend(loc="upper left", fontsize=7)
        ax_lat.set_title(f"{s.policy}: latency ({s.slo_attainment:.2%} within all SLOs)", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("time (min)")
    fig.suptitle(f"{title}\n{ATTRIBUTION}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.8 * rows + 0.8)))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _clocks_moved(result: RunResult) -> bool:
    """Whether a sidecar locked clocks in this run (then the clock cap is the setting worth showing)."""
    values = [v for v in result.series["mean_clock_cap_mhz"] if math.isfinite(v)]
    return bool(values) and min(values) < max(values)
