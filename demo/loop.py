"""`make demo`: the whole loop, live, on simulated GPUs with a real Prometheus and Alertmanager.

Started here, in one process: the exporter (simulated GPUs, pod attribution) and its node agent, eo-scaler,
a KEDA/HPA driver polling it over gRPC, a Deployment of simulated vLLM replicas whose load replays a real
trace, one eo-powercap sidecar per replica (unprivileged: it asks the node agent, which alone sets the
GPUs, as in the default manifests; moving clocks, it runs the clock governor with TTFT and ITL targets
and the cold-start bridge read from eo-scaler's series in Prometheus), and a webhook receiver to which
Alertmanager delivers the alerts.
Started as processes: Prometheus (with the project's rules, time-compressed) and Alertmanager.
Everything stops on the way out, Ctrl-C included.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.settings import from_values
from demo.alert_receiver import DeliveredAlert, WebhookReceiver
from demo.inference import Gateway
from demo.keda import KedaDriver
from demo.prometheus import Alertmanager, Prometheus
from demo.report import DemoResult, Row, decisions_line
from demo.rules import write_compressed_rules
from demo.schedule import Phase, phase_at, schedule_requests
from demo.world import DemoDeployment, StartedSidecar
from devices.base import GpuDevice
from devices.simulated import SimulatedBackend, SimulatedGpu
from exporter.server import start_exporter
from exporter.settings import Settings as ExporterSettings
from gpumodel import H100_LLAMA_8B
from nodeagent.agent import start_node_agent
from nodeagent.settings import Settings as AgentSettings
from powercap.latency import MetricsEndpointSource
from powercap.settings import Settings as PowercapSettings
from powercap.sidecar import start_powercap
from scaler.server import start_scaler
from scaler.settings import ScalerSettings
from sim.keda import HpaConfig
from sim.scenario import default_itl_slo_s, default_slo_s, default_ttft_slo_s, load_test_capacity
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
    poll_interval_s: float = 2.5
    """KEDA's pollingInterval and the HPA's sync period (30 s and 15 s on a cluster), compressed too."""
    latency_quantile: float = 0.95
    slo_s: float | None = 15.0
    """p95 end-to-end latency target. 15 s, not the simulator's default of twice the unloaded p99 (10 s):
    vLLM's latency buckets jump from 5 to 10 s, and a target at a bucket bound leaves no readable slack."""
    sidecar_target_ratio: float = 0.8
    """Sidecars aim at this share of the SLO, leaving the scaler room (as in the simulator)."""
    idle_before_zero_s: float = 60.0
    """The scaler's ``idleBeforeZeroSeconds`` (its smallest allowed value)."""
    capacity_rps: float | None = None
    actuator: str = "power"
    ttft_slo_s: float | None = None
    """The sidecars' clock governor holds this TTFT at ``latency_quantile`` (default: the simulator's
    SLO, twice the unloaded p99); with ``actuator="clocks"`` only (the governor moves clocks)."""
    itl_slo_s: float | None = None
    """Likewise for the inter-token latency (each request's mean time per output token)."""
    row_interval_s: float = 5.0
    out_dir: Path = Path("out")

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)


def latency_kpi(quantile: float) -> str:
    """The workload's latency quantile from the recording rules (time-compressed in the demo)."""
    return (
        "namespace_workload_quantile:eo_pod_request_latency_seconds:histogram_quantile_rate5m"
        f'{{namespace="{NAMESPACE}",workload="{WORKLOAD}",quantile="{quantile:g}"}}'
    )


def _scalar(prom: Prometheus, promql: str) -> float | None:
    try:
        result = prom.query(promql)
    except (OSError, RuntimeError):
        return None
    values = [float(r["value"][1]) for r in result]
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) if finite else None


def scaler_decision_counts(prom: Prometheus) -> dict[str, int]:
    """eo-scaler's decisions by reason over the run (``eo_scaler_decisions_total``, scraped by the
    demo's Prometheus; the scaler started with the run, so its counters are the run's); empty when
    Prometheus cannot answer."""
    try:
        result = prom.query("sum by (reason) (eo_scaler_decisions_total)")
    except (OSError, RuntimeError):
        return {}
    counts: dict[str, int] = {}
    for r in result:
        value = float(r["value"][1])
        if math.isfinite(value) and value > 0:
            counts[r["metric"].get("reason", "")] = int(value)
    return counts


