"""The issue's "done when": J/request and J/token per pod, computed by a real Prometheus from the pod
collector's series, match the simulated GPUs' power over the simulated servers' request rate."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from devices.simulated import SimulatedGpu
from exporter.pods.accounting import PodKey
from exporter.pods.owners import PodMeta, Workload
from exporter.pods.sampler import StaticPodMetadata
from exporter.pods.settings import PodSettings, build_pod_collector
from tests.support.fixtures import StartPrometheus
from tests.support.pods import VllmServer, start_kubelet

# (pod, batch on its GPU, requests per second, prompt and generation tokens per request)
PODS = [("llama-a", 8.0, 80, 100, 200), ("llama-b", 2.0, 40, 50, 350)]


def test_joules_per_request_and_token_in_prometheus(
    tmp_path: Path, start_prometheus: StartPrometheus
) -> None:
    socket_path = tmp_path / "kubelet.sock"
    grpc_server, kubelet = start_kubelet(socket_path)
    gpus, servers, metas = [], {}, {}
    for i, (pod, batch, _, _, _) in enumerate(PODS):
        gpu = SimulatedGpu(i, load=lambda b=batch: b)
        gpus.append(gpu)
        servers[pod] = VllmServer()
        kubelet.pods[("ml", pod)] = {"vllm": [("nvidia.com/gpu", [gpu.uuid])]}
        annotations = {"energy-orchestrator.io/metrics-port": str(servers[pod].port)}
        metas[PodKey("ml", pod)] = PodMeta(Workload("Deployment", pod), "127.0.0.1", annotations, {})
    watts = {pod: gpu.power_usage_mw() / 1000 for (pod, *_), gpu in zip(PODS, gpus, strict=True)}

    stop = threading.Event()

    def load() -> None:
        # Finish requests at each pod's rate, in 50 ms steps (whole requests, none lost to rounding).
        started, done = time.monotonic(), dict.fromkeys(servers, 0)
        while not stop.wait(0.05):
            for pod, _, rate, prompt, gen in PODS:
                n = int(rate * (time.monotonic() - started)) - done[pod]
                done[pod] += n
                servers[pod].finish(n, prompt=n * prompt, generation=n * gen, latency_s=0.7)

    settings = PodSettings(
        node_name="sim-node", kubelet_socket=str(socket_path), sample_interval_s=0.25, metrics_timeout_s=0.2
    )
    collector, sampler = build_pod_collector(
        settings,
        lambda: {g.uuid: g.total_energy_mj() / 1000 for g in gpus},
        metadata=StaticPodMetadata(metas),
    )
    registry = CollectorRegistry()
    registry.register(collector)
    http_server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    prom = start_prometheus(targets=[f"127.0.0.1:{http_server.server_port}"], scrape_interval_s=0.5)
    try:
        with prom:
            prom.wait_for("eo_pod_requests_total", timeout_s=20)
            time.sleep(6)
            jpr = "sum by (pod) (increase(eo_pod_energy_joules_total[5s])) / sum by (pod) (increase(eo_pod_requests_total[5s]))"
            jpt = "sum by (pod) (increase(eo_pod_energy_joules_total[5s])) / sum by (pod) (increase(eo_pod_tokens_total[5s]))"
            by_pod = {r["metric"]["pod"]: float(r["value"][1]) for r in prom.query(jpr)}
            per_token = {r["metric"]["pod"]: float(r["value"][1]) for r in prom.query(jpt)}
            # The gauge covers one 0.25 s sample (10-20 whole requests): average the last 5 s of samples.
            gauge = {
                r["metric"]["pod"]: float(r["value"][1])
                for r in prom.query("avg_over_time(eo_pod_joules_per_request[5s])")
            }
            p99 = prom.query(
                "histogram_quantile(0.99, sum by (le, pod) (rate(eo_pod_request_latency_seconds_bucket[5s])))"
            )
            info = prom.query("eo_gpu_pod_info")
    finally:
        stop.set()
        sampler.stop()
        http_server.shutdown()
        http_server.server_close()
        grpc_server.stop(None)
        for s in servers.values():
            s.stop()
    for pod, _, rate, prompt, gen in PODS:
        expected_jpr = watts[pod] / rate
        assert by_pod[pod] == pytest.approx(expected_jpr, rel=0.1), (pod, by_pod, watts)
        assert per_token[pod] == pytest.approx(expected_jpr / (prompt + gen), rel=0.1)
        assert gauge[pod] == pytest.approx(expected_jpr, rel=0.15)
    assert {r["metric"]["pod"] for r in p99} == {"llama-a", "llama-b"}
    assert all(0.5 < float(r["value"][1]) <= 1.0 for r in p99)  # every request took 0.7 s: bucket (0.5, 1]
    assert {(r["metric"]["pod"], r["metric"]["uuid"]) for r in info} == {
        (p, g.uuid) for (p, *_), g in zip(PODS, gpus, strict=True)
    }
