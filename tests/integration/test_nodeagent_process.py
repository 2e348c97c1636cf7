"""The real ``eo-node-agent`` binary as a subprocess, with a real PodResources gRPC server on a unix socket,
a Kubernetes API answering from recorded JSON (the pod with its opt-in annotation and IP) and a real
request page: SIGTERM restores and exits within 5 s; after a SIGKILL while capped, the next start
restores what the killed run left before anything else."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.requests import OPT_IN_ANNOTATION
from tests.support.daemon import DaemonProcess, console_command
from tests.support.nodeagent import request_page, sim_uuid
from tests.support.pods import KubeReplay, PodResourcesServicer, start_kubelet
from tests.support.powercap import TextServer

G0 = sim_uuid(0)
NODE = "gpu-node-1"
SHUTDOWN_BUDGET_S = 5.0


def pod_list() -> dict[str, Any]:
    pod = {
        "metadata": {
            "name": "llama-0",
            "namespace": "inference",
            "uid": "uid-llama-0",
            "annotations": {OPT_IN_ANNOTATION: "true"},
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "vllm"}]},
        "status": {"podIP": "127.0.0.1"},
    }
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": [pod]}


class AgentProcess(DaemonProcess):
    name = "eo-node-agent"

    def __init__(self, tmp_path: Path, api_port: int, request_port: int) -> None:
        self.state_dir = tmp_path / "state"
        super().__init__(
            [
                *console_command("eo-node-agent", "nodeagent"), "--gpu-backend", "simulated",
                "--state-dir", str(self.state_dir), "--kubelet-socket", str(tmp_path / "kubelet.sock"),
                "--node-name", NODE, "--namespaces", "inference", "--request-port", str(request_port),
                "--kube-api-url", f"http://127.0.0.1:{api_port}", "--kube-token-file", str(tmp_path / "none"),
                "--kube-events", "off", "--listen-address", "127.0.0.1", "--port", "0",
                "--poll-interval-seconds", "0.2", "--stale-after-seconds", "60", "--log-format", "json",
            ]
        )  # fmt: skip

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metric(name, labels)

    def record(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.state_dir / f"{G0}.json").read_text()))
        except (OSError, ValueError):
            return None

    def capped_at(self, watts: float) -> bool:
        record = self.record()
        return (
            self.sample("eo_node_agent_setpoint_watts", uuid=G0) == watts
            and record is not None
            and record["status"] == "controlling"
        )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[PodResourcesServicer, KubeReplay, TextServer, list[AgentProcess]]]:
    server, kubelet = start_kubelet(tmp_path / "kubelet.sock")
    kubelet.pods[("inference", "llama-0")] = {"vllm": [("nvidia.com/gpu", [G0])]}
    api = KubeReplay(pod_list(), [])
    page = TextServer(body_fn=lambda: request_page({G0: 600.0}, time.time()))
    processes: list[AgentProcess] = []
    yield kubelet, api, page, processes
    for p in processes:
        p.kill()
    page.stop()
    api.stop()
    server.stop(None)


def test_sigterm_restores_and_exits_within_5_s(
    tmp_path: Path, node: tuple[PodResourcesServicer, KubeReplay, TextServer, list[AgentProcess]]
) -> None:
    _, api, page, processes = node
    agent = AgentProcess(tmp_path, api.port, page.port)
    processes.append(agent)
    agent.wait_for(lambda: agent.capped_at(600.0), 30, "capped as the pod asked")
    rc, took = agent.terminate(SHUTDOWN_BUDGET_S + 5)
    assert rc == 0, agent.log_text()
    assert took <= SHUTDOWN_BUDGET_S
    assert agent.record()["status"] == "restored"  # type: ignore[index]
    assert any("original setting restored" in m and "(shutdown)" in m for m in agent.messages())


def test_after_a_sigkill_while_capped_the_next_start_restores_first(
    tmp_path: Path, node: tuple[PodResourcesServicer, KubeReplay, TextServer, list[AgentProcess]]
) -> None:
    kubelet, api, page, processes = node
    first = AgentProcess(tmp_path, api.port, page.port)
    processes.append(first)
    first.wait_for(lambda: first.capped_at(600.0), 30, "capped as the pod asked")
    first.kill()  # SIGKILL: no handler runs; the state file, written before the set, says controlling
    assert first.record()["status"] == "controlling"  # type: ignore[index]
    del kubelet.pods[("inference", "llama-0")]  # the pod is gone meanwhile: nothing may re-cap it
    second = AgentProcess(tmp_path, api.port, page.port)
    processes.append(second)
    # Restored before it serves anything: the start line comes after the recovery.
    assert second.record()["status"] == "restored"  # type: ignore[index]
    assert second.sample("eo_node_agent_restores_total", uuid=G0, reason="agent_restart") == 1.0
    assert any("a previous writer left capped for inference/llama-0" in m for m in second.messages())
    rc, _ = second.terminate(SHUTDOWN_BUDGET_S + 5)
    assert rc == 0, second.log_text()
