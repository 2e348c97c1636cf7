"""Settings of the pod attribution, and ``build_pod_collector`` to assemble it from them.

The flags are listed in ``POD_OPTIONS`` (flag, settings field, default, help), in the shape of
eo-exporter's option table; each flag ``--some-flag`` is also the variable ``EO_SOME_FLAG``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from exporter.pods.accounting import DEFAULT_GRACE_S, Accountant
from exporter.pods.cgroup import DEFAULT_CGROUP_ROOT, CgroupCpu
from exporter.pods.collector import PodCollector
from exporter.pods.devices import MigParent, no_mig_parents
from exporter.pods.kubelet import DEFAULT_SOCKET
from exporter.pods.sampler import AllocationSource, PodMetadataSource, PodSampler
from exporter.pods.scrape import AppReader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PodSettings:
    node_name: str
    attribution: str = "auto"
    kubelet_socket: str = DEFAULT_SOCKET
    sample_interval_s: float = 5.0
    metrics_timeout_s: float = 1.0
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
                f"--pod-metrics-timeout-seconds ({self.metrics_timeout_s}) must be below "
                f"--pod-sample-interval-seconds ({self.sample_interval_s})"
            )

    def enabled(self) -> bool:
        if self.attribution == "auto":
            return Path(self.kubelet_socket).exists()
        return self.attribution == "on"


# (flag, field, default text, help): the shape of eo-exporter's option table.
POD_OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    (
        "--pod-attribution",
        "pod_attribution",
        "auto",
        "pod attribution: auto (on when the kubelet socket exists), on, off",
    ),
    ("--kubelet-socket", "kubelet_socket", DEFAULT_SOCKET, "kubelet PodResources API unix socket"),
    (
        "--pod-sample-interval-seconds",
        "pod_sample_interval_s",
        "5",
        "seconds between pod samples (devices, app counters, energy)",
    ),
    (
        "--pod-metrics-timeout-seconds",
        "pod_metrics_timeout_s",
        "1",
        "one deadline for all inference-server reads of a sample",
    ),
    (
        "--pod-grace-period-seconds",
        "pod_grace_period_s",
        "300",
        "seconds a pod's series stay after it stops holding a GPU",
    ),
    ("--kubeconfig", "kubeconfig", "", "kubeconfig for the pod cache; empty: in-cluster service account"),
    (
        "--cgroup-root",
        "cgroup_root",
        str(DEFAULT_CGROUP_ROOT),
        "cgroup v2 mount point, for the pods' CPU energy share",
    ),
)


def kube_metadata(settings: PodSettings) -> PodMetadataSource:
    """The Kubernetes pod cache, started (in-cluster config or ``--kubeconfig``)."""
    from kubernetes import client, config  # noqa: PLC0415 (only when the cluster is used)

    from exporter.pods.kube import KubePodCache  # noqa: PLC0415

    configuration = client.Configuration()
    if settings.kubeconfig:
        config.load_kube_config(config_file=settings.kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return KubePodCache(client.ApiClient(configuration), settings.node_name).start()


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
    if allocations is None:
        from exporter.pods.kubelet import PodResourcesClient  # noqa: PLC0415

        allocations = PodResourcesClient(settings.kubelet_socket)
    if metadata is None:
        metadata = kube_metadata(settings)
    cgroup = CgroupCpu(settings.cgroup_root)
    use_cpu = cpu_energy is not None and cgroup.available()
    if cpu_energy is not None and not use_cpu:
        log.info("no cgroup v2 kubepods hierarchy under %s: publishing only source=gpu", settings.cgroup_root)
    sampler = PodSampler(
        allocations,
        metadata,
        gpu_energy,
        AppReader(timeout_s=settings.metrics_timeout_s),
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
