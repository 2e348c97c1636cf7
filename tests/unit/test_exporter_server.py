"""The in-process factory: real HTTP on 127.0.0.1:0, simulated GPUs, the pod-attribution hooks."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from devices.base import GpuLost
from devices.simulated import SimulatedBackend, SimulatedGpu
from exporter import exposition
from exporter.server import ExporterHandle, simulated_backend, start_exporter
from exporter.settings import parse_settings
from exporter.simload import parse_load_pattern


class PodsStub:
    """Stands in for the pod attribution collector: proves the hook registers and is scraped."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("eo_test_extra", "extra collector hook", labels=["k"])
        family.add_metric(["v"], 1.0)
        yield family


def scrape(handle: ExporterHandle) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(handle.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def gpus() -> list[SimulatedGpu]:
    return [SimulatedGpu(i, load=lambda: 32.0) for i in range(2)]


@pytest.fixture
def handle(gpus: list[SimulatedGpu], tmp_path: Path) -> Iterator[ExporterHandle]:
    rapl = tmp_path / "powercap" / "intel-rapl:0"
    rapl.mkdir(parents=True)
    for name, value in (
        ("name", "package-0"),
        ("energy_uj", "5000000"),
        ("max_energy_range_uj", "262143328850"),
    ):
        (rapl / name).write_text(value + "\n")
    settings = parse_settings(
        [
            "--port",
            "0",
            "--listen-address",
            "127.0.0.1",
            "--node-name",
            "n1",
            "--rapl-root",
            str(tmp_path / "powercap"),
        ],
        {},
    )
    h = start_exporter(
        settings, backend=SimulatedBackend(gpus), registry=CollectorRegistry(), extra_collectors=[PodsStub()]
    )
    yield h
    h.stop()


def test_serves_metrics_healthz_and_extra_collectors(handle: ExporterHandle) -> None:
    samples = scrape(handle)
    uuid = "GPU-5e1a0000-0000-4000-8000-000000000000"
    key = (
        "eo_gpu_power_watts",
        (("gpu", "0"), ("model", "NVIDIA H100 80GB HBM3 (simulated)"), ("node", "n1"), ("uuid", uuid)),
    )
    assert 140.0 < samples[key] <= 700.0
    assert (
        samples[("eo_cpu_energy_joules_total", (("domain", "package"), ("node", "n1"), ("package", "0")))]
        == 5.0
    )
    assert samples[("eo_exporter_collector_up", (("collector", "gpu"),))] == 1.0
    assert samples[("eo_exporter_collector_up", (("collector", "cpu"),))] == 1.0
    assert samples[("eo_test_extra", (("k", "v"),))] == 1.0
    with urllib.request.urlopen(handle.url + "/healthz", timeout=5) as resp:
        assert resp.status == 200
        assert b'"ok"' in resp.read()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(handle.url + "/nope", timeout=5)
    assert info.value.code == 404
    info.value.close()


def test_gpu_energy_reader_for_pod_attribution(handle: ExporterHandle, gpus: list[SimulatedGpu]) -> None:
    first = handle.gpu_energy.read_energy_joules()
    assert set(first) == {g.uuid for g in gpus}
    second = handle.gpu_energy.read_energy_joules()
    assert all(second[u] >= first[u] for u in first)
    assert [d.uuid for d in handle.gpu_energy.devices()] == [g.uuid for g in gpus]


def test_lost_gpu_flips_gpu_down_and_the_rest_keeps_serving(
    handle: ExporterHandle, gpus: list[SimulatedGpu]
) -> None:
    gpus[1].inject_fault(GpuLost("fell off the bus"))
    samples = scrape(handle)
    assert samples[("eo_exporter_collector_up", (("collector", "gpu"),))] == 0.0
    assert samples[("eo_exporter_collector_up", (("collector", "cpu"),))] == 1.0
    assert not any(k[0].startswith("eo_gpu") and ("uuid", gpus[1].uuid) in k[1] for k in samples)
    assert any(k[0] == "eo_gpu_power_watts" and ("uuid", gpus[0].uuid) in k[1] for k in samples)
    assert set(handle.gpu_energy.read_energy_joules()) == {gpus[0].uuid}


def test_simulated_backend_follows_the_pattern_with_phase_shift() -> None:
    t = [0.0]
    backend = simulated_backend(2, parse_load_pattern("square:10:64"), clock=lambda: t[0])
    a, b = backend.devices()
    a.power_usage_mw()
    b.power_usage_mw()  # the load is sampled at a read and applies from then on
    t[0] = 1.0
    assert a.utilization_percent() == 100  # first half of its period
    assert b.utilization_percent() == 0  # shifted by half a period


def test_healthz_is_json_naming_the_collectors_and_metrics_is_the_text_format(handle: ExporterHandle) -> None:
    with urllib.request.urlopen(handle.url + "/healthz", timeout=5) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        assert json.loads(resp.read()) == {"status": "ok", "collectors": ["gpu", "cpu"]}
    with urllib.request.urlopen(handle.url + "/metrics?debug=1", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST


def test_metrics_go_through_the_cached_renderer(
    gpus: list[SimulatedGpu], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporter's own renderer (label texts cached), not prometheus_client's generate_latest."""
    calls: list[CollectorRegistry] = []

    def counting(registry: CollectorRegistry) -> bytes:
        calls.append(registry)
        return exposition.render(registry)

    monkeypatch.setattr("exporter.server.render", counting)
    settings = parse_settings(["--port", "0", "--listen-address", "127.0.0.1", "--rapl-root", ""], {})
    h = start_exporter(settings, backend=SimulatedBackend(gpus), registry=CollectorRegistry())
    try:
        assert ("eo_exporter_collector_up", (("collector", "gpu"),)) in scrape(h)
        assert calls == [h.registry]
    finally:
        h.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(h.url + "/metrics", timeout=5)  # stopped: the port is closed
