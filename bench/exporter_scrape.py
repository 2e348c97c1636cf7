"""Scrape cost of eo-exporter: 8 simulated GPUs and 2 RAPL packages (a sysfs fixture tree).

Runs ``python -m exporter`` as its own process on 127.0.0.1 and scrapes the real HTTP endpoint N
times, one connection per scrape as Prometheus does after an idle interval. Prints the client-side
latency p50/p99/max and the exporter process's CPU seconds per scrape (user + system, from
/proc/<pid>/stat, so the client's own work is not counted).

    python bench/exporter_scrape.py [--scrapes 1000] [--gpus 8]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rapl_tree(root: Path) -> None:
    """Two packages with core and dram sub-zones: 6 zones, as on a 2-socket Intel server."""
    for pkg in (0, 1):
        top = root / f"intel-rapl:{pkg}"
        zones = (
            (top, f"package-{pkg}"),
            (top / f"intel-rapl:{pkg}:0", "core"),
            (top / f"intel-rapl:{pkg}:1", "dram"),
        )
        for path, name in zones:
            path.mkdir(parents=True)
            (path / "name").write_text(name + "\n")
            (path / "energy_uj").write_text("123456789\n")
            (path / "max_energy_range_uj").write_text("262143328850\n")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"/metrics answered {resp.status}")
        return len(body)
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scrapes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rapl_tree(Path(tmp))
        port = free_port()
        argv = [
            sys.executable, "-m", "exporter", "--gpu-backend", "simulated", "--sim-gpus", str(args.gpus),
            "--sim-load", "sine:60:128", "--rapl-root", tmp, "--listen-address", "127.0.0.1",
            "--port", str(port), "--node-name", "bench", "--log-level", "warning",
        ]  # fmt: skip
        proc = subprocess.Popen(argv)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    size = scrape(port)
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.1)
            for _ in range(50):  # warm up
                scrape(port)
            latencies: list[float] = []
            cpu0 = cpu_seconds(proc.pid)
            wall0 = time.perf_counter()
            for _ in range(args.scrapes):
                start = time.perf_counter()
                scrape(port)
                latencies.append(time.perf_counter() - start)
            wall = time.perf_counter() - wall0
            cpu = cpu_seconds(proc.pid) - cpu0
        finally:
            proc.terminate()
            proc.wait(10)

    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(int(q * len(latencies)), len(latencies) - 1)] * 1000

    print(f"eo-exporter scrape benchmark: {args.gpus} simulated GPUs, 2 RAPL packages (6 zones)")
    print(f"  scrapes             {args.scrapes} (sequential, one connection each)")
    print(f"  body size           {size} bytes")
    print(f"  latency p50         {pct(0.50):.2f} ms")
    print(f"  latency p99         {pct(0.99):.2f} ms")
    print(f"  latency max         {latencies[-1] * 1000:.2f} ms")
    print(f"  latency mean        {statistics.fmean(latencies) * 1000:.2f} ms")
    print(f"  exporter CPU/scrape {cpu / args.scrapes * 1000:.2f} ms (user + system of the exporter process)")
    print(f"  throughput          {args.scrapes / wall:.0f} scrapes/s")


if __name__ == "__main__":
    main()
