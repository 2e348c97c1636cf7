"""Demo, part 1: the exporter on simulated GPUs with a moving load, scraped by a real Prometheus.

Starts the exporter in-process on its own SimulatedBackend (4 GPUs following ``sine:40:160``, phase-
shifted a little), a loopback Prometheus scraping it every second, waits while printing progress, then prints
what Prometheus sees: power per GPU, energy over the window via increase(), limits and, where this
machine exposes readable RAPL zones, CPU energy. Everything stops at the end and on Ctrl-C.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry

from demo.prometheus import Prometheus
from exporter.server import simulated_backend, start_exporter
from exporter.settings import parse_settings
from exporter.simload import parse_load_pattern

log = logging.getLogger(__name__)


def _by_uuid(prom: Prometheus, promql: str) -> dict[str, float]:
    return {s["metric"].get("uuid", ""): float(s["value"][1]) for s in prom.query(promql)}


def run(duration_s: float = 25.0, gpus: int = 4, load: str = "sine:40:160") -> None:
    settings = parse_settings(
        ["--port", "0", "--listen-address", "127.0.0.1", "--node-name", "demo-node"], {}
    )
    backend = simulated_backend(gpus, parse_load_pattern(load), phase_spread=0.3)
    handle = start_exporter(settings, backend=backend, registry=CollectorRegistry())
    prom = Prometheus(targets=[f"127.0.0.1:{handle.port}"], scrape_interval_s=1.0)
    try:
        print(f"exporter on {handle.url}/metrics with {gpus} simulated GPUs (load {load})")
        prom.start()
        print(f"Prometheus on {prom.url} scraping every 1 s; collecting for {duration_s:.0f} s")
        prom.wait_for("eo_gpu_power_watts", timeout_s=30)
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < duration_s:
            power = _by_uuid(prom, "eo_gpu_power_watts")
            each = " ".join(f"{power[u]:5.0f}" for u in sorted(power))
            print(f"  t={elapsed:4.0f} s  GPU power {each} W   total {sum(power.values()):6.0f} W")
            time.sleep(5.0)
        summary(prom, int(duration_s))
    finally:
        prom.stop()
        handle.stop()
        print("stopped exporter and Prometheus")


def summary(prom: Prometheus, window_s: int) -> None:
    power = _by_uuid(prom, "eo_gpu_power_watts")
    energy = _by_uuid(prom, f"increase(eo_gpu_energy_joules_total[{window_s}s])")
    mean = _by_uuid(prom, f"avg_over_time(eo_gpu_power_watts[{window_s}s])")
    limit = _by_uuid(prom, "eo_gpu_power_limit_watts")
    low = _by_uuid(prom, "eo_gpu_power_limit_min_watts")
    high = _by_uuid(prom, "eo_gpu_power_limit_max_watts")
    temp = _by_uuid(prom, "eo_gpu_temperature_celsius")
    print(f"\nWhat Prometheus sees (window {window_s} s):")
    print(
        f"  {'GPU uuid':<42} {'power W':>8} {'mean W':>8} {'energy J':>9} {'limit W':>8} "
        f"{'range W':>9} {'temp C':>6}"
    )
    for uuid in sorted(power):
        print(
            f"  {uuid:<42} {power[uuid]:8.1f} {mean.get(uuid, 0):8.1f} {energy.get(uuid, 0):9.0f} "
            f"{limit.get(uuid, 0):8.0f} {low.get(uuid, 0):4.0f}-{high.get(uuid, 0):<4.0f} "
            f"{temp.get(uuid, 0):6.0f}"
        )
    print(f"  total energy over the window: {sum(energy.values()) / 3600:.2f} Wh")
    cpu = prom.query(f'sum(increase(eo_cpu_energy_joules_total{{domain="package"}}[{window_s}s]))')
    if cpu:
        print(f"  CPU package energy over the window: {float(cpu[0]['value'][1]):.0f} J")
    else:
        print("  CPU energy: no readable RAPL zones on this machine (needs root and /sys/class/powercap)")
    up = {s["metric"]["collector"]: s["value"][1] for s in prom.query("eo_exporter_collector_up")}
    print(f"  collectors up: {up}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run()
    except KeyboardInterrupt:
        print("\ninterrupted")
