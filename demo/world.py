"""The demo's simulated Deployment: replicas of an inference server on simulated GPUs, in real time.

Requests come from a trace replayed in wall-clock time; the replicas are the simulator's
continuous-batching model (``sim.server.Cluster``), so the demo and ``eo-sim`` agree. Each replica is
bound to one ``SimulatedGpu`` (its load is the replica's running batch, and the cap the sidecar sets
on that GPU slows the replica as the model says), serves vLLM-format ``/metrics`` on a real port once
it is ready, and gets a real ``eo-powercap`` sidecar. The deployment is also the pod source of the
exporter's pod attribution and of the node agent: it answers what the kubelet (which pod holds which
GPU) and the Kubernetes API (which workload a pod belongs to, where its metrics are, whether it opts in
to the node agent and on which port its sidecar publishes its request) would.

The sidecars run unprivileged, as in the default manifests: each gets a ``ReadOnlyGpu`` view of its GPU
(every setter raises no-permission) and asks the node agent, which alone writes to the GPUs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from demo.inference import SimulatedVllmServer
from devices.base import GpuDevice, GpuNoPermission
from devices.simulated import SimulatedGpu, idle_load
from exporter.pods.accounting import PodKey
from exporter.pods.devices import Allocation
from exporter.pods.owners import PodMeta, Workload
from nodeagent.requests import OPT_IN_ANNOTATION, PORT_ANNOTATION
from sim.server import Cluster, Replica, ServerConfig
from sim.trace import Request

log = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"


@dataclass
class StartedSidecar:
    stop: Callable[[], None]
    port: int
    """Where its /metrics (and so its request to the node agent) is served."""


Sidecar = Callable[[GpuDevice, str, str], StartedSidecar]
"""Starts a sidecar for (its view of the GPU, pod name, the pod's metrics URL)."""


class ReadOnlyGpu:
    """A sidecar's view of a GPU without CAP_SYS_ADMIN: every reading, no setter (as NVML answers an
    unprivileged container)."""

    def __init__(self, gpu: GpuDevice) -> None:
        self._gpu = gpu

    @property
    def index(self) -> int:
        return self._gpu.index

    @property
    def uuid(self) -> str:
        return self._gpu.uuid

    @property
    def name(self) -> str:
        return self._gpu.name

    def power_usage_mw(self) -> int:
        return self._gpu.power_usage_mw()

    def total_energy_mj(self) -> int:
        return self._gpu.total_energy_mj()

    def power_limit_mw(self) -> int:
        return self._gpu.power_limit_mw()

    def power_management_limit_mw(self) -> int:
        return self._gpu.power_management_limit_mw()

    def power_limit_default_mw(self) -> int:
        return self._gpu.power_limit_default_mw()

    def power_limit_constraints_mw(self) -> tuple[int, int]:
        return self._gpu.power_limit_constraints_mw()

    def temperature_c(self) -> int:
        return self._gpu.temperature_c()

    def slowdown_temperature_c(self) -> int:
        return self._gpu.slowdown_temperature_c()

    def utilization_percent(self) -> int:
        return self._gpu.utilization_percent()

    def sm_clock_mhz(self) -> int:
        return self._gpu.sm_clock_mhz()

    def max_sm_clock_mhz(self) -> int:
        return self._gpu.max_sm_clock_mhz()

    def supported_sm_clocks_mhz(self) -> Sequence[int]:
        return self._gpu.supported_sm_clocks_mhz()

    def clock_event_reasons(self) -> frozenset[str]:
        return self._gpu.clock_event_reasons()

    def set_power_limit_mw(self, limit_mw: int) -> None:
        raise GpuNoPermission("the sidecar holds no CAP_SYS_ADMIN: the node agent sets the GPU")

    def lock_sm_clocks_mhz(self, min_mhz: int, max_mhz: int) -> None:
        raise GpuNoPermission("the sidecar holds no CAP_SYS_ADMIN: the node agent sets the GPU")

    def reset_sm_clocks(self) -> None:
        raise GpuNoPermission("the sidecar holds no CAP_SYS_ADMIN: the node agent sets the GPU")


@dataclass
class Pod:
    """One replica as Kubernetes would see it."""

    replica: Replica
    gpu: SimulatedGpu
    name: str
    server: SimulatedVllmServer | None = None
    sidecar: StartedSidecar | None = None


@dataclass
class TickStats:
    arrivals: int = 0
    finished: int = 0
    latencies_s: list[tuple[float, float]] = field(default_factory=list)
    """(arrival, end-to-end latency) in seconds, of each request finished in the tick."""


class DemoDeployment:
    """A Deployment of ``model_name`` replicas in ``namespace``/``workload``, one GPU each."""

    def __init__(
        self,
        requests: Sequence[Request],
        server: ServerConfig,
        gpus: Sequence[SimulatedGpu],
        namespace: str,
        workload: str,
        model_name: str,
        start_sidecar: Sidecar | None = None,
    ) -> None:
        self.requests = tuple(requests)
        self.namespace = namespace
        self.workload = workload
        self.model_name = model_name
        self.cluster = Cluster(server, self.requests)
        self._free = list(gpus)
        self._start_sidecar = start_sidecar
        self._pods: dict[int, Pod] = {}
        self._lock = threading.Lock()
        self._t = 0.0
        self._pod_counter = 0

    # -- the Deployment's replicas ------------------------------------------------------------------
    @property
    def max_replicas(self) -> int:
        return len(self._free) + len(self._pods)

    def desired(self) -> int:
        return len(self.cluster.active())

    def ready(self) -> int:
        return sum(1 for pod in self._pods.values() if pod.server is not None)

    def scale_to(self, replicas: int, warm: bool = False) -> None:
        """Set the replica count (what the HPA writes into the Deployment's spec).

        ``warm``: new replicas are ready at once (the service was already running when the demo began).
        """
        replicas = max(0, min(replicas, self.max_replicas))
        with self._lock:
            if replicas != self.desired():
                log.info("deployment %s/%s: %d -> %d replicas", self.namespace, self.workload,
                         self.desired(), replicas)  # fmt: skip
            self.cluster.scale_to(replicas, self._t, warm=warm)
            self._sync_pods()

    def advance(self, now_s: float) -> TickStats:
        """Run the replicas from the last call to ``now_s`` (seconds since the replay started)."""
        with self._lock:
            for pod in self._pods.values():
                pod.replica.power_cap_w = pod.gpu.power_limit_mw() / 1000
                pod.replica.locked_clock_mhz = pod.gpu.locked_sm_clock_mhz
            outcome = self.cluster.step(self._t, now_s)
            self._t = now_s
            stats = TickStats(arrivals=outcome.arrivals, finished=len(outcome.finished))
            log_ = self.cluster.log
            for rid, ids in outcome.finished_ids.items():
                server = self._pods[rid].server if rid in self._pods else None
                for req in ids:
                    e2e = log_.end_s[req] - log_.arrival_s[req]
                    stats.latencies_s.append((log_.arrival_s[req], e2e))
                    if server is not None:
                        r = self.requests[req]
                        ttft = log_.first_token_s[req] - log_.arrival_s[req]
                        server.record(r.prompt_tokens, r.output_tokens, ttft, e2e)
            self._sync_pods()
            return stats

    def _sync_pods(self) -> None:
        """Bind new replicas to GPUs, open ready ones' endpoints, release the GPUs of stopped ones."""
        live = {r.id: r for r in self.cluster.replicas}
        for rid in [rid for rid in self._pods if rid not in live]:
            self._release(self._pods.pop(rid))
        for rid, replica in live.items():
            pod = self._pods.get(rid)
            if pod is None:
                if not self._free:
                    continue  # more replicas than GPUs: the pod stays Pending (never happens: bounded)
                gpu = self._free.pop(0)
                gpu.set_load(_batch_of(replica))
                self._pod_counter += 1
                pod = self._pods[rid] = Pod(replica, gpu, f"{self.workload}-7d9c5-{self._pod_counter:03d}")
            if pod.server is None and replica.is_ready(self._t):
                pod.server = SimulatedVllmServer(self.model_name)
                if self._start_sidecar is not None:
                    pod.sidecar = self._start_sidecar(ReadOnlyGpu(pod.gpu), pod.name, pod.server.url)
            if pod.server is not None:
                # The governor's inputs, as vLLM publishes them: the batch, the requests waiting for
                # it, and KV-cache use (the model keeps no KV accounting: a full batch is a full cache).
                pod.server.set_running(
                    replica.batch,
                    waiting=replica.waiting,
                    kv_cache_usage=min(1.0, replica.running / replica.config.max_batch),
                )

    def _release(self, pod: Pod) -> None:
        if pod.sidecar is not None:
            # The sidecar stops publishing; the node agent restores the GPU once the pod is gone.
            pod.sidecar.stop()
        if pod.server is not None:
            pod.server.stop()
        pod.gpu.set_load(idle_load)
        self._free.append(pod.gpu)

    def pending(self) -> int:
        return self.cluster.pending

    def pods(self) -> list[Pod]:
        with self._lock:
            return list(self._pods.values())

    def stop(self) -> None:
        with self._lock:
            for pod in self._pods.values():
                self._release(pod)
            self._pods.clear()

    # -- what the kubelet's PodResources API answers (exporter.pods.sampler.AllocationSource) ---------
    def list(self) -> list[Allocation]:
        with self._lock:
            return [
                Allocation(self.namespace, pod.name, "vllm", GPU_RESOURCE, pod.gpu.uuid)
                for pod in self._pods.values()
            ]

    def close(self) -> None:
        return None

    # -- what the Kubernetes API answers (exporter.pods.sampler.PodMetadataSource) ------------------
    def get(self, key: PodKey) -> PodMeta | None:
        with self._lock:
            for pod in self._pods.values():
                if key.namespace == self.namespace and key.pod == pod.name:
                    uid = f"uid-{pod.name}"
                    annotations = {"energy-orchestrator.io/server": "vllm", OPT_IN_ANNOTATION: "true"}
                    if pod.server is None:  # still starting: as in Kubernetes, no pod IP yet
                        return PodMeta(Workload("Deployment", self.workload), None, annotations, {}, uid)
                    annotations["energy-orchestrator.io/metrics-port"] = str(pod.server.port)
                    if pod.sidecar is not None:
                        annotations[PORT_ANNOTATION] = str(pod.sidecar.port)
                    return PodMeta(Workload("Deployment", self.workload), "127.0.0.1", annotations, {}, uid)
            return None


def _batch_of(replica: Replica) -> Callable[[], float]:
    """The GPU's load: the replica's running batch, read whenever the GPU is read."""
    return lambda: float(replica.batch)
