"""``eo-powercap``: the power-cap sidecar's command line, derived from ``powercap.settings.Settings``
(every flag ``--some-flag`` is also ``EO_SOME_FLAG``).

Exit status: 0 after a clean stop with every GPU restored, 1 when a restore failed at stop (the state file
tells the next sidecar to restore), 2 when it refuses to start (bad configuration, no GPU, no
permission, GPU controlled by someone else).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Mapping, Sequence

from common.daemon import Cli, stop_on_signals
from common.logs import configure_logging
from devices.backends import open_backend
from devices.base import GpuUnavailable
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
CLI = Cli("eo-powercap", Settings, DESCRIPTION, StartupRefused)


def build_parser() -> argparse.ArgumentParser:
    """The command line, derived from ``Settings`` (``--help`` lists every flag and its variable)."""
    return CLI.parser()


def load_settings(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``argv`` over ``environ`` (default: the process's) over the defaults; a bad value
    raises ``StartupRefused`` naming the flag and its variable."""
    return CLI.load(argv, environ)


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
    try:
        backend = open_backend(settings.gpu_backend, settings.simulated_gpus, settings.simulated_unprivileged)
    except GpuUnavailable as exc:
        raise StartupRefused(str(exc)) from exc
    try:
        devices = select_devices(backend.devices(), wanted)
        events = build_events(settings)
        pod = f"{settings.pod_namespace}/{settings.pod_name}" if settings.pod_name else ""
        handle = start_powercap(settings, devices, source, events=events, pod=pod)
        stop = stop_on_signals(stop, log)
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
    return CLI.main(lambda: run(argv))
