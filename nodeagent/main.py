"""``eo-node-agent``: the command line, derived from ``nodeagent.settings.Settings`` (every flag
``--some-flag`` is also ``EO_SOME_FLAG``).

Exit status: 0 after a clean stop with every GPU restored, 1 when a restore failed at stop (the state file
tells the next run to restore), 2 when it refuses to start (bad configuration, no GPU, no permission,
no Kubernetes API to read the pods from, an unreadable state file).
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Mapping, Sequence

from common.daemon import Cli, stop_on_signals
from common.kube import KubeClient, KubeConfig, KubeError, in_cluster_config
from common.logs import configure_logging
from devices.backends import open_backend
from devices.base import GpuUnavailable
from exporter.pods.kube import KubePodCache
from exporter.pods.kubelet import PodResourcesClient
from nodeagent.agent import start_node_agent
from nodeagent.events import KubernetesPodEvents, NullPodEvents, PodEvents
from nodeagent.settings import Settings, StartupRefused

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Node agent for the power-cap sidecars: reads the setpoint each opted-in sidecar requests on its "
    "/metrics, applies it only to the GPUs the kubelet gives that pod, within the GPU's range and the "
    "operator's bounds, and restores each GPU when the pod is gone, its request goes stale, at start for "
    "what a killed run left, and on SIGTERM. The sidecars then need no privilege."
)
POD_CACHE_SYNC_S = 10.0
CLI = Cli("eo-node-agent", Settings, DESCRIPTION, StartupRefused)


def build_parser() -> argparse.ArgumentParser:
    return CLI.parser()


def load_settings(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> Settings:
    return CLI.load(argv, environ)


def kube_config(s: Settings) -> KubeConfig:
    if s.kube_api_url:
        return KubeConfig(
            server=s.kube_api_url,
            source=f"--kube-api-url {s.kube_api_url}",
            token_file=s.kube_token_file if s.kube_token_file.is_file() else None,
            ca_file=s.kube_ca_file if s.kube_ca_file.is_file() else None,
        )
    try:
        return in_cluster_config()
    except KubeError as exc:
        raise StartupRefused(
            f"the agent reads the pods' opt-in annotation and IP from the Kubernetes API: {exc} "
            "(give --kube-api-url outside a cluster)"
        ) from exc


def build_events(s: Settings, config: KubeConfig) -> PodEvents:
    if s.kube_events == "off":
        return NullPodEvents()
    return KubernetesPodEvents(
        KubeClient(config, deadline_s=2.0, max_body_bytes=256 * 1024, pool_maxsize=1), s.node_name
    )


def run(argv: Sequence[str] | None = None, stop: threading.Event | None = None) -> int:
    settings = load_settings(argv)
    configure_logging(settings.log_format, settings.log_level)
    if not settings.node_name:
        raise StartupRefused("--node-name / EO_NODE_NAME is required (downward API spec.nodeName)")
    config = kube_config(settings)
    try:
        backend = open_backend(settings.gpu_backend, settings.simulated_gpus, settings.simulated_unprivileged)
    except GpuUnavailable as exc:
        raise StartupRefused(str(exc)) from exc
    kubelet = PodResourcesClient(settings.kubelet_socket, settings.kubelet_timeout_s)
    pods = KubePodCache(KubeClient(config), settings.node_name).start()
    try:
        if not pods.wait_synced(POD_CACHE_SYNC_S):
            log.warning("pod cache not synced after %.0f s; requests are read once it is", POD_CACHE_SYNC_S)
        events = build_events(settings, config)
        handle = start_node_agent(settings, backend.devices(), kubelet, pods, events=events)
        stop = stop_on_signals(stop, log)
        log.info(
            "eo-node-agent on %d GPUs of %s, serving :%d, honouring namespaces %s, state in %s",
            len(handle.agent.gpus.devices),
            settings.node_name,
            handle.port,
            ", ".join(settings.namespaces) or "(none)",
            settings.state_dir,
        )
        stop.wait()
        return 0 if handle.stop() else 1
    finally:
        pods.stop()
        kubelet.close()
        backend.close()


def main(argv: Sequence[str] | None = None) -> int:
    return CLI.main(lambda: run(argv))
