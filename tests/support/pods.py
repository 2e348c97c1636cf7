"""Real servers for the pod-attribution tests and benchmark: vLLM-format /metrics, kubelet PodResources
over a unix socket, a Kubernetes API that replays recorded JSON answers, and ``pod_rig``: the whole pod
pipeline (real kubelet socket, real HTTP reads) with a test-driven clock and energy counters."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from exporter.podresources import api_pb2, api_pb2_grpc
from exporter.pods.accounting import Accountant, PodKey
from exporter.pods.collector import PodCollector
from exporter.pods.kubelet import PodResourcesClient
from exporter.pods.owners import PodMeta, Workload
from exporter.pods.sampler import PodSampler, StaticPodMetadata
from exporter.pods.scrape import AppReader

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kube"


@dataclass(frozen=True)
class ServerNames:
    """The sample names one inference server publishes (counters without ``_total``)."""

    requests: str
    prompt: str
    generation: str
    e2e: str
    ttft: str
    itl: str
    waiting: str
    running: str
    kv_cache: str
    finished_reason: bool  # the requests counter carries a finished_reason label
    request_itl: str | None = None  # each request's mean time per output token (None: not published)


VLLM = ServerNames(
    "vllm:request_success",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:e2e_request_latency_seconds",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    finished_reason=True,
    request_itl="vllm:request_time_per_output_token_seconds",
)
SGLANG = ServerNames(
    "sglang:num_requests",
    "sglang:prompt_tokens",
    "sglang:generation_tokens",
    "sglang:e2e_request_latency_seconds",
    "sglang:time_to_first_token_seconds",
    "sglang:inter_token_latency_seconds",
    "sglang:num_queue_reqs",
    "sglang:num_running_reqs",
    "sglang:token_usage",
    finished_reason=False,
    request_itl="sglang:request_time_per_output_token_seconds",
)


class VllmServer:
    """A vLLM-format /metrics endpoint on 127.0.0.1 whose counters and gauges the test advances
    (``names=SGLANG``: the same page in SGLang's names)."""

    def __init__(self, model: str = "meta-llama/Llama-3.1-8B-Instruct", names: ServerNames = VLLM) -> None:
        self.model = model
        self.names = names
        self.delay_s = 0.0
        self.body_override: bytes | None = None
        # Applied to each rendered page: tests corrupt or pad what a real server would send.
        self.transform: Callable[[bytes], bytes] | None = None
        self._lock = threading.Lock()
        self.restart()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if server.delay_s:
                    time.sleep(server.delay_s)
                body = server.body_override if server.body_override is not None else server.render()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def restart(self) -> None:
        """Start the counters again from zero, as a restarted server does."""
        names, model = self.names, ["model_name"]
        with self._lock:
            self.registry = CollectorRegistry()
            labels = ["model_name", "finished_reason"] if names.finished_reason else model
            self._success = Counter(names.requests, "Finished requests.", labels, registry=self.registry)
            self._prompt = Counter(names.prompt, "Prefill tokens.", model, registry=self.registry)
            self._gen = Counter(names.generation, "Generated tokens.", model, registry=self.registry)
            buckets = (0.5, 1.0, 2.5, 5.0, 10.0)
            self._e2e = Histogram(names.e2e, "E2E latency.", model, buckets=buckets, registry=self.registry)
            ttft_buckets = (0.05, 0.1, 0.5)
            self._ttft = Histogram(names.ttft, "TTFT.", model, buckets=ttft_buckets, registry=self.registry)
            itl_buckets = (0.01, 0.025, 0.05, 0.1)
            self._itl = Histogram(names.itl, "ITL.", model, buckets=itl_buckets, registry=self.registry)
            self._request_itl: Histogram | None = None
            if names.request_itl:
                self._request_itl = Histogram(
                    names.request_itl,
                    "Mean ITL per request.",
                    model,
                    buckets=itl_buckets,
                    registry=self.registry,
                )
            self._waiting = Gauge(names.waiting, "Waiting requests.", model, registry=self.registry)
            self._running = Gauge(names.running, "Running requests.", model, registry=self.registry)
            self._kv_cache = Gauge(
                names.kv_cache, "KV-cache usage (1 = full).", model, registry=self.registry
            )
            # Like vLLM, publish the series from the start (gauges and zeroed counters).
            for gauge in (self._waiting, self._running, self._kv_cache):
                gauge.labels(self.model).set(0)
            if names.finished_reason:
                for reason in ("stop", "length"):
                    self._success.labels(self.model, reason)
            else:
                self._success.labels(self.model)
            self._prompt.labels(self.model)
            self._gen.labels(self.model)

    def finish(
        self,
        requests: int,
        prompt: int = 0,
        generation: int = 0,
        latency_s: float = 1.0,
        reason: str = "stop",
        itl_s: float = 0.02,
        request_itl_s: float | None = None,
    ) -> None:
        """``requests`` finished, each with one inter-token latency observation of ``itl_s`` and a mean
        time per output token of ``request_itl_s`` (by default ``itl_s``)."""
        with self._lock:
            labels = (self.model, reason) if self.names.finished_reason else (self.model,)
            self._success.labels(*labels).inc(requests)
            self._prompt.labels(self.model).inc(prompt)
            self._gen.labels(self.model).inc(generation)
            for _ in range(requests):
                self._e2e.labels(self.model).observe(latency_s)
                self._ttft.labels(self.model).observe(latency_s / 10)
                self._itl.labels(self.model).observe(itl_s)
                if self._request_itl is not None:
                    self._request_itl.labels(self.model).observe(
                        itl_s if request_itl_s is None else request_itl_s
                    )

    def set_load(self, waiting: float, running: float, kv_cache_usage: float) -> None:
        """The queue and saturation gauges, as the server would report them now."""
        with self._lock:
            self._waiting.labels(self.model).set(waiting)
            self._running.labels(self.model).set(running)
            self._kv_cache.labels(self.model).set(kv_cache_usage)

    def render(self) -> bytes:
        with self._lock:
            text = generate_latest(self.registry)
        return self.transform(text) if self.transform is not None else text

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class PodResourcesServicer(api_pb2_grpc.PodResourcesListerServicer):
    """The kubelet side: answers List with whatever ``pods`` holds now."""

    def __init__(self) -> None:
        # (namespace, pod) -> {container: [(resource_name, [device ids])]}
        self.pods: dict[tuple[str, str], dict[str, list[tuple[str, list[str]]]]] = {}
        self.calls = 0

    def List(
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        self.calls += 1
        return api_pb2.ListPodResourcesResponse(
            pod_resources=[
                api_pb2.PodResources(
                    name=pod,
                    namespace=ns,
                    containers=[
                        api_pb2.ContainerResources(
                            name=container,
                            devices=[
                                api_pb2.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in devs
                            ],
                        )
                        for container, devs in containers.items()
                    ],
                )
                for (ns, pod), containers in self.pods.items()
            ]
        )


def start_kubelet(socket_path: Path) -> tuple[grpc.Server, PodResourcesServicer]:
    servicer = PodResourcesServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    return server, servicer


class KubeReplay:
    """A Kubernetes API on 127.0.0.1 that answers from recorded JSON files.

    GET /api/v1/pods (list or ``watch=true``), /apis/apps/v1/namespaces/NS/replicasets/NAME and
    /apis/batch/v1/namespaces/NS/jobs/NAME. Watch answers stream ``watch_events`` (queued by the test)
    as JSON lines, then end after ``watch_hold_s`` (the server-side ``timeoutSeconds`` is ignored, as a
    misbehaving proxy would). ``list_error`` answers lists with a recorded Status instead;
    ``watch_raw`` is streamed as is before the events (a broken or hostile stream).
    """

    def __init__(self, pod_list: dict[str, Any], objects: Sequence[dict[str, Any]]) -> None:
        self.pod_list = pod_list
        self.objects = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects}
        self.watch_events: list[dict[str, Any]] = []
        self.watch_hold_s = 0.3
        self.watch_raw = b""
        self.list_error: dict[str, Any] | None = None
        self.requests: list[str] = []
        self._cond = threading.Condition()
        self._closing = threading.Event()
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                replay.requests.append(self.path)
                url = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(url.query)
                parts = url.path.strip("/").split("/")
                if url.path == "/api/v1/pods" and query.get("watch") == ["true"]:
                    return self._watch()
                if url.path == "/api/v1/pods":
                    if replay.list_error is not None:
                        return self._json(replay.list_error["code"], replay.list_error)
                    return self._json(200, replay.pod_list)
                kinds = {"replicasets": "ReplicaSet", "jobs": "Job"}
                if len(parts) == 7 and parts[3] == "namespaces" and parts[5] in kinds:
                    obj = replay.objects.get((kinds[parts[5]], parts[4], parts[6]))
                    if obj is not None:
                        return self._json(200, obj)
                return self._json(
                    404,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "NotFound",
                        "code": 404,
                    },
                )

            def _json(self, code: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _watch(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    raw = replay.watch_raw
                    for start in range(0, len(raw), 64 * 1024):
                        self._chunk(raw[start : start + 64 * 1024])
                    deadline = time.monotonic() + replay.watch_hold_s
                    while time.monotonic() < deadline and not replay._closing.is_set():
                        with replay._cond:
                            events, replay.watch_events = replay.watch_events, []
                            if not events:
                                replay._cond.wait(0.05)
                        for event in events:
                            self._chunk(json.dumps(event).encode() + b"\n")
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on this stream

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def push(self, event_type: str, obj: dict[str, Any]) -> None:
        with self._cond:
            self.watch_events.append({"type": event_type, "object": obj})
            self._cond.notify_all()

    def stop(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def set_value(text: bytes, line_start: bytes, value: bytes) -> bytes:
    """``text`` with the value of every sample line starting with ``line_start`` replaced."""
    lines = text.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(line_start):
            lines[i] = line.rsplit(b" ", 1)[0] + b" " + value
    return b"\n".join(lines)


def duplicate_lines(text: bytes, line_start: bytes) -> bytes:
    """``text`` with every sample line starting with ``line_start`` listed twice."""
    out = []
    for line in text.split(b"\n"):
        out.append(line)
        if line.startswith(line_start):
            out.append(line)
    return b"\n".join(out)


def padding_families(size_bytes: int) -> bytes:
    """Legal Prometheus text of about ``size_bytes``: many series of a family no profile reads (as a
    server with thousands of LoRA adapters or models publishes)."""
    head = b"# HELP vllm:adapter_requests_total Requests per adapter.\n# TYPE vllm:adapter_requests_total counter\n"
    line = b'vllm:adapter_requests_total{adapter="adapter-%07d",model_name="meta-llama/Llama-3.1-8B"} 12.0\n'
    count = max(size_bytes // len(line % 0), 1)
    return head + b"".join(line % i for i in range(count))


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


RIG_G0 = "GPU-00000000-0000-4000-8000-000000000000"
RIG_G1 = "GPU-11111111-1111-4111-8111-111111111111"
RIG_NODE = "gpu-node-1"


class SteppedClock:
    """The sampler's clock, advanced by the test (the HTTP reads still run in real time)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class PodRig:
    kubelet: PodResourcesServicer
    servers: dict[str, VllmServer]
    metadata: StaticPodMetadata
    energy: dict[str, float]
    sampler: PodSampler
    registry: CollectorRegistry
    clock: SteppedClock

    def add_pod(
        self,
        name: str,
        devices: list[str],
        resource: str = "nvidia.com/gpu",
        server: bool = True,
        port: int | None = None,
        names: ServerNames = VLLM,
        annotations: dict[str, str] | None = None,
    ) -> None:
        """A pod holding ``devices``; its metrics come from a new VllmServer (in ``names``), or from
        ``port``."""
        self.kubelet.pods[("ml", name)] = {"server": [(resource, devices)]}
        annotations = dict(annotations or {})
        if server and port is None:
            self.servers[name] = VllmServer(names=names)
            port = self.servers[name].port
        if port is not None:
            annotations["energy-orchestrator.io/metrics-port"] = str(port)
        self.metadata.set(
            PodKey("ml", name), PodMeta(Workload("Deployment", f"wl-{name}"), "127.0.0.1", annotations, {})
        )

    def remove_pod(self, name: str) -> None:
        del self.kubelet.pods[("ml", name)]

    def sample(self, dt_s: float = 5.0) -> float:
        self.clock.t += dt_s
        start = time.perf_counter()
        self.sampler.sample_once()
        return time.perf_counter() - start

    def value(self, metric: str, pod: str, **labels: str) -> float | None:
        full = {"node": RIG_NODE, "namespace": "ml", "pod": pod, "workload": f"wl-{pod}", **labels}
        return self.registry.get_sample_value(metric, full)

    def collector_up(self) -> float | None:
        return self.registry.get_sample_value("eo_exporter_collector_up", {"collector": "pods"})


@contextmanager
def pod_rig(tmp_path: Path, reader: AppReader | None = None) -> Iterator[PodRig]:
    server, kubelet = start_kubelet(tmp_path / "kubelet.sock")
    client = PodResourcesClient(str(tmp_path / "kubelet.sock"))
    metadata = StaticPodMetadata({})
    energy: dict[str, float] = {RIG_G0: 0.0, RIG_G1: 0.0}
    clock = SteppedClock()
    sampler = PodSampler(
        client,
        metadata,
        lambda: dict(energy),
        reader or AppReader(timeout_s=0.3),
        Accountant(grace_s=60),
        clock=clock,
    )
    registry = CollectorRegistry()
    registry.register(PodCollector(sampler, RIG_NODE, max_age_s=30, clock=clock))
    rig = PodRig(kubelet, {}, metadata, energy, sampler, registry, clock)
    try:
        yield rig
    finally:
        sampler.stop()
        client.close()
        server.stop(None)
        for s in rig.servers.values():
            s.stop()
