"""Benchmark eo-scaler's GetMetrics against a real Prometheus, versus querying Prometheus per poll.

Setup: a fixture exporter publishing N workloads (one ScaledObject each), a real Prometheus scraping it
with the KPI recording rules, and ``eo-scaler`` as a separate process pinned to one CPU core. Phase 1
polls every ScaledObject concurrently through gRPC (GetMetrics, as KEDA's HPA path does) for a fixed
time; phase 2 sends the same per-poll PromQL straight to Prometheus, which is what KEDA's built-in
prometheus scaler does on every poll. Prints OK answers per second, p50/p99 latency of the OK answers,
the answers that were not OK (counted by status, per phase: a figure made of UNAVAILABLE answers would
measure the error path), and how many Prometheus queries the scaler sent per poll (from its own /metrics).
The fixture publishes the evidence the scaler needs before it answers a number (absence is not zero):
the pods heartbeat, each pod's ``eo_gpu_pod_info`` and ``eo_pod_metrics_up``. Exits 1 when a phase has
no OK answer.

    python bench/scaler_polls.py [--scaledobjects 1000] [--seconds 10] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from common.metrics_server import registry_renderer, serve_metrics
from common.quantiles import bucket_quantile, nearest_rank
from demo.prometheus import Prometheus
from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc
from scaler.metadata import parse_metadata
from scaler.queries import build_query

RULES = {
    "groups": [
        {
            "name": "eo-bench-kpis",
            "rules": [
                {
                    "record": "namespace_workload:eo_pod_requests:rate5m",
                    "expr": "sum by (namespace, workload) (rate(eo_pod_requests_total[10s]))",
                }
            ],
        }
    ]
}


class Workloads(Collector):
    """What the exporter on one node (``n1``) publishes for N workloads of one pod each: the pods
    collector's heartbeat, each pod's GPU (``eo_gpu_pod_info``), its inference server read
    (``eo_pod_metrics_up``), its request counter and latency histogram. The scaler answers a number
    only from this positive evidence (absence is not zero); without it every poll is UNAVAILABLE."""

    def __init__(self, n: int) -> None:
        self.n, self.t0 = n, time.time()

    def collect(self) -> Iterator[Any]:
        elapsed = time.time() - self.t0
        up = GaugeMetricFamily("eo_exporter_collector_up", "bench", labels=["collector"])
        up.add_metric(["pods"], 1)
        yield up
        labels = ["node", "namespace", "pod", "workload"]
        info = GaugeMetricFamily("eo_gpu_pod_info", "bench", labels=[*labels, "uuid", "container"])
        metrics_up = GaugeMetricFamily("eo_pod_metrics_up", "bench", labels=labels)
        req = CounterMetricFamily("eo_pod_requests", "bench", labels=labels)
        lat = HistogramMetricFamily("eo_pod_request_latency_seconds", "bench", labels=labels)
        for i in range(self.n):
            lv = ["n1", "bench", f"wl{i}-0", f"wl{i}"]
            info.add_metric([*lv, f"GPU-bench-{i:04d}", "server"], 1)
            metrics_up.add_metric(lv, 1)
            count = (1 + i % 20) * elapsed
            req.add_metric(lv, count)
            lat.add_metric(lv, [("0.25", 0.0), ("0.5", count), ("+Inf", count)], sum_value=0.3 * count)
        yield info
        yield metrics_up
        yield req
        yield lat


def metadata(i: int) -> dict[str, str]:
    return {"workload": f"wl{i}", "latencySloSeconds": "2", "replicaCapacityRps": "4", "maxReplicas": "50"}


@dataclass
class Phase:
    """One phase's answers: the time of each OK answer, and the non-OK ones counted by status."""

    latencies: list[float] = field(default_factory=list)
    not_ok: Counter[str] = field(default_factory=Counter)

    def describe_not_ok(self) -> str:
        return ", ".join(f"{code} {count}" for code, count in self.not_ok.most_common()) or "none"


