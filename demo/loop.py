"""`make demo`: the whole loop, live, on simulated GPUs with a real Prometheus and Alertmanager.

Started here, in one process: the exporter (simulated GPUs, pod attribution), eo-scaler, a KEDA/HPA
driver polling it over gRPC, a Deployment of simulated vLLM replicas whose load replays a real trace,
and one eo-powercap sidecar per replica. Started as processes: Prometheus (with the project's rules,
time-compressed) and Alertmanager. Everything stops on the way out, Ctrl-C included.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.keda import KedaDriver
from demo.prometheus import Alertmanager, Prometheus
from demo.rules import write_compressed_rules
from demo.schedule import Phase, phase_at, schedule_requests
from demo.world import DemoDeployment
from exporter.devices.simulated import SimulatedBackend, SimulatedGpu
from exporter.server import start_exporter
from exporter.settings import Settings as ExporterSettings
from gpumodel import H100_LLAMA_8B
from scaler.kpi_source import PrometheusAuth
from scaler.powercap.latency import MetricsEndpointSource
from scaler.powercap.settings import Settings as PowercapSettings
from scaler.powercap.sidecar import start_powercap
from scaler.server import start_scaler
from scaler.settings import ScalerSettings
from sim.keda import HpaConfig
from sim.scenario import default_slo_s, load_test_capacity
from sim.server import ServerConfig
from sim.trace import load_trace

log = logging.getLogger(__name__)
NAMESPACE, WORKLOAD, MODEL = "demo", "llama-8b", "meta-llama/Llama-3.1-8B-Instruct"


@dataclass(frozen=True)
class DemoConfig:
    trace_path: Path
    phases: tuple[Phase, ...]
    gpus: int = 6
    cold_start_s: float = 10.0
    rules_compression: float = 20.0
    """Rule windows and alert ``for:`` are divided by this, so 5m reads 15 s."""
    poll_interval_s: float = 5.0
    latency_quantile: float = 0.95
    slo_s: float | None = None
    capacity_rps: float | None = None
    actuator: str = "power"
    row_interval_s: float = 5.0
    out_dir: Path = Path("out")

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)


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
    mean_cap_w: float | None
    alerts: list[str] = field(default_factory=list)


def _scalar(prom: Prometheus, promql: str) -> float | None:
    try:
        result = prom.query(promql)
    except (OSError, RuntimeError):
        return None
    values = [float(r["value"][1]) for r in result]
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) if finite else None


def observe(prom: Prometheus, deployment: DemoDeployment, t_s: float, phase: str, offered: float) -> Row:
    sel = f'{{namespace="{NAMESPACE}",workload="{WORKLOAD}"}}'
    caps = [pod.gpu.power_limit_mw() / 1000 for pod in deployment.pods()]
    firing = sorted({a["labels"]["alertname"] for a in prom.alerts() if a.get("state") == "firing"})
    return Row(
        t_s=t_s,
        phase=phase,
        offered_rps=offered,
        served_rps=_scalar(prom, f"namespace_workload:eo_pod_requests:rate5m{sel}"),
        desired=deployment.desired(),
        ready=deployment.ready(),
        gpu_power_w=_scalar(prom, "sum(eo_gpu_power_watts)"),
        joules_per_request=_scalar(prom, f"namespace_workload:eo_joules_per_request:ratio_rate5m{sel}"),
        latency_s=_scalar(
            prom,
            "namespace_workload_quantile:eo_pod_request_latency_seconds:histogram_quantile_rate5m"
            f'{{namespace="{NAMESPACE}",workload="{WORKLOAD}",quantile="0.95"}}',
        ),
        mean_cap_w=sum(caps) / len(caps) if caps else None,
        alerts=firing,
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADER = (
    f"{'time':>5} {'phase':<8} {'offered':>8} {'served':>7} {'replicas':>8} {'GPU W':>6} "
    f"{'J/req':>6} {'p95 s':>6} {'SLO':>4} {'cap W':>6}  alerts firing"
)


def format_row(row: Row, slo_s: float) -> str:
    slo_ok = "-" if row.latency_s is None else ("ok" if row.latency_s <= slo_s else "MISS")
    return (
        f"{row.t_s:5.0f} {row.phase:<8} {row.offered_rps:8.1f} {_fmt(row.served_rps, '7.1f')} "
        f"{row.ready:>3}/{row.desired:<4} {_fmt(row.gpu_power_w, '6.0f')} "
        f"{_fmt(row.joules_per_request, '6.0f')} {_fmt(row.latency_s, '6.2f')} {slo_ok:>4} "
        f"{_fmt(row.mean_cap_w, '6.0f')}  {', '.join(row.alerts) or '-'}"
    )


@dataclass
class DemoResult:
    rows: list[Row]
    slo_s: float
    capacity_rps: float
    requests: int
    finished: int
    within_slo: int
    gpu_energy_j: float | None
    cap_changes: float | None
    alerts_seen: set[str]
    gpus_restored: bool
    max_desired: int
    final_desired: int

    def summary(self) -> dict[str, Any]:
        jpr = self.gpu_energy_j / self.finished if self.gpu_energy_j and self.finished else None
        return {
            "requests": self.requests,
            "finished": self.finished,
            "slo_seconds": self.slo_s,
            "slo_attainment": self.within_slo / self.finished if self.finished else None,
            "replica_capacity_rps": round(self.capacity_rps, 2),
            "gpu_energy_kj": round(self.gpu_energy_j / 1000, 1) if self.gpu_energy_j else None,
            "gpu_joules_per_request": round(jpr, 1) if jpr else None,
            "max_replicas": self.max_desired,
            "final_replicas": self.final_desired,
            "power_cap_changes": self.cap_changes,
            "alerts_fired": sorted(self.alerts_seen),
            "gpus_restored_to_default_limit": self.gpus_restored,
        }


class SidecarTargets:
    """Prometheus file-based discovery of the sidecars, which come and go with the replicas."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._targets: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._write()

    def add(self, pod: str, port: int) -> None:
        with self._lock:
            self._targets[pod] = {
                "targets": [f"127.0.0.1:{port}"],
                "labels": {"namespace": NAMESPACE, "pod": pod},
            }
            self._write()

    def remove(self, pod: str) -> None:
        with self._lock:
            self._targets.pop(pod, None)
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(list(self._targets.values())))
        tmp.replace(self.path)


