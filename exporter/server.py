"""The exporter as a server you can start in-process: ``start_exporter(settings, ...) -> ExporterHandle``.

The CLI (``exporter.main``) and the demo both go through this factory; the demo passes its own
``SimulatedBackend`` so the power-cap sidecar and the exporter see the same simulated GPUs, and pod
attribution registers its collector through ``extra_collectors`` and reads GPU energy through
``handle.gpu_energy.read_energy_joules``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from common.metrics_server import MetricsServerHandle, serve_metrics
from devices.base import GpuBackend, GpuError
from devices.simulated import SimulatedBackend, SimulatedGpu
from exporter.collector import ExporterCollector, Source
from exporter.exposition import render
from exporter.gpu import GpuEnergyReader, GpuSource
from exporter.pods.collector import PodSource
from exporter.pods.sampler import AllocationSource, PodMetadataSource
from exporter.pods.settings import PodAttributionError, PodSettings, RaplPackageEnergy, build_pod_collector
from exporter.rapl import RaplSource, RaplZone, ReadText, discover_zones, read_sysfs
from exporter.redfish import RedfishClient, RedfishConfig, RedfishPoller, RedfishSource, read_secret
from exporter.settings import Settings
from exporter.simload import LoadPattern

log = logging.getLogger(__name__)


def simulated_backend(
    count: int,
    pattern: LoadPattern,
    clock: Callable[[], float] = time.monotonic,
    phase_spread: float = 1.0,
) -> SimulatedBackend:
    """``count`` simulated GPUs following ``pattern``, GPU i shifted by ``phase_spread * i / count``
    of a period (1.0 spreads them evenly, so their sum stays nearly flat; less makes it swing)."""
    start = clock()

    def load_for(index: int) -> Callable[[], float]:
        return lambda: pattern.batch_at(clock() - start, phase_spread * index / count)

    return SimulatedBackend([SimulatedGpu(i, load=load_for(i), clock=clock) for i in range(count)])


def backend_from_settings(settings: Settings) -> GpuBackend:
    if settings.gpu_backend == "simulated":
        return simulated_backend(settings.sim_gpus, settings.sim_load)
    from devices.nvml import NvmlBackend  # noqa: PLC0415 (pynvml only where NVML is used)

    return NvmlBackend()


def _redfish_config(settings: Settings) -> RedfishConfig:
    verify: bool | str = True
    if settings.redfish_ca_file is not None:
        verify = str(settings.redfish_ca_file)
    elif settings.redfish_insecure_skip_verify:
        verify = False
    assert settings.redfish_url is not None
    return RedfishConfig(
        url=settings.redfish_url,
        username=read_secret(settings.redfish_username_file),
        password=read_secret(settings.redfish_password_file),
        verify=verify,
        timeout_s=settings.redfish_timeout_s,
        interval_s=settings.redfish_interval_s,
        max_age_s=settings.redfish_max_age_s,
        chassis_id=settings.redfish_chassis_id,
    )


@dataclass
class ExporterHandle:
    """A running exporter. ``gpu_energy`` is the thread-safe GPU energy reader for pod attribution."""

    port: int
    registry: CollectorRegistry
    gpu_energy: GpuEnergyReader
    _server: MetricsServerHandle
    _on_stop: list[Callable[[], None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self._server.url

    def stop(self) -> None:
        self._server.stop()
        for fn in self._on_stop:
            fn()
        self._on_stop.clear()


def _start_pods(
    settings: Settings,
    energy: GpuEnergyReader,
    zones: Sequence[RaplZone],
    read_text: ReadText,
    pod_sources: tuple[AllocationSource, PodMetadataSource] | None,
    sources: list[Source],
) -> Callable[[], None] | None:
    """Start pod attribution when enabled; add its source; return its stop function."""
    pod_settings = PodSettings.from_exporter(settings)
    if pod_settings.attribution == "off" or (pod_sources is None and not pod_settings.enabled()):
        if pod_settings.attribution == "auto":
            log.info("no kubelet socket at %s: pod attribution is off", settings.kubelet_socket)
        return None
    packages = [(z.path, z.max_range_uj) for z in zones if z.domain == "package"]
    cpu_energy = RaplPackageEnergy(packages, read_text) if packages else None
    allocations, metadata = pod_sources if pod_sources is not None else (None, None)
    try:
        collector, sampler = build_pod_collector(
            pod_settings, energy.read_energy_joules, cpu_energy, allocations=allocations, metadata=metadata
        )
    except PodAttributionError:
        if pod_settings.attribution == "on":
            raise
        log.exception("pod attribution could not start; continuing without it")
        return None
    sources.append(PodSource(collector))
    return sampler.stop


def start_exporter(
    settings: Settings,
    backend: GpuBackend | None = None,
    registry: CollectorRegistry | None = None,
    extra_collectors: Sequence[Collector] = (),
    read_text: ReadText = read_sysfs,
    pod_sources: tuple[AllocationSource, PodMetadataSource] | None = None,
) -> ExporterHandle:
    """Build the sources from ``settings``, register them, and serve HTTP in a daemon thread.

    ``backend`` overrides ``settings.gpu_backend`` (the demo shares its SimulatedGpu objects);
    ``extra_collectors`` are registered on the same registry (pod attribution); ``read_text`` is the
    sysfs reader for RAPL (tests inject PermissionError there). ``pod_sources`` replaces the kubelet
    socket and the Kubernetes API as the pod attribution's inputs (the demo and tests); given, pod
    attribution is on unless ``--pod-attribution off``.
    """
    registry = registry if registry is not None else CollectorRegistry()
    gpu_backend = backend if backend is not None else backend_from_settings(settings)
    energy = GpuEnergyReader(gpu_backend, retry_interval_s=settings.gpu_retry_interval_s)
    try:
        energy.devices()  # open the backend now: static values are cached at start, errors logged early
    except GpuError as err:
        log.warning(
            "GPUs not available at start (retried every %.0f s): %s", settings.gpu_retry_interval_s, err
        )
    sources: list[Source] = [GpuSource(energy, settings.node_name)]
    on_stop: list[Callable[[], None]] = [gpu_backend.close]

    zones: list[RaplZone] = []
    if settings.rapl_root is not None:
        zones = discover_zones(settings.rapl_root, read_text)
        if zones:
            log.info("RAPL: %d zone(s) under %s", len(zones), settings.rapl_root)
            sources.append(RaplSource(zones, settings.node_name, read_text))
        else:
            log.info("no RAPL zones under %s: CPU energy is not published", settings.rapl_root)

    if settings.redfish_url is not None:
        config = _redfish_config(settings)
        if config.verify is False:
            log.warning("Redfish TLS certificate verification is OFF (--redfish-insecure-skip-verify)")
        client = RedfishClient(config)
        poller = RedfishPoller(client.read_power, config.interval_s).start()
        sources.append(RedfishSource(poller, settings.node_name, config.max_age_s))
        on_stop[:0] = [poller.stop, client.close]

    pod_stop = _start_pods(settings, energy, zones, read_text, pod_sources, sources)
    if pod_stop is not None:
        on_stop.insert(0, pod_stop)

    collector = ExporterCollector(sources)
    registry.register(collector)
    for extra in extra_collectors:
        registry.register(extra)

    def health() -> tuple[bool, dict[str, object]]:
        # Liveness: the process serves; a failing source shows in its up gauge, not here.
        return True, {"status": "ok", "collectors": [s.name for s in sources]}

    server = serve_metrics(
        lambda: render(registry),  # the exporter's cached renderer, not generate_latest
        health,
        address=settings.listen_address,
        port=settings.port,
        name="eo-exporter",
    )
    log.info("eo-exporter serving /metrics on %s:%d", settings.listen_address, server.port)
    return ExporterHandle(server.port, registry, energy, server, on_stop)
