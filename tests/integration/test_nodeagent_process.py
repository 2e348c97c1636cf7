"""The real ``eo-node-agent`` binary as a subprocess, with a real PodResources gRPC server on a unix socket,
a Kubernetes API answering from recorded JSON (the pod with its opt-in annotation and IP) and a real
request page: SIGTERM restores and exits within 5 s; after a SIGKILL while capped, the next start
restores what the killed run left before anything else."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.requests import OPT_IN_ANNOTATION
from tests.support.nodeagent import request_page, sim_uuid
from tests.support.pods import KubeReplay, PodResourcesServicer, start_kubelet
from tests.support.powercap import REPO, TextServer

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


class AgentProcess:
    def __init__(self, tmp_path: Path, api_port: int, request_port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EO_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        script = Path(sys.executable).with_name("eo-node-agent")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "nodeagent"]
        self.state_dir = tmp_path / "state"
        self.proc = subprocess.Popen(
            [
                *command, "--gpu-backend", "simulated", "--state-dir", str(self.state_dir),
                "--kubelet-socket", str(tmp_path / "kubelet.sock"), "--node-name", NODE,
                "--namespaces", "inference", "--request-port", str(request_port),
                "--kube-api-url", f"http://127.0.0.1:{api_port}", "--kube-token-file", str(tmp_path / "none"),
                "--kube-events", "off", "--listen-address", "127.0.0.1", "--port", "0",
                "--poll-interval-seconds", "0.2", "--stale-after-seconds", "60", "--log-format", "json",
            ],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0
        self.wait_for(self._started, 30, "started")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def _started(self) -> bool:
        for line in list(self.lines):
            if found := re.search(r"serving :(\d+)", line):
                self.port = int(found.group(1))
        return bool(self.port)

    def messages(self) -> list[str]:
        out = []
        for line in list(self.lines):
            try:
                out.append(str(json.loads(line)["message"]))
            except (ValueError, KeyError, TypeError):
                out.append(line)
        return out

    def sample(self, name: str, **labels: str) -> float | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return None

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

    def wait_for(self, cond: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            if self.proc.poll() is not None:
                self._reader.join(2)
                raise AssertionError(
                    f"eo-node-agent exited {self.proc.returncode} before {what}: {self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} within {timeout_s:g}s: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return "\n".join(self.lines[-30:])

    def terminate(self) -> tuple[int | None, float]:
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc: int | None = self.proc.wait(SHUTDOWN_BUDGET_S + 5)
        except subprocess.TimeoutExpired:
            rc = None
        return rc, time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()


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
    rc, took = agent.terminate()
    assert rc == 0, agent.log()
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
    rc, _ = second.terminate()
    assert rc == 0, second.log()
