"""Pod attribution benchmark: scrape latency and CPU with 8 GPUs, 32 pods and their inference servers.

Setup: 8 simulated GPUs, each time-sliced between 4 pods (32 pods); a real kubelet PodResources gRPC
server on a unix socket; 32 vLLM-format HTTP servers on 127.0.0.1 in a child process (so their CPU is
not counted as the exporter's), finishing requests all the time; the background sampler every 1 s.

Prints: scrape latency over HTTP (p50/p99/max), CPU per scrape (collect + render on the calling
thread), sample duration and process CPU per sample (devices + 32 concurrent reads + energy).

Run: .venv/bin/python bench/pods.py [--seconds S] [--interval S]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, start_http_server

from devices.simulated import SimulatedGpu
from exporter.collector import ExporterCollector
from exporter.exposition import render as eo_render
from exporter.pods.accounting import Accountant, PodKey
from exporter.pods.collector import PodCollector, PodSource
from exporter.pods.kubelet import PodResourcesClient
from exporter.pods.owners import PodMeta, Workload
from exporter.pods.sampler import PodSampler, StaticPodMetadata
from exporter.pods.scrape import AppReader
from tests.support.pods import VllmServer, start_kubelet

GPUS, PODS_PER_GPU = 8, 4


def serve_vllm(count: int, conn: Connection) -> None:
    servers = [VllmServer() for _ in range(count)]
    conn.send([s.port for s in servers])
    while not conn.poll(0.05):
        for i, s in enumerate(servers):
            s.finish(1 + i % 3, prompt=100, generation=200, latency_s=0.2 + 0.1 * (i % 5))
    for s in servers:
        s.stop()


def serve_text(body: Callable[[], bytes]) -> ThreadingHTTPServer:
    """/metrics from a bytes-returning callable, as eo-exporter appends the pod text to its own."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def scrape_for(
    url: str, seconds: float, after_each: Callable[[], None] = lambda: None
) -> tuple[list[float], int]:
    """Scrape ``url`` over HTTP for ``seconds``: each scrape's latency in seconds and the last body's
    size in bytes. ``after_each`` runs after every scrape, outside its timing."""
    latency: list[float] = []
    size = 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        w0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as resp:
            size = len(resp.read())
        latency.append(time.perf_counter() - w0)
        after_each()
        time.sleep(0.01)
    return latency, size


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="scraping time per path (default 12)")
    parser.add_argument("--interval", type=float, default=5.0, help="sampler interval in seconds (default 5)")
    args = parser.parse_args()

    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=serve_vllm, args=(GPUS * PODS_PER_GPU, child), daemon=True)
    proc.start()
    ports = parent.recv()

    tmp = Path(tempfile.mkdtemp(prefix="eo-bench-pods-"))
    grpc_server, kubelet = start_kubelet(tmp / "kubelet.sock")
    gpus = [SimulatedGpu(i, load=lambda: 4.0) for i in range(GPUS)]
    metas = {}
    for n, port in enumerate(ports):
        gpu = gpus[n // PODS_PER_GPU]
        name = f"llama-{n:02d}"
        kubelet.pods[("bench", name)] = {"vllm": [("nvidia.com/gpu", [f"{gpu.uuid}::{n % PODS_PER_GPU}"])]}
        annotations = {"energy-orchestrator.io/metrics-port": str(port)}
        metas[PodKey("bench", name)] = PodMeta(
            Workload("Deployment", f"llama-{n % 8}"), "127.0.0.1", annotations, {}
        )

    sampler = PodSampler(
        PodResourcesClient(str(tmp / "kubelet.sock")),
        StaticPodMetadata(metas),
        lambda: {g.uuid: g.total_energy_mj() / 1000 for g in gpus},
        AppReader(timeout_s=0.5),
        Accountant(),
        interval_s=args.interval,
    )
    # Samples in the foreground first, to time them alone.
    sample_wall, sample_cpu = [], []
    for _ in range(20):
        c0, w0 = time.process_time(), time.perf_counter()
        snap = sampler.sample_once()
        sample_wall.append(time.perf_counter() - w0)
        sample_cpu.append(time.process_time() - c0)
        time.sleep(0.1)
    assert snap.up and len(snap.pods) == GPUS * PODS_PER_GPU, "bench setup broken"

    collector = PodCollector(sampler, "bench-node", max_age_s=10)
    registry = CollectorRegistry()
    registry.register(collector)
    client_server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    exporter_registry = CollectorRegistry()
    exporter_registry.register(ExporterCollector([PodSource(collector)]))
    text_server = serve_text(lambda: eo_render(exporter_registry))
    sampler.start()
    results = {}
    for label, port, render_once in (
        (
            "eo-exporter render (families reused per sample)",
            text_server.server_port,
            lambda: eo_render(exporter_registry),
        ),
        ("prometheus_client registry", client_server.server_port, lambda: generate_latest(registry)),
    ):
        cpu: list[float] = []

        def time_render(render: Callable[[], object] = render_once, into: list[float] = cpu) -> None:
            t0 = time.thread_time()
            render()
            into.append(time.thread_time() - t0)

        latency, size = scrape_for(f"http://127.0.0.1:{port}/metrics", args.seconds, time_render)
        results[label] = (latency, cpu, size)
    sampler.stop()
    for server in (client_server, text_server):
        server.shutdown()
        server.server_close()
    grpc_server.stop(None)
    shutil.rmtree(tmp, ignore_errors=True)
    parent.send("stop")
    proc.join(timeout=5)

    ms = 1000
    pods = GPUS * PODS_PER_GPU
    print(
        f"pods bench: {GPUS} GPUs x {PODS_PER_GPU} time-sliced pods = {pods} pods, "
        f"sampler every {args.interval:g} s"
    )
    for label, (latency, cpu, size) in results.items():
        print(f"  {label}: /metrics {size / 1024:.1f} KiB, {len(latency)} scrapes")
        print(
            f"    scrape latency (HTTP GET)  p50 {statistics.median(latency) * ms:.2f} ms  "
            f"p99 {pct(latency, 0.99) * ms:.2f} ms  max {max(latency) * ms:.2f} ms"
        )
        mean_cpu, p99_cpu = statistics.mean(cpu) * ms, pct(cpu, 0.99) * ms
        print(f"    CPU per scrape             mean {mean_cpu:.2f} ms  p99 {p99_cpu:.2f} ms")
    print(
        f"  sample (off scrape path)   wall p50 {statistics.median(sample_wall) * ms:.1f} ms  "
        f"max {max(sample_wall) * ms:.1f} ms; process CPU mean {statistics.mean(sample_cpu) * ms:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
