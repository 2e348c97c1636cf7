"""eo-exporter as a real process (simulated GPUs, a RAPL fixture tree) scraped by a real Prometheus."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fixtures import StartPrometheus, free_port


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    rapl = tmp_path / "powercap" / "intel-rapl:0"
    rapl.mkdir(parents=True)
    for name, value in (
        ("name", "package-0"),
        ("energy_uj", "12000000"),
        ("max_energy_range_uj", "262143328850"),
    ):
        (rapl / name).write_text(value + "\n")
    port = free_port()
    log_path = tmp_path / "exporter.log"
    argv = [
        sys.executable, "-m", "exporter",
        "--gpu-backend", "simulated", "--sim-gpus", "2", "--sim-load", "constant:64",
        "--listen-address", "127.0.0.1", "--port", str(port), "--node-name", "it-node",
        "--rapl-root", str(tmp_path / "powercap"), "--log-format", "json",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        yield port, log_path
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0  # SIGTERM is a clean stop


def test_prometheus_scrapes_power_energy_and_collector_health(
    exporter: tuple[int, Path], start_prometheus: StartPrometheus
) -> None:
    port, log_path = exporter
    with start_prometheus(targets=[f"127.0.0.1:{port}"], scrape_interval_s=0.5) as prom:
        power = prom.wait_for('eo_gpu_power_watts{node="it-node"}', timeout_s=20)
        assert {s["metric"]["uuid"] for s in power} == {
            "GPU-5e1a0000-0000-4000-8000-000000000000",
            "GPU-5e1a0000-0000-4000-8000-000000000001",
        }
        # Constant batch: the energy counter's rate must equal the power gauge. rate() divides by the
        # whole window, so wait until the series fills it (8 samples at 0.5 s).
        rates = prom.wait_for(
            "rate(eo_gpu_energy_joules_total[4s]) and count_over_time(eo_gpu_energy_joules_total[4s]) >= 8",
            timeout_s=20,
        )
        watts = {s["metric"]["uuid"]: float(s["value"][1]) for s in prom.query("eo_gpu_power_watts")}
        for series in prom.query("rate(eo_gpu_energy_joules_total[4s])"):
            uuid = series["metric"]["uuid"]
            raw = prom.query(f'eo_gpu_energy_joules_total{{uuid="{uuid}"}}[4s]')
            assert float(series["value"][1]) == pytest.approx(watts[uuid], rel=0.03), raw
        assert len(rates) == 2
        up = {s["metric"]["collector"]: float(s["value"][1]) for s in prom.query("eo_exporter_collector_up")}
        assert up == {"gpu": 1.0, "cpu": 1.0}
        cpu = prom.query('eo_cpu_energy_joules_total{package="0",domain="package"}')
        assert float(cpu[0]["value"][1]) == 12.0
        info = prom.query('eo_gpu_info{energy_source="hardware_counter"}')
        assert len(info) == 2
        assert prom.query('up{job="eo"}')[0]["value"][1] == "1"
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any("serving /metrics" in line["message"] for line in lines)
