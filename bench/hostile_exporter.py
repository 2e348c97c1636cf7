"""Exporter under a bad-pod mix: RSS and scrape latency while some pods' servers misbehave.

Setup (the pieces of bench/pods.py): 8 simulated GPUs x 4 time-sliced pods = 32 pods, a real kubelet
PodResources gRPC server on a unix socket, the background sampler every ``--interval`` seconds with the
exporter's default read deadline (1 s) and body cap. Of the 32 pods' servers (in child processes, so
their memory and CPU are not the exporter's) 16 are vLLM-format servers finishing requests all the
time; the other 16 misbehave, 4 each: trickle (a byte every 0.5 s), hang (never answer), send a legal
15 MB /metrics page (vLLM's metrics plus 150,000 series of one family), or a gzip bomb (512 MiB of
zeros in ~500 KiB).

Prints: exporter process RSS (start, end, peak) against the DaemonSet's 256 Mi limit, scrape latency
over HTTP (p50/p99/max), sample duration, and how often the 16 good pods were up (they must always
be) and the bad ones down.

Run: .venv/bin/python bench/hostile_exporter.py [--seconds S] [--interval S]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from bench.pods import GPUS, PODS_PER_GPU, pct, scrape_for, serve_text, serve_vllm
from devices.simulated import SimulatedGpu
from exporter.collector import ExporterCollector
from exporter.exposition import render as eo_render
from exporter.pods.accounting import Accountant, PodKey
from exporter.pods.collector import PodCollector, PodSource
from exporter.pods.kubelet import PodResourcesClient
from exporter.pods.owners import PodMeta, Workload
from exporter.pods.sampler import PodSampler, Snapshot, StaticPodMetadata
from exporter.pods.scrape import AppReader
from tests.support.hostile_http import Behaviour, gzip_bomb, hostile_server
from tests.support.pods import VllmServer, padding_families, start_kubelet

BAD_MODES = ("trickle", "hang", "legal_15mb", "gzip_bomb")
LIMIT_MIB = 256  # manifests/base/exporter-daemonset.yaml, resources.limits.memory


def serve_hostile(each: int, conn: Connection) -> None:
    """Serve ``each`` peers of each bad mode; send their ports (in BAD_MODES order)."""
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (the peers' tracebacks when a read is cut off)
    page = VllmServer().render() + padding_families(15 * 1000 * 1000)
    gzip_bomb(512 * 1024 * 1024)  # built once, before the first read asks for it

    def legal_page(path: str, _: bytes) -> tuple[int, str, bytes]:
        return 200, "text/plain; version=0.0.4", page

    behaviours = {
        "trickle": lambda: Behaviour(mode="trickle", trickle_interval_s=0.5),
        "hang": lambda: Behaviour(mode="hang"),
        "legal_15mb": lambda: Behaviour(handler=legal_page),
        "gzip_bomb": lambda: Behaviour(mode="gzip_bomb", bomb_bytes=512 * 1024 * 1024),
    }
    with contextlib.ExitStack() as stack:
        ports = []
        for mode in BAD_MODES:
            for _ in range(each):
                url, _ = stack.enter_context(hostile_server(behaviours[mode]()))
                ports.append(int(url.rsplit(":", 1)[1]))
        conn.send(ports)
        conn.recv()


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="scraping time (default 30)")
    parser.add_argument("--interval", type=float, default=5.0, help="sampler interval in seconds (default 5)")
    parser.add_argument(
        "--bad-each", type=int, default=4, help="pods of each bad mode (default 4; 0: all 32 good)"
    )
    args = parser.parse_args()
    # The exporter logs each pod's first failed read; the figures are what this script is for.
    logging.getLogger("exporter.pods.scrape").setLevel(logging.ERROR)

    pods = GPUS * PODS_PER_GPU
    bad_each = args.bad_each
    good_count = pods - bad_each * len(BAD_MODES)
    spawn = mp.get_context("spawn")
    good_parent, good_child = mp.Pipe()
    good_proc = spawn.Process(target=serve_vllm, args=(good_count, good_child), daemon=True)
    good_proc.start()
    bad_parent, bad_child = mp.Pipe()
    bad_proc = spawn.Process(target=serve_hostile, args=(bad_each, bad_child), daemon=True)
    bad_proc.start()
    kinds = ["good"] * good_count + [m for m in BAD_MODES for _ in range(bad_each)]
    ports = good_parent.recv() + bad_parent.recv()

    tmp = Path(tempfile.mkdtemp(prefix="eo-bench-hostile-"))
    grpc_server, kubelet = start_kubelet(tmp / "kubelet.sock")
    gpus = [SimulatedGpu(i, load=lambda: 4.0) for i in range(GPUS)]
    metas, kind_of = {}, {}
    for n, (port, kind) in enumerate(zip(ports, kinds, strict=True)):
        gpu = gpus[n // PODS_PER_GPU]
        name = f"{kind.replace('_', '-')}-{n:02d}"
        kubelet.pods[("bench", name)] = {"vllm": [("nvidia.com/gpu", [f"{gpu.uuid}::{n % PODS_PER_GPU}"])]}
        annotations = {"energy-orchestrator.io/metrics-port": str(port)}
        key = PodKey("bench", name)
        metas[key] = PodMeta(Workload("Deployment", f"llama-{n % 8}"), "127.0.0.1", annotations, {})
        kind_of[key] = kind

    sampler = PodSampler(
        PodResourcesClient(str(tmp / "kubelet.sock")),
        StaticPodMetadata(metas),
        lambda: {g.uuid: g.total_energy_mj() / 1000 for g in gpus},
        AppReader(),  # the exporter's defaults: 1 s deadline, default body cap
        Accountant(),
        interval_s=args.interval,
    )
    durations: list[float] = []
    up_counts = {"good_up": 0, "good_down": 0, "bad_up": 0, "bad_down": 0}

    def record(snapshot: Snapshot) -> None:
        durations.append(snapshot.duration_s)
        for view in snapshot.pods:
            kind = "good" if kind_of[view.key] == "good" else "bad"
            up_counts[f"{kind}_{'up' if view.app_up else 'down'}"] += 1

    sampler.add_listener(record)
    collector = PodCollector(sampler, "bench-node", max_age_s=3 * args.interval + 1)
    exporter_registry = CollectorRegistry()
    exporter_registry.register(ExporterCollector([PodSource(collector)]))
    text_server = serve_text(lambda: eo_render(exporter_registry))
    rss_start, _ = rss_mib()
    cpu_start, wall_start = time.process_time(), time.monotonic()
    sampler.start()
    latency, size = scrape_for(f"http://127.0.0.1:{text_server.server_port}/metrics", args.seconds)
    rss_end, rss_peak = rss_mib()
    cpu_share = (time.process_time() - cpu_start) / (time.monotonic() - wall_start)
    collector_up = collector.up()
    sampler.stop()
    text_server.shutdown()
    text_server.server_close()
    grpc_server.stop(None)
    shutil.rmtree(tmp, ignore_errors=True)
    good_parent.send("stop")
    bad_parent.send("stop")
    good_proc.join(timeout=5)
    bad_proc.join(timeout=5)

    ms = 1000
    print(
        f"hostile exporter bench: {pods} pods ({good_count} good; {bad_each} each of "
        f"{', '.join(BAD_MODES)}), sampler every {args.interval:g} s, {args.seconds:g} s of scrapes"
    )
    print(
        f"  exporter RSS   start {rss_start:.0f} MiB  end {rss_end:.0f} MiB  peak {rss_peak:.0f} MiB "
        f"(DaemonSet limit {LIMIT_MIB} Mi); process CPU {cpu_share:.0%} of a core (scrapes included)"
    )
    print(
        f"  scrape latency p50 {statistics.median(latency) * ms:.2f} ms  p99 {pct(latency, 0.99) * ms:.2f} ms"
        f"  max {max(latency) * ms:.2f} ms  ({len(latency)} scrapes, /metrics {size / 1024:.0f} KiB)"
    )
    print(
        f"  sample duration p50 {statistics.median(durations) * ms:.0f} ms  max {max(durations) * ms:.0f} ms "
        f"({len(durations)} samples)"
    )
    good_total = up_counts["good_up"] + up_counts["good_down"]
    bad_total = up_counts["bad_up"] + up_counts["bad_down"]
    print(
        f"  good pods up in {up_counts['good_up']}/{good_total} pod-samples; bad pods down in "
        f"{up_counts['bad_down']}/{bad_total}; collector up={int(collector_up)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