async def poll_scaler(port: int, n: int, seconds: float, concurrency: int) -> tuple[Phase, Phase]:
    """(warm-up, measured): KEDA's first poll of each ScaledObject, then every one polled for ``seconds``."""
    refs = [
        pb.ScaledObjectRef(name=f"so{i}", namespace="bench", scalerMetadata=metadata(i)) for i in range(n)
    ]
    warm, measured = Phase(), Phase()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ExternalScalerStub(channel)
        # Warm-up: KEDA's first poll of each ScaledObject fills the cache.
        for start in range(0, n, concurrency):
            for attempt in range(5):  # an overloaded 2-core box can miss a scrape; retry like KEDA would
                answers = await asyncio.gather(
                    *(
                        stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=r), timeout=10)
                        for r in refs[start : start + concurrency]
                    ),
                    return_exceptions=True,
                )
                failed = [a for a in answers if isinstance(a, BaseException)]
                if not failed or attempt == 4:
                    for answer in failed:
                        code = answer.code() if isinstance(answer, grpc.aio.AioRpcError) else answer
                        warm.not_ok[str(code)] += 1
                    break
                await asyncio.sleep(1)
        deadline = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    await stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=refs[i % n]), timeout=3)
                except grpc.aio.AioRpcError as exc:
                    measured.not_ok[str(exc.code())] += 1
                else:
                    measured.latencies.append(time.perf_counter() - t)
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return warm, measured


def poll_prometheus(url: str, n: int, seconds: float, concurrency: int) -> Phase:
    """KEDA's built-in prometheus scaler: one query per ScaledObject per poll, straight to Prometheus."""
    queries = [build_query(parse_metadata(metadata(i), "bench")) for i in range(n)]
    phase = Phase()
    deadline = time.perf_counter() + seconds

    def worker(k: int) -> None:
        i = k
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            q = urllib.parse.urlencode({"query": queries[i % n]})
            try:
                with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=10) as resp:
                    answer = json.loads(resp.read())
            except (OSError, ValueError) as exc:
                phase.not_ok[type(exc).__name__] += 1
            else:
                if answer.get("status") == "success" and answer["data"]["result"]:
                    phase.latencies.append(time.perf_counter() - t)
                else:
                    phase.not_ok["empty or failed answer"] += 1
            i += concurrency

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    return phase


def scaler_samples(metrics_port: int) -> list[Any]:
    """Every sample eo-scaler's /metrics publishes now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def scaler_queries(metrics_port: int) -> float:
    return sum(
        s.value for s in scaler_samples(metrics_port) if s.name == "eo_scaler_prometheus_queries_total"
    )


def server_durations(metrics_port: int) -> dict[float, float]:
    """eo-scaler's own GetMetrics duration histogram: cumulative count per bucket bound (s)."""
    return {
        float(s.labels["le"]): s.value
        for s in scaler_samples(metrics_port)
        if s.name == "eo_scaler_request_duration_seconds_bucket" and s.labels.get("method") == "GetMetrics"
    }


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """The q-quantile of the calls between two cumulative snapshots, as PromQL's histogram_quantile."""
    delta = [(bound, after[bound] - before.get(bound, 0.0)) for bound in sorted(after)]
    return bucket_quantile(q, delta) or 0.0