def run_demo(config: DemoConfig, on_row: Callable[[Row], None] = lambda _row: None) -> DemoResult:
    """Run the loop for ``config.duration_s`` seconds and return what happened."""
    trace = load_trace(config.trace_path)
    server = ServerConfig(H100_LLAMA_8B, cold_start_s=config.cold_start_s)
    slo_s = config.slo_s or default_slo_s(trace, server)
    capacity = config.capacity_rps or load_test_capacity(
        trace, server, slo_s, q=config.latency_quantile, duration_s=300.0
    )
    requests = schedule_requests(trace, config.phases)
    log.info("SLO p%.0f %.1f s; one replica serves %.1f req/s within it; %d requests over %.0f s",
             config.latency_quantile * 100, slo_s, capacity, len(requests), config.duration_s)  # fmt: skip
    gpus = [SimulatedGpu(i) for i in range(config.gpus)]
    work = Path(tempfile.mkdtemp(prefix="eo-demo-"))
    sidecar_targets = SidecarTargets(work / "sidecars.json")

    def start_sidecar(gpu: SimulatedGpu, pod: str, metrics_url: str) -> Callable[[], None]:
        settings = PowercapSettings(
            latency_target_s=slo_s,
            actuator=config.actuator,
            interval_s=2.0,
            settle_s=4.0,
            stale_after_s=30.0,
            state_dir=work / "powercap" / gpu.uuid,
            listen_address="127.0.0.1",
            port=0,
        )
        source = MetricsEndpointSource(
            metrics_url, "vllm:e2e_request_latency_seconds", config.latency_quantile, window_s=30.0
        )
        handle = start_powercap(settings, [gpu], source, pod=pod)
        sidecar_targets.add(pod, handle.port)

        def stop() -> None:
            sidecar_targets.remove(pod)
            handle.stop()

        return stop

    deployment = DemoDeployment(requests, server, gpus, NAMESPACE, WORKLOAD, MODEL, start_sidecar)
    rows: list[Row] = []
    alerts_seen: set[str] = set()
    within = finished = 0
    with ExitStack() as stack:
        stack.callback(deployment.stop)
        alertmanager = Alertmanager().start()
        stack.callback(alertmanager.stop)
        rules = write_compressed_rules(work / "rules", config.rules_compression, min_window_s=4.0)
        exporter = start_exporter(
            ExporterSettings(
                listen_address="127.0.0.1",
                port=0,
                node_name="demo-node",
                gpu_backend="simulated",
                rapl_root=None,
                pod_attribution="on",
                pod_sample_interval_s=1.0,
                pod_metrics_timeout_s=0.5,
                pod_grace_period_s=20.0,
            ),
            backend=SimulatedBackend(gpus),
            pod_sources=(deployment, deployment),
        )
        stack.callback(exporter.stop)
        prom = Prometheus(
            scrape_interval_s=1.0,
            rule_files=rules,
            alertmanager_url=alertmanager.url,
            job_name="eo-exporter",
            extra_scrape_configs=[
                {"job_name": "eo-powercap", "file_sd_configs": [{"files": [str(sidecar_targets.path)]}]}
            ],
        )
        scaler = start_scaler(
            ScalerSettings(
                listen_address="127.0.0.1",
                port=0,
                metrics_address="127.0.0.1",
                metrics_port=0,
                prometheus=PrometheusAuth(url=prom.url),
                cache_ttl_s=2.0,
            )
        )
        stack.callback(scaler.stop)
        prom.targets = [f"127.0.0.1:{exporter.port}"]
        prom.extra_scrape_configs.append(
            {"job_name": "eo-scaler", "static_configs": [{"targets": [f"127.0.0.1:{scaler.metrics_port}"]}]}
        )
        prom.start()
        stack.callback(prom.stop)
        keda = KedaDriver(
            f"127.0.0.1:{scaler.port}",
            WORKLOAD,
            NAMESPACE,
            {
                "serverAddress": prom.url,
                "workload": WORKLOAD,
                "latencySloSeconds": f"{slo_s:g}",
                "latencyQuantile": f"{config.latency_quantile:g}",
                "replicaCapacityRps": f"{capacity:.3f}",
                "minReplicas": "0",
                "maxReplicas": str(config.gpus),
                "idleBeforeZeroSeconds": "60",
                "stabilizationWindowSeconds": "30",
                "capacityLookbackSeconds": "600",
                "stalenessSeconds": "30",
            },
            HpaConfig(
                min_replicas=0,
                max_replicas=config.gpus,
                sync_s=config.poll_interval_s,
                polling_s=config.poll_interval_s,
                cooldown_s=30.0,
                scale_down_window_s=30.0,
            ),
            initial_replicas=1,
            fallback_replicas=2,
        )
        stack.callback(keda.close)
        deployment.scale_to(1)
        start = time.monotonic()
        next_poll = start + config.poll_interval_s
        next_row = start + config.row_interval_s
        offered_since_row = 0
        max_desired = 1
        while (now := time.monotonic()) - start < config.duration_s:
            t = now - start
            stats = deployment.advance(t)
            offered_since_row += stats.arrivals
            finished += stats.finished
            within += sum(1 for lat in stats.latencies_s if lat <= slo_s)
            if now >= next_poll:
                poll = keda.poll(t)
                deployment.scale_to(poll.replicas)
                max_desired = max(max_desired, deployment.desired())
                next_poll += config.poll_interval_s
            if now >= next_row:
                phase = phase_at(config.phases, t)
                row = observe(prom, deployment, t, phase.name if phase else "end",
                              offered_since_row / config.row_interval_s)  # fmt: skip
                alerts_seen.update(row.alerts)
                rows.append(row)
                on_row(row)
                offered_since_row = 0
                next_row += config.row_interval_s
            time.sleep(0.2)
        energy = _scalar(prom, f"sum(increase(eo_gpu_energy_joules_total[{int(config.duration_s)}s]))")
        changes = _scalar(prom, "sum(eo_powercap_changes_total)")
        final_desired = deployment.desired()
        deployment.stop()  # stops every sidecar: each restores its GPU
        restored = all(g.power_limit_mw() == g.power_limit_default_mw() for g in gpus)
    return DemoResult(rows, slo_s, capacity, len(requests), finished, within, energy, changes, alerts_seen,
                      restored, max_desired, final_desired)  # fmt: skip


