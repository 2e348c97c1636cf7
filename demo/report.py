"""What the demo shows: the live table's rows, the end-of-run summary, the JSON and the plot."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One line of the live table (also one point of the plot)."""

    t_s: float
    phase: str
    offered_rps: float
    served_rps: float | None
    desired: int
    ready: int
    gpu_power_w: float | None
    joules_per_request: float | None
    latency_s: float | None
    mean_setting: float | None
    """Mean over the replicas' GPUs of what the sidecars move: power limit (W) or SM clock cap (MHz)."""
    slo_s: float
    alerts: list[str] = field(default_factory=list)


def _fmt(value: float | None, width: int, decimals: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{decimals}f}"


def header(actuator: str) -> str:
    """The live table's column titles; the sidecar column shows the actuator's unit."""
    setting = "clk MHz" if actuator == "clocks" else "cap W"
    return (
        f"{'time':>5} {'phase':<8} {'offered':>7} {'served':>7} {'ready/want':>10} {'GPU W':>6} "
        f"{'J/req':>6} {'p95 s':>6} {'SLO':>4} {setting:>7}  alerts firing"
    )


def format_row(row: Row) -> str:
    slo_ok = "-" if row.latency_s is None else ("ok" if row.latency_s <= row.slo_s else "MISS")
    return (
        f"{row.t_s:5.0f} {row.phase:<8} {row.offered_rps:7.1f} {_fmt(row.served_rps, 7, 1)} "
        f"{f'{row.ready}/{row.desired}':>10} {_fmt(row.gpu_power_w, 6, 0)} "
        f"{_fmt(row.joules_per_request, 6, 0)} {_fmt(row.latency_s, 6, 2)} {slo_ok:>4} "
        f"{_fmt(row.mean_setting, 7, 0)}  {', '.join(row.alerts) or '-'}"
    )


@dataclass
class DemoResult:
    rows: list[Row]
    slo_s: float
    capacity_rps: float
    requests: int
    finished: int
    gpu_energy_j: float | None
    cap_changes: int
    alerts_seen: set[str]
    gpus_restored: bool
    max_desired: int
    final_desired: int
    actuator: str
    by_phase: dict[str, tuple[int, int]]
    """Arrival phase -> (requests finished, of which within the SLO), in schedule order."""
    alerts_delivered: set[str] = field(default_factory=set)
    """Alerts Alertmanager delivered, firing, to the demo's webhook receiver."""
    decisions: dict[str, int] = field(default_factory=dict)
    """The sidecars' decisions by reason (``eo_powercap_decisions_total``), the governor's included:
    how often it moved by feedforward, held for a forming queue or bridged a cold start."""
    scaler_decisions: dict[str, int] = field(default_factory=dict)
    """eo-scaler's decisions by reason (``eo_scaler_decisions_total``): breaches, forming queues, burst
    headroom, consolidation, scale to zero."""

    @property
    def within_slo(self) -> int:
        return sum(held for _, held in self.by_phase.values())

    def summary(self) -> dict[str, Any]:
        jpr = self.gpu_energy_j / self.finished if self.gpu_energy_j and self.finished else None
        return {
            "requests": self.requests,
            "finished": self.finished,
            "slo_seconds": self.slo_s,
            "slo_attainment": self.within_slo / self.finished if self.finished else None,
            "slo_attainment_by_arrival_phase": {
                phase: round(held / served, 4) for phase, (served, held) in self.by_phase.items() if served
            },
            "replica_capacity_rps": round(self.capacity_rps, 2),
            "gpu_energy_kj": round(self.gpu_energy_j / 1000, 1) if self.gpu_energy_j else None,
            "gpu_joules_per_request": round(jpr, 1) if jpr else None,
            "max_replicas": self.max_desired,
            "final_replicas": self.final_desired,
            "sidecar_setting_changes": self.cap_changes,
            "alerts_fired": sorted(self.alerts_seen),
            "alerts_delivered_to_webhook": sorted(self.alerts_delivered),
            "sidecar_actuator": self.actuator,
            "gpus_restored_to_original_settings": self.gpus_restored,
            "sidecar_decisions_by_reason": dict(sorted(self.decisions.items())),
            "scaler_decisions_by_reason": dict(sorted(self.scaler_decisions.items())),
        }


def decisions_line(decisions: dict[str, int]) -> str:
    """``feedforward 40, at_ceiling 12``: decisions by reason, most frequent first."""
    ranked = sorted(decisions.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{reason} {count}" for reason, count in ranked) or "none"


def plot(result: DemoResult, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 (heavy import, only when a plot is asked for)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    t = [r.t_s for r in result.rows]
    fig, axes = plt.subplots(5, 1, figsize=(10, 12), sharex=True)
    axes[0].plot(t, [r.offered_rps for r in result.rows], label="offered (trace replay)")
    axes[0].plot(t, [r.served_rps or math.nan for r in result.rows], label="served (Prometheus, rate)")
    axes[0].set_ylabel("requests/s")
    axes[1].step(t, [r.desired for r in result.rows], where="post", label="desired")
    axes[1].step(t, [r.ready for r in result.rows], where="post", label="ready")
    axes[1].set_ylabel("replicas")
    axes[2].plot(t, [r.gpu_power_w or math.nan for r in result.rows], label="GPU power (all GPUs)")
    axes[2].set_ylabel("watts")
    unit = "MHz" if result.actuator == "clocks" else "W"
    what = "SM clock cap" if result.actuator == "clocks" else "power limit"
    axes[4].plot(t, [r.mean_setting or math.nan for r in result.rows], label=f"mean {what}, replicas' GPUs")
    axes[4].set_ylabel(unit)
    axes[3].plot(t, [r.latency_s or math.nan for r in result.rows], label="p95 end-to-end latency")
    axes[3].axhline(result.slo_s, color="red", linestyle="--", label=f"SLO {result.slo_s:g} s")
    axes[3].set_ylabel("seconds")
    axes[4].set_xlabel("demo time (s)")
    for ax in axes:
        ax.legend(loc="upper right", fontsize="small")
        ax.grid(alpha=0.3)
    _mark_phases(axes, result.rows)
    fig.suptitle(
        "Energy Orchestrator demo: Azure LLM conversation trace (Splitwise, ISCA 2024), time-compressed"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result: DemoResult, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "demo-summary.json"
    summary_path.write_text(json.dumps(result.summary(), indent=2) + "\n")
    png = out_dir / "demo.png"
    plot(result, png)
    return summary_path, png


def _mark_phases(axes: Any, rows: list[Row]) -> None:
    """A dotted line where each phase of the schedule begins, named on the top panel."""
    previous = None
    for row in rows:
        if row.phase != previous:
            for ax in axes:
                ax.axvline(row.t_s, color="grey", linestyle=":", linewidth=1)
            axes[0].annotate(
                row.phase,
                (row.t_s, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize="small",
                color="grey",
            )
            previous = row.phase
