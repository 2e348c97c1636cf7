"""``eo-powercap``: the power-cap sidecar's command line. Every flag ``--some-flag`` is also ``EO_SOME_FLAG``.

Exit status: 0 after a clean stop with every GPU restored, 1 when a restore failed at stop (the state file
tells the next sidecar to restore), 2 when it refuses to start (bad configuration, no GPU, no
permission, GPU controlled by someone else).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from devices.base import GpuBackend, GpuError
from devices.simulated import SimulatedBackend, SimulatedGpu
from powercap.events import EventSink, KubernetesEventSink, NullEventSink, PodRef, in_cluster_api_url
from powercap.latency import (
    LATENCY_KINDS,
    SERVERS,
    LatencySource,
    MetricsEndpointSource,
    PrometheusSource,
    preset,
)
from powercap.selection import read_uuids_file, select_devices, visible_uuids
from powercap.settings import DEFAULT_STATE_DIR, Settings, StartupRefused
from powercap.sidecar import start_powercap

log = logging.getLogger(__name__)


def _add(group: argparse._ActionsContainer, flag: str, help: str, **kwargs: Any) -> None:
    """A flag whose default comes from ``EO_<FLAG>`` (argparse converts and checks string defaults)."""
    env = "EO_" + flag.lstrip("-").upper().replace("-", "_")
    if kwargs.get("action") == "store_true":
        kwargs["default"] = os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on")
    elif env in os.environ:
        kwargs["default"] = os.environ[env]
    default = kwargs.get("default")
    shown = f"; default {default}" if default not in (None, False, "") else ""
    group.add_argument(flag, help=f"{help} [env {env}{shown}]", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eo-powercap",
        description=(
            "Power-cap sidecar: lowers the GPU power limit (or the highest SM clock) while the inference "
            "server's latency is comfortably under its target, raises it when headroom shrinks and at once "
            "on an SLO breach, and restores the original on exit, on stale metrics and on GPU errors. "
            "Run it with --dry-run first: it then only publishes what it would set."
        ),
    )
    g = p.add_argument_group("GPUs")
    _add(
        g,
        "--gpu-backend",
        "GPU access: NVML, or simulated GPUs",
        choices=("nvml", "simulated"),
        default="nvml",
    )
    _add(g, "--gpu-uuids", "comma-separated GPU UUIDs to control (default: the visible GPUs)", default="")
    _add(
        g,
        "--gpu-uuids-file",
        "file holding the GPU UUIDs to control, written by the container that holds the GPUs (its "
        "NVIDIA_VISIBLE_DEVICES); waited for, then read once",
        default="",
    )
    _add(
        g,
        "--gpu-uuids-wait-seconds",
        "how long to wait for --gpu-uuids-file to appear before refusing to start",
        type=float,
        default=600.0,
    )
    _add(g, "--simulated-gpus", "number of simulated GPUs", type=int, default=1)
    _add(
        g,
        "--simulated-unprivileged",
        "simulated GPUs refuse setters as without CAP_SYS_ADMIN",
        action="store_true",
    )
    _add(
        g, "--actuator", "the power limit, or locked SM clocks", choices=("power", "clocks"), default="power"
    )
    _add(g, "--dry-run", "compute and publish what would be set; set nothing", action="store_true")
    lat = p.add_argument_group("latency")
    _add(lat, "--latency-target-seconds", "latency the quantile must stay under (required)", type=float)
    _add(lat, "--latency-quantile", "quantile held under the target, in (0, 1)", type=float, default=0.95)
    _add(lat, "--latency-window-seconds", "sliding window the quantile covers", type=float, default=60.0)
    _add(
        lat,
        "--latency-source",
        "where latency comes from",
        choices=("metrics", "prometheus"),
        default="metrics",
    )
    _add(lat, "--metrics-url", "the inference server's /metrics", default="http://127.0.0.1:8000/metrics")
    _add(lat, "--server", "inference server format (chooses the histogram)", choices=SERVERS, default="vllm")
    _add(
        lat, "--latency-kind", "e2e, time to first token or inter-token", choices=LATENCY_KINDS, default="e2e"
    )
    _add(lat, "--latency-metric", "histogram name, overriding --server/--latency-kind", default="")
    _add(lat, "--latency-scale", "factor from the histogram's unit to seconds (ms: 0.001)", type=float)
    _add(lat, "--latency-labels", "only series with these labels, e.g. model_name=llama", default="")
    _add(
        lat,
        "--scrape-timeout-seconds",
        "total deadline of one /metrics scrape (connect, headers, body); at most --interval-seconds",
        type=float,
        default=2.0,
    )
    _add(lat, "--prometheus-url", "Prometheus (or compatible) base URL", default="http://prometheus:9090")
    _add(
        lat,
        "--prometheus-query",
        "PromQL giving the latency in seconds (default: the pod's quantile)",
        default="",
    )
    _add(lat, "--prometheus-load-query", "PromQL giving requests per second (optional)", default="")
    _add(lat, "--prometheus-bearer-token-file", "bearer token file for Prometheus", default="")
    _add(
        lat,
        "--prometheus-timeout-seconds",
        "total deadline of one Prometheus read (latency and load queries together); at most "
        "--interval-seconds",
        type=float,
        default=5.0,
    )
    c = p.add_argument_group("controller (docs/powercap.md explains the tuning)")
    _add(c, "--interval-seconds", "control interval", type=float, default=5.0)
    _add(c, "--floor-watts", "lowest power limit (default: the GPU's minimum)", type=float)
    _add(c, "--ceiling-watts", "highest power limit (default: the original limit)", type=float)
    _add(c, "--max-step-watts", "largest step down per interval", type=float, default=25.0)
    _add(c, "--floor-sm-clock-mhz", "lowest SM clock cap (default: the GPU's lowest clock)", type=float)
    _add(c, "--ceiling-sm-clock-mhz", "highest SM clock cap (default: the GPU's maximum)", type=float)
    _add(c, "--max-step-mhz", "largest clock step down per interval", type=float, default=90.0)
    _add(c, "--lower-below-ratio", "lower while latency/target is below this", type=float, default=0.85)
    _add(c, "--raise-above-ratio", "raise when latency/target exceeds this", type=float, default=0.95)
    _add(
        c, "--raise-fraction", "share of the gap to the ceiling closed by one raise", type=float, default=0.5
    )
    _add(c, "--settle-seconds", "wait after a change before lowering again", type=float, default=30.0)
    _add(
        c,
        "--stale-after-seconds",
        "restore the original when latency data is older",
        type=float,
        default=30.0,
    )
    _add(
        c,
        "--thermal-margin-celsius",
        "lower when this close to the slowdown temperature",
        type=float,
        default=5.0,
    )
    _add(
        c,
        "--breach-memory-seconds",
        "stay above a setting that breached for this long",
        type=float,
        default=300.0,
    )
    _add(c, "--load-jump-ratio", "raise when load jumps by this ratio (0: off)", type=float, default=0.5)
    _add(c, "--error-backoff-seconds", "pause control of a GPU after an NVML error", type=float, default=60.0)
    st = p.add_argument_group("state, locks, serving")
    _add(
        st,
        "--state-dir",
        "node directory (hostPath) for the persisted originals",
        default=str(DEFAULT_STATE_DIR),
    )
    _add(
        st, "--lock-dir", "node directory (hostPath) for per-GPU locks (default: STATE_DIR/locks)", default=""
    )
    _add(st, "--listen-address", "address of /metrics and /healthz", default="0.0.0.0")
    _add(st, "--port", "port of /metrics and /healthz", type=int, default=9104)
    k = p.add_argument_group("Kubernetes")
    _add(k, "--pod-name", "this pod (downward API metadata.name)", default="")
    _add(k, "--pod-namespace", "this pod's namespace (downward API metadata.namespace)", default="")
    _add(k, "--pod-uid", "this pod's UID (downward API metadata.uid)", default="")
    _add(k, "--node-name", "this node (downward API spec.nodeName)", default="")
    _add(k, "--kube-events", "post an Event per change (auto: in a cluster)", choices=("auto", "on", "off"),
         default="auto")  # fmt: skip
    _add(k, "--kube-api-url", "API server URL (default: in-cluster)", default="")
    _add(
        k,
        "--kube-token-file",
        "service-account token",
        default="/var/run/secrets/kubernetes.io/serviceaccount/token",
    )
    _add(
        k,
        "--kube-ca-file",
        "API server CA bundle",
        default="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
    )
    lg = p.add_argument_group("logging")
    _add(lg, "--log-format", "log line format", choices=("text", "json"), default="text")
    _add(lg, "--log-level", "log level", choices=("debug", "info", "warning", "error"), default="info")
    return p


def settings_from_args(a: argparse.Namespace) -> Settings:
    if a.latency_target_seconds is None:
        raise StartupRefused("--latency-target-seconds (EO_LATENCY_TARGET_SECONDS) is required")
    if not 0 < a.latency_quantile < 1:
        raise StartupRefused(f"--latency-quantile: must be in (0, 1), got {a.latency_quantile}")
    if a.latency_window_seconds <= 0:
        raise StartupRefused(f"--latency-window-seconds: must be > 0, got {a.latency_window_seconds}")
    try:
        return Settings(
            latency_target_s=a.latency_target_seconds,
            actuator=a.actuator,
            dry_run=a.dry_run,
            interval_s=a.interval_seconds,
            floor_w=a.floor_watts,
            ceiling_w=a.ceiling_watts,
            max_step_w=a.max_step_watts,
            floor_mhz=a.floor_sm_clock_mhz,
            ceiling_mhz=a.ceiling_sm_clock_mhz,
            max_step_mhz=a.max_step_mhz,
            lower_below_ratio=a.lower_below_ratio,
            raise_above_ratio=a.raise_above_ratio,
            raise_fraction=a.raise_fraction,
            settle_s=a.settle_seconds,
            stale_after_s=a.stale_after_seconds,
            thermal_margin_c=a.thermal_margin_celsius,
            breach_memory_s=a.breach_memory_seconds,
            load_jump_ratio=a.load_jump_ratio,
            error_backoff_s=a.error_backoff_seconds,
            state_dir=Path(a.state_dir),
            lock_dir=Path(a.lock_dir) if a.lock_dir else None,
            listen_address=a.listen_address,
            port=a.port,
        )
    except ValueError as exc:
        raise StartupRefused(str(exc)) from exc


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise StartupRefused(f"--latency-labels: {part!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


def _read_deadline(flag: str, value: float, interval_s: float) -> float:
    """A latency read's total deadline: the flag's value, never longer than one control interval (a
    slow source then delays a tick by at most one interval; restoring never waits on it anyway)."""
    if not value > 0:
        raise StartupRefused(f"{flag}: must be > 0, got {value}")
    return min(value, interval_s)


def build_source(a: argparse.Namespace) -> LatencySource:
    if a.latency_source == "prometheus":
        query = a.prometheus_query
        if not query:
            if not a.pod_name or not a.pod_namespace:
                raise StartupRefused(
                    "--prometheus-query, or --pod-name and --pod-namespace for the default query"
                )
            sel = f'namespace="{a.pod_namespace}",pod="{a.pod_name}"'
            window = f"{int(a.latency_window_seconds)}s"
            query = (
                f"histogram_quantile({a.latency_quantile}, "
                f"sum by (le) (rate(eo_pod_request_latency_seconds_bucket{{{sel}}}[{window}])))"
            )
            a.prometheus_load_query = a.prometheus_load_query or (
                f"sum(rate(eo_pod_request_latency_seconds_count{{{sel}}}[{window}]))"
            )
        token = Path(a.prometheus_bearer_token_file) if a.prometheus_bearer_token_file else None
        deadline = _read_deadline(
            "--prometheus-timeout-seconds", a.prometheus_timeout_seconds, a.interval_seconds
        )
        return PrometheusSource(a.prometheus_url, query, a.prometheus_load_query or None, deadline, token)
    metric, scale = a.latency_metric, 1.0
    if not metric:
        try:
            metric, scale = preset(a.server, a.latency_kind)
        except ValueError as exc:
            raise StartupRefused(str(exc)) from exc
    if a.latency_scale is not None:
        if a.latency_scale <= 0:
            raise StartupRefused(f"--latency-scale: must be > 0, got {a.latency_scale}")
        scale = a.latency_scale
    return MetricsEndpointSource(
        a.metrics_url,
        metric,
        a.latency_quantile,
        a.latency_window_seconds,
        scale,
        _labels(a.latency_labels),
        _read_deadline("--scrape-timeout-seconds", a.scrape_timeout_seconds, a.interval_seconds),
    )


def open_backend(a: argparse.Namespace) -> GpuBackend:
    if a.gpu_backend == "simulated":
        gpus = [SimulatedGpu(i, privileged=not a.simulated_unprivileged) for i in range(a.simulated_gpus)]
        return SimulatedBackend(gpus)
    try:
        # Imported only when asked for: NVML needs the driver's library, the simulated path must not.
        nvml = importlib.import_module("devices.nvml")
        backend: GpuBackend = nvml.NvmlBackend()
    except (ImportError, AttributeError) as exc:
        raise StartupRefused(f"the NVML backend is not available in this build: {exc}") from exc
    except GpuError as exc:
        raise StartupRefused(f"cannot use NVML (driver or GPU missing?): {exc}") from exc
    return backend


def build_events(a: argparse.Namespace) -> EventSink:
    url = a.kube_api_url or in_cluster_api_url()
    if a.kube_events == "off" or (a.kube_events == "auto" and url is None):
        return NullEventSink()
    if url is None or not a.pod_name or not a.pod_namespace:
        if a.kube_events == "auto":
            log.warning("Kubernetes Events off: --pod-name and --pod-namespace (downward API) are not set")
            return NullEventSink()
        raise StartupRefused(
            "--kube-events on needs --kube-api-url (or in-cluster), --pod-name, --pod-namespace"
        )
    pod = PodRef(a.pod_name, a.pod_namespace, a.pod_uid, a.node_name)
    return KubernetesEventSink(url, pod, Path(a.kube_token_file), Path(a.kube_ca_file))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {"time": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name}
        body["message"] = record.getMessage()
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def run(argv: Sequence[str] | None = None, stop: threading.Event | None = None) -> int:
    a = build_parser().parse_args(argv)
    setup_logging(a.log_format, a.log_level)
    settings = settings_from_args(a)
    explicit = a.gpu_uuids
    if a.gpu_uuids_file and not explicit.strip():
        explicit = read_uuids_file(Path(a.gpu_uuids_file), a.gpu_uuids_wait_seconds, stop)
    wanted = visible_uuids(explicit, dict(os.environ))
    source = build_source(a)
    backend = open_backend(a)
    try:
        devices = select_devices(backend.devices(), wanted)
        events = build_events(a)
        pod = f"{a.pod_namespace}/{a.pod_name}" if a.pod_name else ""
        handle = start_powercap(settings, devices, source, events=events, pod=pod)
        stop = stop or threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %s: restoring the GPUs and stopping", signal.Signals(signum).name)
            stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        log.info(
            "eo-powercap %son %s, serving :%d, state in %s",
            "(dry-run) " if settings.dry_run else "",
            ", ".join(d.uuid for d in devices),
            handle.port,
            settings.state_dir,
        )
        stop.wait()
        return 0 if handle.stop() else 1
    finally:
        backend.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except StartupRefused as exc:
        print(f"eo-powercap: refusing to start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # State or lock directory not writable, and the like: a message, not a stack trace.
        print(f"eo-powercap: refusing to start: {exc}", file=sys.stderr)
        return 2
