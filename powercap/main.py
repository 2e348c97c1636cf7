"""``eo-powercap``: the power-cap sidecar's command line, derived from ``powercap.settings.Settings``
(every flag ``--some-flag`` is also ``EO_SOME_FLAG``).

Exit status: 0 after a clean stop with every GPU restored, 1 when a restore failed at stop (the state file
tells the next sidecar to restore), 2 when it refuses to start (bad configuration, no GPU, no
permission, GPU controlled by someone else).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType

from common.logs import configure_logging
from common.settings import SettingsError, load
from common.settings import build_parser as settings_parser
from devices.base import GpuBackend, GpuError
from devices.simulated import SimulatedBackend, SimulatedGpu
from powercap.events import EventSink, KubernetesEventSink, NullEventSink, PodRef, in_cluster_api_url
from powercap.latency import LatencySource, MetricsEndpointSource, PrometheusSource
from powercap.selection import read_uuids_file, select_devices, visible_uuids
from powercap.settings import Settings, StartupRefused
from powercap.sidecar import start_powercap

log = logging.getLogger(__name__)


DESCRIPTION = (
    "Power-cap sidecar: lowers the GPU power limit (or the highest SM clock) while the inference "
    "server's latency is comfortably under its target, raises it when headroom shrinks and at once "
    "on an SLO breach, and restores the original on exit, on stale metrics and on GPU errors. "
    "Run it with --dry-run first: it then only publishes what it would set."
)
EPILOG = "Every flag --some-flag is also the variable EO_SOME_FLAG; a flag wins over its variable."


def build_parser() -> argparse.ArgumentParser:
    """The command line, derived from ``Settings`` (``--help`` lists every flag and its variable)."""
    return settings_parser(Settings, "eo-powercap", DESCRIPTION, EPILOG)


def load_settings(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``argv`` over ``environ`` (default: the process's) over the defaults; a bad value
    raises ``StartupRefused`` naming the flag and its variable."""
    try:
        return load(
            Settings, argv, prog="eo-powercap", description=DESCRIPTION, epilog=EPILOG, environ=environ
        )
    except SettingsError as exc:
        raise StartupRefused(str(exc)) from None


def build_source(s: Settings) -> LatencySource:
    if s.latency_source == "prometheus":
        query, load_query = s.prometheus_queries
        return PrometheusSource(
            s.prometheus_url, query, load_query, s.prometheus_deadline_s, s.prometheus_bearer_token_file
        )
    metric, scale = s.latency_histogram
    return MetricsEndpointSource(
        s.metrics_url,
        metric,
        s.latency_quantile,
        s.latency_window_s,
        scale,
        s.latency_labels,
        s.scrape_deadline_s,
    )


def open_backend(s: Settings) -> GpuBackend:
    if s.gpu_backend == "simulated":
        gpus = [SimulatedGpu(i, privileged=not s.simulated_unprivileged) for i in range(s.simulated_gpus)]
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


def build_events(s: Settings) -> EventSink:
    url = s.kube_api_url or in_cluster_api_url()
    if s.kube_events == "off" or (s.kube_events == "auto" and url is None):
        return NullEventSink()
    if url is None or not s.pod_name or not s.pod_namespace:
        if s.kube_events == "auto":
            log.warning("Kubernetes Events off: --pod-name and --pod-namespace (downward API) are not set")
            return NullEventSink()
        raise StartupRefused(
            "--kube-events on needs --kube-api-url (or in-cluster), --pod-name, --pod-namespace"
        )
    pod = PodRef(s.pod_name, s.pod_namespace, s.pod_uid, s.node_name)
    return KubernetesEventSink(url, pod, s.kube_token_file, s.kube_ca_file)


def run(argv: Sequence[str] | None = None, stop: threading.Event | None = None) -> int:
    settings = load_settings(argv)
    configure_logging(settings.log_format, settings.log_level)
    explicit = settings.gpu_uuids
    if settings.gpu_uuids_file is not None and not explicit.strip():
        explicit = read_uuids_file(settings.gpu_uuids_file, settings.gpu_uuids_wait_s, stop)
    wanted = visible_uuids(explicit, dict(os.environ))
    source = build_source(settings)
    backend = open_backend(settings)
    try:
        devices = select_devices(backend.devices(), wanted)
        events = build_events(settings)
        pod = f"{settings.pod_namespace}/{settings.pod_name}" if settings.pod_name else ""
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
            "(dry-run) " if settings.dry_run else "(through the node agent) " if settings.via_agent else "",
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