def isolate_a_core(prometheus_pid: int | None) -> int | None:
    """The last CPU for eo-scaler alone; Prometheus and this client move to the others.

    On a small machine Prometheus answering the scaler's refreshes would otherwise preempt the scaler
    on its own core, and the tail measured would be the machine's, not the scaler's (in a cluster,
    Prometheus runs elsewhere).
    """
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    others = set(cores[:-1])
    os.sched_setaffinity(0, others)
    if prometheus_pid is not None:
        for task in Path(f"/proc/{prometheus_pid}/task").iterdir():  # every Go thread, not just the first
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), others)
    return cores[-1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scaledobjects", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--light-concurrency", type=int, default=2)
    parser.add_argument("--cache-ttl-seconds", type=float, default=10.0)
    args = parser.parse_args()
    n = args.scaledobjects

    registry = CollectorRegistry()
    registry.register(Workloads(n))
    exporter = serve_metrics(registry_renderer(registry), address="127.0.0.1", port=0, name="eo-bench")
    rules = Path(tempfile.mkdtemp(prefix="eo-bench-")) / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    prom = Prometheus(targets=[f"127.0.0.1:{exporter.port}"], scrape_interval_s=2.0, rule_files=[rules])
    prom.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        prom.wait_for(f'namespace_workload:eo_pod_requests:rate5m{{workload="wl{n - 1}"}} > 0', timeout_s=60)
        env = {
            **os.environ,
            "EO_PORT": "0",
            "EO_METRICS_PORT": "0",
            "EO_LISTEN_ADDRESS": "127.0.0.1",
            "EO_METRICS_ADDRESS": "127.0.0.1",
            "EO_PROMETHEUS_URL": prom.url,
            "EO_CACHE_TTL_SECONDS": str(args.cache_ttl_seconds),
            "EO_LOG_LEVEL": "warning",
        }
        argv = [sys.executable, "-m", "scaler.server_main"]
        core = isolate_a_core(prom.pid)
        if core is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(core), *argv]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        port = int(line.split("grpc=")[1].split()[0])
        metrics_port = int(line.split("metrics=")[1].split()[0])

        before = scaler_queries(metrics_port)
        t0 = time.perf_counter()
        warm, heavy = asyncio.run(poll_scaler(port, n, args.seconds, args.concurrency))
        wall = time.perf_counter() - t0
        after = scaler_queries(metrics_port)
        measured_queries = max(after - before - n, 0.0)  # minus the warm-up fill, one per ScaledObject
        # Latency phase: a light concurrency, so the figures are service time rather than queueing.
        server_before = server_durations(metrics_port)
        _, light = asyncio.run(poll_scaler(port, n, args.seconds, args.light_concurrency))
        server_after = server_durations(metrics_port)
        direct = poll_prometheus(prom.url, n, args.seconds, args.concurrency)
        direct_light = poll_prometheus(prom.url, n, args.seconds, args.light_concurrency)

        def row(name: str, phase: Phase) -> str:
            values = phase.latencies
            if not values:
                return f"  {name:<44}: no OK answer; not OK: {phase.describe_not_ok()}"
            rate = len(values) / args.seconds
            p50, p99 = statistics.median(values) * 1e3, nearest_rank(values, 0.99) * 1e3
            return (
                f"  {name:<44}: {rate:7.0f} OK polls/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                f"({len(values)} OK; not OK: {phase.describe_not_ok()})"
            )

        pinned = (
            f"core {core}" if core is not None and shutil.which("taskset") else "no core (taskset missing)"
        )
        print(
            f"eo-scaler bench: {n} ScaledObjects on {n} workloads, {args.seconds:.0f}s per phase, "
            f"cache TTL {args.cache_ttl_seconds:.0f}s, eo-scaler process pinned to {pinned}"
        )
        print(f"  warm-up (first poll of each ScaledObject): not OK: {warm.describe_not_ok()}")
        print(row(f"eo-scaler GetMetrics, {args.concurrency} in flight", heavy))
        print(row(f"eo-scaler GetMetrics, {args.light_concurrency} in flight", light))
        print(row(f"straight to Prometheus, {args.concurrency} in flight", direct))
        print(row(f"straight to Prometheus, {args.light_concurrency} in flight", direct_light))
        phases = (warm, heavy, light, direct, direct_light)
        if not all(p.latencies for p in (heavy, light, direct, direct_light)):
            print("  FAILED: a phase had no OK answer; its figures would measure errors", file=sys.stderr)
            return 1
        print(
            f"  ratio scaler/direct: throughput x{len(heavy.latencies) / len(direct.latencies):.1f}; "
            f"p99 at {args.light_concurrency} in flight "
            f"x{nearest_rank(direct_light.latencies, 0.99) / nearest_rank(light.latencies, 0.99):.1f} lower"
        )
        server_p50 = histogram_quantile(0.5, server_before, server_after) * 1e3
        server_p99 = histogram_quantile(0.99, server_before, server_after) * 1e3
        print(
            f"  eo-scaler's own GetMetrics time at {args.light_concurrency} in flight "
            f"(eo_scaler_request_duration_seconds, OK and not): p50 {server_p50:.2f} ms  "
            f"p99 {server_p99:.2f} ms (the client's figure adds its own and the network stack's time on "
            "the shared cores)"
        )
        per_query = len(heavy.latencies) / measured_queries if measured_queries else float("inf")
        print(
            f"  Prometheus queries sent by eo-scaler in the {args.concurrency}-in-flight phase: "
            f"{measured_queries:.0f} for {len(heavy.latencies)} OK polls ({per_query:.0f} polls per query; "
            f"the built-in scaler sends 1 per poll); wall {wall:.1f}s"
        )
        not_ok = sum(sum(p.not_ok.values()) for p in phases)
        if not_ok:
            print(f"  {not_ok} answers were not OK (listed per phase above)", file=sys.stderr)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
            if proc.stdout:
                proc.stdout.close()
        prom.stop()
        shutil.rmtree(rules.parent, ignore_errors=True)
        exporter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
