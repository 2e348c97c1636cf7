"""Pod attribution wired into eo-exporter: flags, the factory hook, one /metrics with both."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devices.simulated import SimulatedBackend, SimulatedGpu
from exporter.main import main
from exporter.pods.accounting import PodKey
from exporter.pods.kubelet import PodResourcesClient
from exporter.pods.owners import PodMeta, Workload
from exporter.pods.sampler import StaticPodMetadata
from exporter.server import start_exporter
from exporter.settings import SettingsError, parse_settings
from tests.support.pods import VllmServer, start_kubelet, wait_until


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_exporter_publishes_pod_series_next_to_gpu_series(tmp_path: Path) -> None:
    gpus = [SimulatedGpu(i, load=lambda: 16.0) for i in range(2)]
    grpc_server, kubelet = start_kubelet(tmp_path / "kubelet.sock")
    vllm = VllmServer()
    kubelet.pods[("ml", "llama-0")] = {"vllm": [("nvidia.com/gpu", [f"{gpus[0].uuid}::0"])]}
    kubelet.pods[("ml", "llama-1")] = {"vllm": [("nvidia.com/gpu", [f"{gpus[0].uuid}::1"])]}
    annotations = {"energy-orchestrator.io/metrics-port": str(vllm.port)}
    metadata = StaticPodMetadata(
        {
            PodKey("ml", "llama-0"): PodMeta(Workload("Deployment", "llama"), "127.0.0.1", annotations, {}),
            PodKey("ml", "llama-1"): PodMeta(Workload("Deployment", "llama"), "127.0.0.1", {}, {}),
        }
    )
    settings = parse_settings(
        ["--port", "0", "--listen-address", "127.0.0.1", "--node-name", "n1", "--rapl-root", ""],
        {"EO_POD_SAMPLE_INTERVAL_SECONDS": "0.2", "EO_POD_METRICS_TIMEOUT_SECONDS": "0.1"},
    )
    handle = start_exporter(
        settings,
        backend=SimulatedBackend(gpus),
        pod_sources=(PodResourcesClient(str(tmp_path / "kubelet.sock")), metadata),
    )
    try:
        vllm.finish(7, prompt=70, generation=140)
        assert wait_until(
            lambda: (
                scrape(handle.url).get(
                    (
                        "eo_pod_requests_total",
                        (("namespace", "ml"), ("node", "n1"), ("pod", "llama-0"), ("workload", "llama")),
                    )
                )
                == 7
            )
        )
        assert wait_until(
            lambda: (
                scrape(handle.url).get(
                    (
                        "eo_pod_energy_joules_total",
                        (
                            ("namespace", "ml"),
                            ("node", "n1"),
                            ("pod", "llama-1"),
                            ("source", "gpu"),
                            ("workload", "llama"),
                        ),
                    ),
                    0,
                )
                > 0
            )
        )
        samples = scrape(handle.url)
    finally:
        handle.stop()
        grpc_server.stop(None)
        vllm.stop()
    assert samples[("eo_exporter_collector_up", (("collector", "pods"),))] == 1
    assert samples[("eo_exporter_collector_up", (("collector", "gpu"),))] == 1
    pod_energy = sum(v for (name, _), v in samples.items() if name == "eo_pod_energy_joules_total")
    gpu0 = next(
        v
        for (name, labels), v in samples.items()
        if name == "eo_gpu_energy_joules_total" and ("uuid", gpus[0].uuid) in labels
    )
    assert 0 < pod_energy <= gpu0  # the pods hold GPU 0 only, and only since they were first sampled
    info = [labels for (name, labels), _ in samples.items() if name == "eo_gpu_pod_info"]
    assert {dict(labels)["pod"] for labels in info} == {"llama-0", "llama-1"}
    assert all(dict(labels)["sharing"] == "time_sliced" for labels in info)


def test_pod_flags_and_env(tmp_path: Path) -> None:
    settings = parse_settings(
        ["--pod-attribution", "off", "--kubelet-socket", str(tmp_path / "k.sock")],
        {"EO_POD_GRACE_PERIOD_SECONDS": "60"},
    )
    assert (settings.pod_attribution, settings.kubelet_socket, settings.pod_grace_period_s) == (
        "off",
        tmp_path / "k.sock",
        60.0,
    )
    with pytest.raises(SettingsError, match="EO_POD_ATTRIBUTION"):
        parse_settings(["--pod-attribution", "maybe"], {})
    with pytest.raises(SettingsError, match="must be below --pod-sample-interval-seconds"):
        parse_settings(["--pod-metrics-timeout-seconds", "5", "--pod-sample-interval-seconds", "5"], {})


def test_pod_attribution_on_without_cluster_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "--port", "0", "--listen-address", "127.0.0.1", "--gpu-backend", "simulated", "--rapl-root", "",
            "--pod-attribution", "on", "--kubelet-socket", str(tmp_path / "kubelet.sock"),
        ]
    )  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "in-cluster service account" in err and "--pod-attribution off" in err