def observe(
    prom: Prometheus,
    deployment: DemoDeployment,
    t_s: float,
    phase: str,
    offered: float,
    slo_s: float,
    actuator: str,
    quantile: float,
) -> Row:
    """One row of the live table: what Prometheus and the GPUs say now."""
    sel = f'{{namespace="{NAMESPACE}",workload="{WORKLOAD}"}}'
    pods = deployment.pods()
    if actuator == "clocks":
        settings = [float(p.gpu.locked_sm_clock_mhz or p.gpu.max_sm_clock_mhz()) for p in pods]
    else:
        settings = [p.gpu.power_limit_mw() / 1000 for p in pods]
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
        latency_s=_scalar(prom, latency_kpi(quantile)),
        mean_setting=sum(settings) / len(settings) if settings else None,
        slo_s=slo_s,
        alerts=firing,
    )


def decision_counts(registry: Any) -> Counter[str]:
    """One sidecar's ``eo_powercap_decisions_total`` by reason."""
    counts: Counter[str] = Counter()
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "eo_powercap_decisions_total":
                counts[sample.labels["reason"]] += int(sample.value)
    return counts


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


def setting_changes(gpu: SimulatedGpu) -> int:
    """The sidecars' moves on one GPU: clock locks and resets, and power limits that changed the limit
    (the sidecar's start-up permission probe re-writes the limit in force; that is not a move)."""
    count, limit_mw = 0, gpu.power_limit_default_mw()
    for what, value in gpu.set_calls:
        if what != "power_limit_mw" or value != limit_mw:
            count += 1
        if what == "power_limit_mw":
            limit_mw = value
    return count


def scaler_metadata(
    config: DemoConfig, slo_s: float, capacity_rps: float, prometheus_url: str
) -> dict[str, str]:
    """The ScaledObject trigger's metadata, as a user would write it for this deployment.

    Two custom queries stand in for what a cluster has: the latency quantile reads the (time-compressed)
    recording rule, so the scaler's view of latency moves as fast as the demo's; demand comes from the
    gateway's arrival counter, the only signal while replicas are saturated or at zero.
    """
    window = f"{max(2, round(config.poll_interval_s * 2))}s"
    return {
        "serverAddress": prometheus_url,
        "workload": WORKLOAD,
        "latencySloSeconds": f"{slo_s:g}",
        "latencyQuantile": f"{config.latency_quantile:g}",
        "latencyQuery": latency_kpi(config.latency_quantile),
        "activationQuery": (
            f'sum(rate(gateway_requests_total{{namespace="{NAMESPACE}",service="{WORKLOAD}"}}[{window}]))'
        ),
        "replicaCapacityRps": f"{capacity_rps:.3f}",
        # The schedule steps the load up 2-4x within seconds (real traffic takes minutes): plan for 75% of
        # capacity rather than the default 90%, so a step is absorbed while the next replica starts.
        "targetUtilization": "0.75",
        "minReplicas": "0",
        "maxReplicas": str(config.gpus),
        "idleBeforeZeroSeconds": f"{config.idle_before_zero_s:g}",
        "stabilizationWindowSeconds": "15",
        "breachSettleSeconds": "15",
        "stalenessSeconds": "30",
    }