def plot(result: DemoResult, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 (heavy import, only when a plot is asked for)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    t = [r.t_s for r in result.rows]
    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    axes[0].plot(t, [r.offered_rps for r in result.rows], label="offered (trace replay)")
    axes[0].plot(t, [r.served_rps or math.nan for r in result.rows], label="served (Prometheus, rate)")
    axes[0].set_ylabel("requests/s")
    axes[1].step(t, [r.desired for r in result.rows], where="post", label="desired")
    axes[1].step(t, [r.ready for r in result.rows], where="post", label="ready")
    axes[1].set_ylabel("replicas")
    axes[2].plot(t, [r.gpu_power_w or math.nan for r in result.rows], label="GPU power (all GPUs)")
    axes[2].plot(t, [r.mean_cap_w or math.nan for r in result.rows], label="mean power cap per replica")
    axes[2].set_ylabel("watts")
    axes[3].plot(t, [r.latency_s or math.nan for r in result.rows], label="p95 end-to-end latency")
    axes[3].axhline(result.slo_s, color="red", linestyle="--", label=f"SLO {result.slo_s:g} s")
    axes[3].set_ylabel("seconds")
    axes[3].set_xlabel("demo time (s)")
    for ax in axes:
        ax.legend(loc="upper right", fontsize="small")
        ax.grid(alpha=0.3)
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
