"""Settings of the pod attribution, and ``build_pod_collector`` to assemble it from them.

eo-exporter's flags (``--pod-attribution``, ``--kubelet-socket``, ``--pod-sample-interval-seconds``,
``--pod-metrics-timeout-seconds``, ``--pod-metrics-max-bytes``, ``--pod-grace-period-seconds``,
``--kubeconfig``, ``--cgroup-root``, each also ``EO_*``) are declared once, on
``exporter.settings.Settings``, which takes their defaults from ``PodSettings`` below and checks its
invariants at start; ``PodSettings.from_exporter`` takes the values here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.pods.accounting import DEFAULT_GRACE_S, Accountant
from exporter.pods.cgroup import DEFAULT_CGROUP_ROOT, CgroupCpu
from exporter.pods.collector import PodCollector
from exporter.pods.devices import MigParent, no_mig_parents
from exporter.pods.kubelet import DEFAULT_SOCKET
from exporter.pods.sampler import AllocationSource, PodMetadataSource, PodSampler
from exporter.pods.scrape import DEFAULT_MAX_BODY_BYTES, AppReader

if TYPE_CHECKING:  # exporter.settings imports this module (for the defaults): no import at run time
    from exporter.settings import Settings

log = logging.getLogger(__name__)


class PodAttributionError(RuntimeError):
    """Pod attribution cannot start (no cluster credentials, bad kubeconfig); the message says why."""


@dataclass(frozen=True)
class PodSettings:
    """The pod attribution's inputs, with its defaults and the invariants its sampler relies on."""

    node_name: str
    attribution: str = "auto"
    kubelet_socket: str = DEFAULT_SOCKET
    sample_interval_s: float = 5.0
    metrics_timeout_s: float = 1.0
    metrics_max_bytes: int = DEFAULT_MAX_BODY_BYTES
    grace_period_s: float = DEFAULT_GRACE_S
    kubeconfig: str = ""
    cgroup_root: Path = DEFAULT_CGROUP_ROOT

    def __post_init__(self) -> None:
        if self.attribution not in ("auto", "on", "off"):
            raise ValueError(
                f"--pod-attribution / EO_POD_ATTRIBUTION must be auto, on or off, not {self.attribution!r}"
            )
        if self.metrics_timeout_s >= self.sample_interval_s:
            raise ValueError(
                "--pod-metrics-timeout-seconds / EO_POD_METRICS_TIMEOUT_SECONDS "
                f"({self.metrics_timeout_s}) must be below --pod-sample-interval-seconds "
                f"({self.sample_interval_s}): a sample's reads end before the next sample starts"
            )

    @classmethod
    def from_exporter(cls, s: Settings) -> PodSettings:
        """From eo-exporter's ``Settings``."""
        return cls(
            node_name=s.node_name,
            attribution=s.pod_attribution,
            kubelet_socket=str(s.kubelet_socket),
            sample_interval_s=s.pod_sample_interval_s,
            metrics_timeout_s=s.pod_metrics_timeout_s,
            metrics_max_bytes=s.pod_metrics_max_bytes,
            grace_period_s=s.pod_grace_period_s,
            kubeconfig=str(s.kubeconfig) if s.kubeconfig else "",
            cgroup_root=Path(s.cgroup_root),
        )

    def enabled(self) -> bool:
        if self.attribution == "auto":
            return Path(self.kubelet_socket).exists()
        return self.attribution == "on"


def kube_metadata(settings: PodSettings) -> PodMetadataSource:
    """The Kubernetes pod cache, started (in-cluster config or ``--kubeconfig``)."""
    from common.kube import KubeClient, KubeConfigError, load_config  # noqa: PLC0415 (only in a cluster)
    from exporter.pods.kube import KubePodCache  # noqa: PLC0415

    try:
        api = KubeClient(load_config(settings.kubeconfig or None))
    except KubeConfigError as exc:
        raise PodAttributionError(
            f"cannot reach the Kubernetes API: {exc} (set --kubeconfig / EO_KUBECONFIG, "
            "or --pod-attribution off)"
        ) from exc
    return KubePodCache(api, settings.node_name).start()


def build_pod_collector(
    settings: PodSettings,
    gpu_energy: Callable[[], Mapping[str, float]],
    cpu_energy: Callable[[], float] | None = None,
    *,
    allocations: AllocationSource | None = None,
    metadata: PodMetadataSource | None = None,
    mig_parent: MigParent = no_mig_parents,
) -> tuple[PodCollector, PodSampler]:
    """Assemble and start the sampler; return the collector to register and the sampler (to stop).

    ``allocations`` and ``metadata`` default to the kubelet socket and the Kubernetes API; the demo and
    tests inject their own.
    """
    if metadata is None:
        metadata = kube_metadata(settings)  # first: it is the part that can fail at start
    if allocations is None:
        from exporter.pods.kubelet import PodResourcesClient  # noqa: PLC0415

        allocations = PodResourcesClient(settings.kubelet_socket)
    cgroup = CgroupCpu(settings.cgroup_root)
    use_cpu = cpu_energy is not None and cgroup.available()
    if cpu_energy is not None and not use_cpu:
        log.info("no cgroup v2 kubepods hierarchy under %s: publishing only source=gpu", settings.cgroup_root)
    sampler = PodSampler(
        allocations,
        metadata,
        gpu_energy,
        AppReader(timeout_s=settings.metrics_timeout_s, max_body_bytes=settings.metrics_max_bytes),
        Accountant(settings.grace_period_s),
        cpu_energy=cpu_energy if use_cpu else None,
        cgroup=cgroup if use_cpu else None,
        mig_parent=mig_parent,
        interval_s=settings.sample_interval_s,
    ).start()
    collector = PodCollector(
        sampler, settings.node_name, max_age_s=3 * settings.sample_interval_s + settings.metrics_timeout_s
    )
    return collector, sampler


class RaplPackageEnergy:
    """Node CPU energy in joules: the sum of RAPL package zones, with counters of its own (the CPU
    collector's counters are advanced by scrapes; sharing them between two threads would race)."""

    def __init__(self, zones: Sequence[tuple[Path, int]], read_text: Callable[[Path], str]) -> None:
        from exporter.counters import WrappingCounter  # noqa: PLC0415

        self._zones = [(path, WrappingCounter(max_range)) for path, max_range in zones]
        self._read_text = read_text
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            total_uj = 0.0
            for path, counter in self._zones:
                total_uj += counter.update(int(self._read_text(path / "energy_uj").strip()))
            return total_uj / 1e6
