"""The background sampler: kubelet devices, inference-server counters and energy, read together.

Every ``interval_s`` it lists the kubelet's device allocations, reads every GPU pod's inference server
concurrently (one bounded deadline for all), then reads the GPU (and CPU) energy counters right after,
and feeds all of it to the pure ``Accountant``. A scrape only renders the last snapshot, so it never
waits on the kubelet, the Kubernetes API or an inference server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from exporter.pods.accounting import Accountant, Holding, PodKey, PodView, Tick
from exporter.pods.appmetrics import parse_annotations
from exporter.pods.cgroup import CgroupCpu
from exporter.pods.devices import Allocation, MigParent, is_gpu_resource, no_mig_parents, parse_device_id
from exporter.pods.owners import PodMeta
from exporter.pods.scrape import AppReader, ScrapeTarget, candidate_ports

log = logging.getLogger(__name__)

GpuEnergy = Callable[[], Mapping[str, float]]
CpuEnergy = Callable[[], float]


class AllocationSource(Protocol):
    def list(self) -> Sequence[Allocation]: ...

    def close(self) -> None: ...


class PodMetadataSource(Protocol):
    def get(self, key: PodKey) -> PodMeta | None: ...


class StaticPodMetadata:
    """Pod metadata from a fixed mapping (the demo, benchmarks and tests without an API server)."""

    def __init__(self, pods: Mapping[PodKey, PodMeta]) -> None:
        self._pods = dict(pods)

    def get(self, key: PodKey) -> PodMeta | None:
        return self._pods.get(key)

    def set(self, key: PodKey, meta: PodMeta | None) -> None:
        if meta is None:
            self._pods.pop(key, None)
        else:
            self._pods[key] = meta


def resolve_allocations(
    allocations: Sequence[Allocation],
    mig_parent: MigParent = no_mig_parents,
    index_to_uuid: Mapping[str, str] | None = None,
    resource_prefixes: tuple[str, ...] = ("nvidia.com/",),
) -> tuple[list[Holding], list[str]]:
    """Holdings for the GPU allocations, and the GPU device IDs that could not be placed."""
    holdings: list[Holding] = []
    unplaced: list[str] = []
    for a in allocations:
        if not is_gpu_resource(a.resource_name, resource_prefixes):
            continue
        share = parse_device_id(a.device_id, a.resource_name, mig_parent, index_to_uuid)
        if share is None:
            unplaced.append(a.device_id)
            continue
        holdings.append(Holding(PodKey(a.namespace, a.pod), a.container, share))
    return holdings, unplaced


@dataclass(frozen=True)
class Snapshot:
    pods: tuple[PodView, ...]
    up: bool  # the last sample read the kubelet and the GPU energy
    taken_at_s: float | None
    duration_s: float


class PodSampler:
    def __init__(
        self,
        allocations: AllocationSource,
        metadata: PodMetadataSource,
        gpu_energy: GpuEnergy,
        reader: AppReader,
        accountant: Accountant | None = None,
        cpu_energy: CpuEnergy | None = None,
        cgroup: CgroupCpu | None = None,
        mig_parent: MigParent = no_mig_parents,
        interval_s: float = 5.0,
        resource_prefixes: tuple[str, ...] = ("nvidia.com/",),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._allocations = allocations
        self._metadata = metadata
        self._gpu_energy = gpu_energy
        self._reader = reader
        self._accountant = accountant or Accountant()
        self._cpu_energy = cpu_energy
        self._cgroup = cgroup
        self._mig_parent = mig_parent
        self._interval_s = interval_s
        self._prefixes = resource_prefixes
        self._clock = clock
        self._snapshot = Snapshot((), False, None, 0.0)
        self._sample_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()
        self._listeners: list[Callable[[Snapshot], object]] = []

    def add_listener(self, listener: Callable[[Snapshot], object]) -> None:
        """Call ``listener(snapshot)`` on the sampler's thread after each sample (pre-rendering)."""
        self._listeners.append(listener)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot  # replaced whole by the sampler: readers never see a half-built one

    def sample_once(self) -> Snapshot:
        snapshot = self._sample()
        for listener in self._listeners:
            try:
                listener(snapshot)
            except Exception:
                log.exception("pod snapshot listener failed")
        return snapshot

    def _sample(self) -> Snapshot:
        with self._sample_lock:
            started = self._clock()
            try:
                tick = self._read(started)
            except Exception as exc:
                # No tick: the next good sample attributes the whole gap, so no energy is lost.
                if "sample" not in self._warned:
                    log.warning("pod sample failed (%s); pod series keep their last values", exc)
                    self._warned.add("sample")
                self._snapshot = Snapshot(self._snapshot.pods, False, started, self._clock() - started)
                return self._snapshot
            self._warned.discard("sample")
            self._accountant.step(tick)
            self._snapshot = Snapshot(tuple(self._accountant.pods()), True, started, self._clock() - started)
            return self._snapshot

    def _read(self, now_s: float) -> Tick:
        holdings, unplaced = resolve_allocations(
            self._allocations.list(), self._mig_parent, None, self._prefixes
        )
        for device_id in unplaced:
            if device_id not in self._warned:
                self._warned.add(device_id)
                log.warning("device %s is not a GPU UUID we can place (MIG parent unknown?)", device_id)
        keys = sorted({h.pod for h in holdings})
        metas = {k: m for k in keys if (m := self._metadata.get(k)) is not None}
        targets = []
        for key, meta in metas.items():
            config = parse_annotations(meta.annotations)
            for problem in config.problems:
                if problem not in self._warned:
                    self._warned.add(problem)
                    log.warning("pod %s/%s: %s", key.namespace, key.pod, problem)
            ports = candidate_ports(config, meta.container_ports)
            if meta.ip and ports:
                targets.append(ScrapeTarget(key, meta.ip, ports, config))
        app = self._reader.read_all(targets)
        # Energy right after the counters, so both describe (nearly) the same instant.
        gpu_energy = dict(self._gpu_energy())
        cpu_energy = self._cpu_energy() if self._cpu_energy is not None else None
        cpu_usage: dict[PodKey, float] = {}
        cpu_total = None
        if cpu_energy is not None and self._cgroup is not None:
            cpu_total = self._cgroup.node_usage_s()
            uids = {m.uid: k for k, m in metas.items() if m.uid}
            usage = self._cgroup.pod_usage_s({uid: uid for uid in uids})
            cpu_usage = {uids[uid]: seconds for uid, seconds in usage.items()}
        return Tick(
            now_s=now_s,
            holdings=holdings,
            gpu_energy_j=gpu_energy,
            app=app,
            workloads={k: m.workload.name for k, m in metas.items()},
            cpu_energy_j=cpu_energy,
            cpu_usage_s=cpu_usage,
            cpu_total_s=cpu_total,
        )

    def start(self) -> PodSampler:
        self._thread = threading.Thread(target=self._run, name="eo-pod-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(max(self._interval_s - self._snapshot.duration_s, 0.0))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._reader.close()
        self._allocations.close()
        stop_metadata = getattr(self._metadata, "stop", None)
        if callable(stop_metadata):
            stop_metadata()  # the Kubernetes pod cache's watch thread
