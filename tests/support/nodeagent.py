"""Shared parts of the node agent tests: a request page as a sidecar renders it, and ``agent_rig``: the
agent in-process with a real PodResources gRPC server on a unix socket, real HTTP pages for the pods'
requests, simulated GPUs and a test-driven wall clock."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.settings import from_values
from devices.simulated import SimulatedGpu
from exporter.pods.accounting import PodKey
from exporter.pods.kubelet import PodResourcesClient
from exporter.pods.owners import PodMeta, Workload
from exporter.pods.sampler import StaticPodMetadata
from nodeagent.agent import NodeAgentHandle, start_node_agent
from nodeagent.decide import Pod
from nodeagent.requests import OPT_IN_ANNOTATION, PORT_ANNOTATION
from nodeagent.settings import Settings
from powercap.events import CapEvent
from tests.support.pods import PodResourcesServicer, start_kubelet
from tests.support.powercap import TextServer

NAMESPACE = "inference"
T0 = 1_700_000_000.0


def sim_uuid(index: int) -> str:
    """The UUID ``SimulatedGpu(index)`` has."""
    return f"GPU-5e1a0000-0000-4000-8000-{index:012d}"


def request_page(asks: Mapping[str, float], stamp: float | None, actuator: str = "power") -> str:
    """What ``eo-powercap --apply-via agent`` serves, as prometheus_client renders it."""
    name = "eo_powercap_requested_watts" if actuator == "power" else "eo_powercap_requested_sm_clock_hertz"
    scale = 1.0 if actuator == "power" else 1e6
    lines = [f"# TYPE {name} gauge"]
    lines += [f'{name}{{uuid="{uuid}"}} {value * scale!r}' for uuid, value in asks.items()]
    if stamp is not None:
        lines += [
            "# TYPE eo_powercap_request_timestamp_seconds gauge",
            f"eo_powercap_request_timestamp_seconds {stamp!r}",
        ]
    return "\n".join(lines) + "\n"


class RecordingEvents:
    def __init__(self) -> None:
        self.events: list[tuple[Pod, CapEvent]] = []

    def emit(self, pod: Pod, event: CapEvent) -> None:
        self.events.append((pod, event))

    def close(self) -> None:
        return None

    def reasons(self, pod_name: str | None = None) -> list[str]:
        return [e.reason for p, e in self.events if pod_name is None or p.name == pod_name]


class WallClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class AgentRig:
    handle: NodeAgentHandle
    kubelet: PodResourcesServicer
    metadata: StaticPodMetadata
    gpus: list[SimulatedGpu]
    clock: WallClock
    events: RecordingEvents
    pages: dict[str, TextServer] = field(default_factory=dict)

    @property
    def agent(self) -> Any:
        return self.handle.agent

    def add_pod(
        self,
        name: str,
        gpus: list[str],
        *,
        namespace: str = NAMESPACE,
        opt_in: bool = True,
        uid: str | None = None,
        resource: str = "nvidia.com/gpu",
    ) -> TextServer:
        page = self.pages.get(name) or TextServer("")
        self.pages[name] = page
        self.kubelet.pods[(namespace, name)] = {"vllm": [(resource, gpus)]}
        annotations = {PORT_ANNOTATION: str(page.port)}
        if opt_in:
            annotations[OPT_IN_ANNOTATION] = "true"
        meta = PodMeta(Workload("Deployment", "llama"), "127.0.0.1", annotations, {}, uid or f"uid-{name}")
        self.metadata.set(PodKey(namespace, name), meta)
        return page

    def remove_pod(self, name: str, namespace: str = NAMESPACE) -> None:
        del self.kubelet.pods[(namespace, name)]
        self.metadata.set(PodKey(namespace, name), None)

    def ask(
        self, name: str, asks: Mapping[str, float], stamp: float | None = None, actuator: str = "power"
    ) -> None:
        """The pod's sidecar now requests ``asks``, stamped now (or at ``stamp``)."""
        self.pages[name].body = request_page(asks, self.clock.now if stamp is None else stamp, actuator)

    def cycle(self, dt_s: float = 1.0) -> Any:
        self.clock.now += dt_s
        return self.agent.cycle()

    def sample(self, name: str, **labels: str) -> float | None:
        return self.agent.metrics.registry.get_sample_value(name, labels)

    def refusals(self, reason: str) -> float:
        return self.sample("eo_node_agent_refusals_total", reason=reason) or 0.0

    def restores(self, uuid: str, reason: str) -> float:
        return self.sample("eo_node_agent_restores_total", uuid=uuid, reason=reason) or 0.0

    def limit_w(self, index: int = 0) -> float:
        return self.gpus[index].power_limit_mw() / 1000


def agent_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "namespaces": NAMESPACE,
        "node_name": "gpu-node-1",
        "state_dir": tmp_path / "state",
        "listen_address": "127.0.0.1",
        "port": 0,
        "poll_interval_s": 1.0,
        "stale_after_s": 10.0,
        "min_change_interval_s": 2.0,
        "request_timeout_s": 0.5,
    }
    values.update(overrides)
    return from_values(Settings, values, environ={})


@contextmanager
def agent_rig(tmp_path: Path, gpus: int = 2, **overrides: Any) -> Iterator[AgentRig]:
    server, kubelet = start_kubelet(tmp_path / "kubelet.sock")
    client = PodResourcesClient(str(tmp_path / "kubelet.sock"), timeout_s=1.0)
    metadata = StaticPodMetadata({})
    devices = [SimulatedGpu(i) for i in range(gpus)]
    clock = WallClock()
    events = RecordingEvents()
    handle = start_node_agent(
        agent_settings(tmp_path, **overrides),
        devices,
        client,
        metadata,
        events=events,
        wall_clock=clock,
        run_loop=False,
    )
    rig = AgentRig(handle, kubelet, metadata, devices, clock, events)
    try:
        yield rig
    finally:
        handle.stop()
        client.close()
        server.stop(None)
        for page in rig.pages.values():
            page.stop()
