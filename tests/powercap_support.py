"""Shared helpers of the power-cap sidecar tests: a settable clock, a scripted latency source, settings."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from scaler.powercap.latency import LatencySample, LatencySourceError
from scaler.powercap.settings import Settings


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ScriptedSource:
    """A latency source answering what the test set; ``failing`` makes it raise like a dead server."""

    latency_s: float | None = 0.5
    load_rps: float | None = 10.0
    failing: bool = False
    reads: list[float] = field(default_factory=list)

    def read(self, now_s: float) -> LatencySample:
        self.reads.append(now_s)
        if self.failing:
            raise LatencySourceError("connection refused")
        return LatencySample(self.latency_s, self.load_rps)


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "latency_target_s": 1.0,
        "interval_s": 5.0,
        "settle_s": 0.0,
        "stale_after_s": 30.0,
        "state_dir": tmp_path / "state",
        "listen_address": "127.0.0.1",
        "port": 0,
    }
    base.update(overrides)
    return Settings(**base)


def vllm_histogram(buckets: dict[float, float], name: str = "vllm:e2e_request_latency_seconds") -> str:
    """vLLM's exposition of one histogram: cumulative ``le`` buckets, ``_count`` and ``_sum``."""
    lines = [f"# HELP {name} Histogram of end to end request latency in seconds.", f"# TYPE {name} histogram"]
    total = 0.0
    for le in sorted(buckets):
        label = "+Inf" if le == float("inf") else repr(le)
        lines.append(f'{name}_bucket{{le="{label}",model_name="llama"}} {buckets[le]}')
        total = buckets[le]
    lines.append(f'{name}_count{{model_name="llama"}} {total}')
    lines.append(f'{name}_sum{{model_name="llama"}} {total * 0.5}')
    return "\n".join(lines) + "\n"


class TextServer:
    """A real HTTP server on 127.0.0.1:0 whose body the test sets (a vLLM /metrics stand-in)."""

    def __init__(self, body: str = "", body_fn: Callable[[], str] | None = None) -> None:
        self.body = body
        self.body_fn = body_fn
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = (outer.body_fn() if outer.body_fn else outer.body).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
