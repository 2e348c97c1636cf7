"""``eo-node-agent``: the command line, derived from ``nodeagent.settings.Settings`` (every flag
``--some-flag`` is also ``EO_SOME_FLAG``).

Exit status: 0 after a clean stop with every GPU restored, 1 when a restore failed at stop (the state file
tells the next run to restore), 2 when it refuses to start (bad configuration, no GPU, no permission,
no Kubernetes API to read the pods from, an unreadable state file).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType

from common.kube import KubeClient, KubeConfig, KubeError, in_cluster_config
from common.logs import configure_logging
from common.settings import SettingsError, load
from common.settings import build_parser as settings_parser
from devices.base import GpuBackend, GpuError
from devices.simulated import SimulatedBackend, SimulatedGpu
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
EPILOG = "Every flag --some-flag is also the variable EO_SOME_FLAG; a flag wins over its variable."
POD_CACHE_SYNC_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    return settings_parser(Settings, "eo-node-agent", DESCRIPTION, EPILOG)


def load_settings(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> Settings:
    try:
        return load(
            Settings, argv, prog="eo-node-agent", description=DESCRIPTION, epilog=EPILOG, environ=environ
        )
    except SettingsError as exc:
        raise StartupRefused(str(exc)) from None


def open_backend(s: Settings) -> GpuBackend:
    if s.gpu_backend == "simulated":
        return SimulatedBackend(
            [SimulatedGpu(i, privileged=not s.simulated_unprivileged) for i in range(s.simulated_gpus)]
        )
    try:
        nvml = importlib.import_module("devices.nvml")
        backend: GpuBackend = nvml.NvmlBackend()
    except (ImportError, AttributeError) as exc:
        raise StartupRefused(f"the NVML backend is not available in this build: {exc}") from exc
    except GpuError as exc:
        raise StartupRefused(f"cannot use NVML (driver or GPU missing?): {exc}") from exc
    return backend


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
    backend = open_backend(settings)
    kubelet = PodResourcesClient(settings.kubelet_socket, settings.kubelet_timeout_s)
    pods = KubePodCache(KubeClient(config), settings.node_name).start()
    try:
        if not pods.wait_synced(POD_CACHE_SYNC_S):
            log.warning("pod cache not synced after %.0f s; requests are read once it is", POD_CACHE_SYNC_S)
        events = build_events(settings, config)
        handle = start_node_agent(settings, backend.devices(), kubelet, pods, events=events)
        stop = stop or threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %s: restoring the GPUs and stopping", signal.Signals(signum).name)
            stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
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
    try:
        return run(argv)
    except StartupRefused as exc:
        print(f"eo-node-agent: refusing to start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"eo-node-agent: refusing to start: {exc}", file=sys.stderr)
        return 2
