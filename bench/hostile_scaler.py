"""Replay the worst inputs of issue 11 against a real ``eo-scaler`` process and print what it costs.

1. 2,000 hostile polls (invalid 100 KB ``workload`` values, 60 KB ``customHeaders``, distinct
   ``serverAddress`` values), with default flags and with ``--allow-any-server-address``: the scaler's
   RSS before and after, and the size and scrape time of its ``/metrics``
   (targets: RSS growth < 50 MB, ``/metrics`` < 1 MB).
2. A healthy workload's GetMetrics answer times while 70 other workloads are served by a Prometheus
   that trickles one byte every 0.2 s.

Prints figures only (no assertions). ``python bench/hostile_scaler.py [--polls N]``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc
from tests.support.hostile_http import Behaviour, hostile_server

META = {"workload": "llama", "latencySloSeconds": "2", "replicaCapacityRps": "10", "maxReplicas": "10"}
GOOD = {
    "heartbeat_age": "1",
    "visible_pods": "2",
    "replicas": "2",
    "unwatched_nodes": "0",
    "load": "16",
    "peak": "16",
    "latency": "1.0",
    "recent_requests": "100",
}
_PART_RE = re.compile(r'"eo_part", "([a-z_]+)"')


def good_prometheus(_path: str, payload: bytes) -> tuple[int, str, bytes]:
    """Answers every part the combined query asks for, as a healthy pipeline would."""
    query = urllib.parse.parse_qs(payload.decode()).get("query", [""])[0]
    series = [
        {"metric": {"eo_part": name}, "value": [time.time(), GOOD[name]]}
        for name in _PART_RE.findall(query)
        if name in GOOD
    ]
    doc = {"status": "success", "data": {"resultType": "vector", "result": series}}
    return 200, "application/json", json.dumps(doc).encode()


@contextmanager
def scaler_process(prometheus_url: str, *extra: str) -> Iterator[tuple[int, int, int]]:
    """``(pid, grpc_port, metrics_port)`` of a running eo-scaler."""
    argv = [sys.executable, "-m", "scaler.server_main", "--listen-address", "127.0.0.1", "--port", "0"]
    argv += ["--metrics-address", "127.0.0.1", "--metrics-port", "0", "--prometheus-url", prometheus_url]
    argv += ["--prometheus-timeout-seconds", "1", "--log-level", "WARNING", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"grpc=(\d+) metrics=(\d+)", line)
        if not found:
            raise RuntimeError(f"eo-scaler did not start: {line!r}")
        yield proc.pid, int(found.group(1)), int(found.group(2))
    finally:
        proc.terminate()
        proc.wait(10)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape(metrics_port: int) -> tuple[int, float]:
    start = time.monotonic()
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).read()
    return len(body), time.monotonic() - start


def call(stub: pb_grpc.ExternalScalerStub, meta: dict[str, str]) -> tuple[str, float]:
    ref = pb.ScaledObjectRef(name="so", namespace="inference", scalerMetadata=meta)
    start = time.monotonic()
    try:
        stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref), timeout=10)
        code = "OK"
    except grpc.RpcError as exc:
        code = exc.code().name
    return code, time.monotonic() - start


def hostile_metadata(i: int) -> dict[str, str]:
    kind = i % 3
    if kind == 0:
        return {**META, "workload": f"Invalid_{i}_" + "x" * 100_000}
    if kind == 1:
        return {**META, "workload": f"w{i}", "customHeaders": "X-Scope-OrgID=" + "v" * 60_000}
    return {**META, "workload": f"w{i}", "serverAddress": f"http://127.0.0.{1 + i % 250}:{1024 + i}/p{i}"}


def hostile_polls(prometheus_url: str, polls: int, *flags: str) -> None:
    with scaler_process(prometheus_url, *flags) as (pid, port, metrics_port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ExternalScalerStub(channel)
            call(stub, META)
            before = rss_mb(pid)
            codes: dict[str, int] = {}
            with ThreadPoolExecutor(8) as pool:
                for code, _ in pool.map(lambda i: call(stub, hostile_metadata(i)), range(polls)):
                    codes[code] = codes.get(code, 0) + 1
            after = rss_mb(pid)
        size, took = scrape(metrics_port)
    label = " ".join(flags) or "default flags"
    print(f"{polls} hostile polls ({label}): answers {codes}")
    print(f"  scaler RSS {before:.0f} -> {after:.0f} MB (growth {after - before:+.1f} MB, target < 50)")
    print(f"  /metrics {size / 1024:.1f} KiB (target < 1,024 KiB), scraped in {took * 1000:.1f} ms")


def trickle_neighbour(prometheus_url: str, seconds: float) -> None:
    with (
        hostile_server(Behaviour(mode="trickle", trickle_interval_s=0.2)) as (slow_url, slow),
        scaler_process(prometheus_url, "--allow-any-server-address", "true") as (_pid, port, _metrics),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = pb_grpc.ExternalScalerStub(channel)
        stop = threading.Event()
        slow_codes: dict[str, int] = {}
        slow_times: list[float] = []

        def slow_loop(i: int) -> None:
            meta = {**META, "workload": f"slow-{i}", "serverAddress": slow_url}
            while not stop.is_set():
                code, took = call(stub, meta)
                slow_codes[code] = slow_codes.get(code, 0) + 1
                slow_times.append(took)

        threads = [threading.Thread(target=slow_loop, args=(i,), daemon=True) for i in range(70)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        healthy: list[float] = []
        healthy_codes: dict[str, int] = {}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            code, took = call(stub, META)
            healthy_codes[code] = healthy_codes.get(code, 0) + 1
            healthy.append(took)
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(15)
        requests_to_slow = len(slow.requests)
    healthy.sort()
    p99 = healthy[min(len(healthy) - 1, int(len(healthy) * 0.99))]
    print(f"healthy workload while 70 workloads sit on a trickling Prometheus ({seconds:.0f} s):")
    print(
        f"  healthy answers {healthy_codes}: p50 {statistics.median(healthy) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {healthy[-1] * 1000:.1f} ms"
    )
    print(
        f"  slow workloads' answers {slow_codes}: max {max(slow_times):.2f} s per poll "
        f"(deadline 1 s); {requests_to_slow} queries reached the trickling server"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=2000)
    parser.add_argument("--trickle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with hostile_server(Behaviour(handler=good_prometheus)) as (url, _):
        hostile_polls(url, args.polls)
        hostile_polls(url, args.polls, "--allow-any-server-address", "true")
        trickle_neighbour(url, args.trickle_seconds)


if __name__ == "__main__":
    main()