def run_demo(
    config: DemoConfig,
    on_row: Callable[[Row], None] = lambda _row: None,
    on_alert: Callable[[DeliveredAlert], None] = lambda _alert: None,
) -> DemoResult:
    """Run the loop for ``config.duration_s`` seconds and return what happened; ``on_alert`` sees each
    alert Alertmanager delivers to the demo's webhook receiver, as it arrives."""
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
    governed: dict[str, Any] = {}
    if config.actuator == "clocks":
        # The clock governor with the simulator's TTFT and ITL SLOs (whole: the TTFT one sits on a vLLM
        # bucket bound, where the share of misses reads exactly; a share of it would be interpolated),
        # at the demo's quantile; the bridge reads eo-scaler's decision for this workload from Prometheus.
        governed = {
            "ttft_target_s": config.ttft_slo_s or default_ttft_slo_s(trace, server),
            "itl_target_s": config.itl_slo_s or default_itl_slo_s(trace, server),
            "target_quantile": config.latency_quantile,
            "workload": WORKLOAD,
            "pod_namespace": NAMESPACE,
            "prometheus_timeout_s": 1.0,
        }
        log.info("sidecars govern clocks: TTFT %.3f s, ITL %.3f s at p%g", governed["ttft_target_s"],
                 governed["itl_target_s"], config.latency_quantile * 100)  # fmt: skip
    prometheus_url: dict[str, str] = {}
    decisions: Counter[str] = Counter()
    decisions_lock = threading.Lock()

    def start_sidecar(gpu: GpuDevice, pod: str, metrics_url: str) -> StartedSidecar:
        # environ={}: the demo's sidecars take exactly these settings, whatever EO_* the shell holds.
        settings = from_values(
            PowercapSettings,
            {
                "latency_target_s": slo_s * config.sidecar_target_ratio,
                "actuator": config.actuator,
                "apply_via": "agent",
                "interval_s": 2.0,
                "settle_s": 4.0,
                "stale_after_s": 30.0,
                "state_dir": work / "powercap" / gpu.uuid,
                "listen_address": "127.0.0.1",
                "port": 0,
                "metrics_url": metrics_url,
                "latency_window_s": 20.0,
                # The demo's phases last about a minute: a TTFT history of the production 300 s
                # spans the whole run, and entries from a busier phase, scaled by the window's load
                # and not their own, held clocks high after each fall (522 kJ vs 485 kJ at 20 s).
                "ttft_history_s": 20.0,
                **governed,
                **({"prometheus_url": prometheus_url["url"]} if governed and prometheus_url else {}),
            },
            environ={},
        )
        source = MetricsEndpointSource(
            metrics_url, "vllm:e2e_request_latency_seconds", config.latency_quantile, window_s=20.0
        )
        handle = start_powercap(settings, [gpu], source, pod=pod)
        sidecar_targets.add(pod, handle.port)

        def stop() -> None:
            sidecar_targets.remove(pod)
            handle.stop()
            with decisions_lock:
                decisions.update(decision_counts(handle.sidecar.metrics.registry))

        return StartedSidecar(stop, handle.port)

    deployment = DemoDeployment(requests, server, gpus, NAMESPACE, WORKLOAD, MODEL, start_sidecar)
    rows: list[Row] = []
    alerts_seen: set[str] = set()
    finished = 0
    # Arrival phase -> (finished, within the SLO), in the schedule's order.
    by_phase: dict[str, tuple[int, int]] = {phase.name: (0, 0) for phase in config.phases}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)  # last: after the sidecars have restored
        stack.callback(deployment.stop)
        gateway = Gateway(NAMESPACE, WORKLOAD)
        stack.callback(gateway.stop)
        receiver = WebhookReceiver(on_alert)
        stack.callback(receiver.stop)
        alertmanager = Alertmanager(webhook_url=receiver.url).start()
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
        # The node agent beside the exporter, as in the DaemonSet: the only writer of the GPUs. Its
        # kubelet and pod cache are the deployment, as for the exporter's pod attribution.
        agent = start_node_agent(
            from_values(
                AgentSettings,
                {
                    "namespaces": NAMESPACE,
                    "node_name": "demo-node",
                    "listen_address": "127.0.0.1",
                    "port": 0,
                    "poll_interval_s": 1.0,
                    "stale_after_s": 10.0,
                    "min_change_interval_s": 1.0,
                    "state_dir": work / "node-agent",
                },
                environ={},
            ),
            gpus,
            deployment,
            deployment,
        )
        stack.callback(agent.stop)
        prom = Prometheus(
            targets=[f"127.0.0.1:{exporter.port}"],
            scrape_interval_s=1.0,
            rule_files=rules,
            alertmanager_url=alertmanager.url,
            job_name="eo-exporter",
        )
        scaler = start_scaler(
            ScalerSettings(
                listen_address="127.0.0.1",
                port=0,
                metrics_address="127.0.0.1",
                metrics_port=0,
                prometheus_url=prom.url,
                cache_ttl_s=2.0,
            )
        )
        stack.callback(scaler.stop)
        prom.extra_scrape_configs = [
            {"job_name": "eo-powercap", "file_sd_configs": [{"files": [str(sidecar_targets.path)]}]},
            {"job_name": "eo-scaler", "static_configs": [{"targets": [f"127.0.0.1:{scaler.metrics_port}"]}]},
            {"job_name": "eo-node-agent", "static_configs": [{"targets": [f"127.0.0.1:{agent.port}"]}]},
            {"job_name": "gateway", "static_configs": [{"targets": [f"127.0.0.1:{gateway.port}"]}]},
        ]
        prom.start()
        stack.callback(prom.stop)
        prometheus_url["url"] = prom.url
        keda = KedaDriver(
            f"127.0.0.1:{scaler.port}",
            WORKLOAD,
            NAMESPACE,
            scaler_metadata(config, slo_s, capacity, prom.url),
            HpaConfig(
                min_replicas=0,
                max_replicas=config.gpus,
                sync_s=config.poll_interval_s,
                polling_s=config.poll_interval_s,
                cooldown_s=20.0,
                scale_down_window_s=15.0,
            ),
            initial_replicas=1,
            fallback_replicas=2,
        )
        stack.callback(keda.close)
        deployment.scale_to(1, warm=True)
        start = time.monotonic()
        next_poll = start + config.poll_interval_s
        next_row = start + config.row_interval_s
        offered_since_row = 0
        max_desired = 1
        while (now := time.monotonic()) - start < config.duration_s:
            t = now - start
            stats = deployment.advance(t)
            gateway.arrived(stats.arrivals)
            offered_since_row += stats.arrivals
            finished += stats.finished
            for arrival_s, latency_s in stats.latencies_s:
                arrived_in = phase_at(config.phases, arrival_s)
                name = arrived_in.name if arrived_in else "end"
                served, held = by_phase.get(name, (0, 0))
                by_phase[name] = (served + 1, held + (latency_s <= slo_s))
            if now >= next_poll:
                poll = keda.poll(t)
                deployment.scale_to(poll.replicas)
                max_desired = max(max_desired, deployment.desired())
                next_poll += config.poll_interval_s
            if now >= next_row:
                phase = phase_at(config.phases, t)
                offered = offered_since_row / config.row_interval_s
                name = phase.name if phase else "end"
                row = observe(
                    prom, deployment, t, name, offered, slo_s, config.actuator, config.latency_quantile
                )
                alerts_seen.update(row.alerts)
                rows.append(row)
                on_row(row)
                offered_since_row = 0
                next_row += config.row_interval_s
            time.sleep(0.2)
        energy = _scalar(prom, f"sum(increase(eo_gpu_energy_joules_total[{int(config.duration_s)}s]))")
        sidecars_seen = _scalar(
            prom, f'count(max_over_time(up{{job="eo-powercap"}}[{int(config.duration_s)}s]))'
        )
        log.info("Prometheus scraped %s sidecars over the run", sidecars_seen)
        scaler_decisions = scaler_decision_counts(prom)
        log.info("scaler decisions by reason over the run: %s", decisions_line(scaler_decisions))
        final_desired = deployment.desired()
        delivered = receiver.delivered()
        deployment.stop()  # stops every sidecar and removes every pod
        agent.stop()  # restores every GPU it still holds (pods gone: it would at its next cycle anyway)
        # Every setting the sidecars made, restores included, as the simulated GPUs recorded them.
        changes = sum(setting_changes(g) for g in gpus)
        restored = all(
            g.power_limit_mw() == g.power_limit_default_mw() and g.locked_sm_clock_mhz is None for g in gpus
        )
        log.info("sidecar decisions by reason over the run: %s", decisions_line(decisions))
    return DemoResult(rows, slo_s, capacity, len(requests), finished, energy, changes, alerts_seen,
                      restored, max_desired, final_desired, config.actuator, by_phase,
                      alerts_delivered={a.name for a in delivered if a.status == "firing"},
                      decisions=dict(decisions), scaler_decisions=scaler_decisions)  # fmt: skip
