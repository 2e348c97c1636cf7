"""A simulated vLLM server's ``/metrics``: the counters, histograms and gauges a real vLLM publishes.

The demo's replicas are modelled by ``sim.server`` (the simulator's continuous-batching model); each
ready replica gets one of these real HTTP endpoints, so the exporter's pod attribution and the sidecar's
latency source read it exactly as they would read vLLM in a pod.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from sim.observe import ITL_BUCKETS_S, LATENCY_BUCKETS_S

# vLLM's bucket boundaries for vllm:time_to_first_token_seconds.
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class MetricsEndpoint:
    """A registry served on ``http://127.0.0.1:<port>/metrics`` from a thread, until ``stop()``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def _serve(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.registry))
        self._server.daemon_threads = True
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="eo-demo-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Gateway(MetricsEndpoint):
    """The service's front door (an ingress or router) as Prometheus sees it: requests arriving.

    At zero replicas, and while every replica is saturated, the pods' own counters cannot show demand;
    the scaler reads this through its ``activationQuery``, as a user points it at their gateway.
    """

    def __init__(self, namespace: str, service: str) -> None:
        super().__init__()
        self._arrivals = Counter(
            "gateway_requests", "Requests that arrived for the service.", ["namespace", "service"],
            registry=self.registry,
        ).labels(namespace=namespace, service=service)  # fmt: skip
        self._serve()

    def arrived(self, count: int) -> None:
        self._arrivals.inc(count)


class SimulatedVllmServer(MetricsEndpoint):
    """One replica's metrics endpoint on 127.0.0.1, in vLLM's names and label set."""

    def __init__(self, model_name: str) -> None:
        super().__init__()
        labels = {"model_name": model_name}
        self._success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        ).labels(finished_reason="stop", **labels)
        self._prompt = Counter(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            ["model_name"],
            registry=self.registry,
        ).labels(**labels)
        self._generation = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            ["model_name"],
            registry=self.registry,
        ).labels(**labels)
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            ["model_name"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        ).labels(**labels)
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            ["model_name"],
            buckets=TTFT_BUCKETS_S,
            registry=self.registry,
        ).labels(**labels)
        self._itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ["model_name"],
            buckets=ITL_BUCKETS_S,
            registry=self.registry,
        ).labels(**labels)
        self._request_itl = Histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of each request's mean time per output token in seconds.",
            ["model_name"],
            buckets=ITL_BUCKETS_S,
            registry=self.registry,
        ).labels(**labels)
        self._running = Gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", ["model_name"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self._waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", ["model_name"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self._kv_cache = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", ["model_name"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self._serve()

    def record(self, prompt_tokens: int, output_tokens: int, ttft_s: float, e2e_s: float) -> None:
        """One finished request. Its inter-token latency is observed once, as its mean over its output
        tokens after the first (vLLM observes every token; once per request keeps the demo cheap), and
        that mean in the per-request histogram (0 s for one output token, as vLLM observes it)."""
        self._success.inc()
        self._prompt.inc(prompt_tokens)
        self._generation.inc(output_tokens)
        self._ttft.observe(ttft_s)
        self._e2e.observe(e2e_s)
        mean_itl_s = max(e2e_s - ttft_s, 0.0) / (output_tokens - 1) if output_tokens > 1 else 0.0
        if output_tokens > 1:
            self._itl.observe(mean_itl_s)
        self._request_itl.observe(mean_itl_s)

    def set_running(self, batch: int, waiting: int = 0, kv_cache_usage: float | None = None) -> None:
        """The queue and saturation gauges: requests in the batch, requests waiting, and KV-cache use
        (0..1; left as it was when not given)."""
        self._running.set(batch)
        self._waiting.set(waiting)
        if kv_cache_usage is not None:
            self._kv_cache.set(kv_cache_usage)


def _handler(registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # a scrape every second per replica is noise, not news

    return MetricsHandler
