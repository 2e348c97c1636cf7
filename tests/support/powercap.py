"""Shared helpers of the power-cap sidecar tests: a settable clock, a scripted latency source, settings,
a vLLM /metrics feed for the hostile HTTP peer, and the real ``eo-powercap`` binary as a subprocess."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common.settings import from_values
from powercap.latency import LatencySample, LatencySourceError
from powercap.settings import Settings
from tests.support.daemon import DaemonProcess, console_command

SIM_UUID = "GPU-5e1a0000-0000-4000-8000-000000000000"
SIM_ORIGINAL_W = 700.0


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
    # No EO_* variable of the machine running the tests leaks in: only these values and the defaults.
    return from_values(Settings, base, environ={})


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


class HistogramFeed:
    """A vLLM /metrics answer for ``hostile_server``'s handler: on every scrape ``per_scrape`` more
    requests finish in under 0.5 s (plenty of headroom under a 2 s target). ``frozen`` stops the
    counters (the server re-publishes the same counts); ``nan`` serves every bucket as NaN."""

    def __init__(self, per_scrape: float = 20.0) -> None:
        self.per_scrape = per_scrape
        self.finished = 0.0
        self.frozen = False
        self.nan = False

    def __call__(self, path: str, payload: bytes) -> tuple[int, str, bytes]:
        if not self.frozen:
            self.finished += self.per_scrape
        n = math.nan if self.nan else self.finished
        body = vllm_histogram({0.5: n, 1.0: n, math.inf: n})
        return 200, "text/plain; version=0.0.4", body.encode()


class SidecarProcess(DaemonProcess):
    """``eo-powercap`` on a simulated GPU as a real process (``DaemonProcess``), its state file read the
    way an operator would."""

    name = "eo-powercap"

    def __init__(self, args: Sequence[str], state_dir: Path, start_timeout_s: float = 30.0) -> None:
        self.state_dir = state_dir
        cmd = [*console_command("eo-powercap", "powercap"), "--gpu-backend", "simulated"]
        cmd += ["--state-dir", str(state_dir), "--listen-address", "127.0.0.1", "--port", "0"]
        cmd += ["--kube-events", "off", "--log-format", "json"]
        super().__init__([*cmd, *args], start_timeout_s)

    def sample(
        self, name: str, labels: dict[str, str] | None = None, uuid: str | None = SIM_UUID
    ) -> float | None:
        """One sample of the sidecar's /metrics (per GPU unless ``uuid`` is None); None when absent."""
        return self.metric(name, {**({"uuid": uuid} if uuid else {}), **(labels or {})})

    def applied_watts(self) -> float | None:
        return self.sample("eo_powercap_applied_watts")

    def record_status(self) -> str | None:
        path = self.state_dir / f"{SIM_UUID}.json"
        try:
            return str(json.loads(path.read_text())["status"])
        except (OSError, ValueError, KeyError):
            return None

    def capped(self) -> bool:
        applied = self.applied_watts()
        return applied is not None and applied < SIM_ORIGINAL_W and self.record_status() == "controlling"

    def restored(self) -> bool:
        return self.applied_watts() == SIM_ORIGINAL_W and self.record_status() == "restored"


class VllmStateFeed:
    """A vLLM /metrics page for the clock governor, as ``TextServer``'s ``body_fn`` or
    ``hostile_server``'s handler: the running, waiting and KV gauges as set, and on every scrape
    ``per_scrape`` more first tokens (each under ``ttft_s``) and ``tokens`` more output tokens at a mean
    inter-token time of ``itl_s``, each first token with ``prompt_each`` prompt tokens counted
    (``vllm:prompt_tokens_total``). ``nan`` serves the running gauge as NaN; ``garbage`` an unparsable
    page; ``frozen`` stops every counter; ``prompt_frozen`` stops the prompt counter alone and
    ``prompt_missing`` leaves it off the page."""

    TTFT_BOUNDS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self, running: float = 4, waiting: float = 0, kv: float = 0.1) -> None:
        self.running = running
        self.waiting = waiting
        self.kv = kv
        self.ttft_s = 0.03
        self.itl_s = 0.007
        self.per_scrape = 20.0
        self.tokens = 2000.0
        self.nan = False
        self.garbage = False
        self.frozen = False
        self.prompt_each = 500.0
        self.prompt_frozen = False
        self.prompt_missing = False
        self.prompt_tokens = 0.0
        self.first_tokens = 0.0
        self.output_tokens = 0.0
        self.itl_sum_s = 0.0
        self.scrapes = 0

    def page(self) -> str:
        self.scrapes += 1
        if self.garbage:
            return 'vllm:num_requests_running{model_name="m"} not-a-number\n'
        if not self.frozen:
            self.first_tokens += self.per_scrape
            self.output_tokens += self.tokens
            self.itl_sum_s += self.tokens * self.itl_s
            if not self.prompt_frozen:
                self.prompt_tokens += self.per_scrape * self.prompt_each
        running = "NaN" if self.nan else repr(float(self.running))
        m = '{model_name="m"}'
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{m} {running}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{m} {float(self.waiting)!r}",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{m} {float(self.kv)!r}",
            "# TYPE vllm:time_to_first_token_seconds histogram",
        ]
        for le in self.TTFT_BOUNDS:
            count = self.first_tokens if le >= self.ttft_s else 0.0
            lines.append(f'vllm:time_to_first_token_seconds_bucket{{le="{le}",model_name="m"}} {count}')
        lines += [
            f'vllm:time_to_first_token_seconds_bucket{{le="+Inf",model_name="m"}} {self.first_tokens}',
            f"vllm:time_to_first_token_seconds_count{m} {self.first_tokens}",
            f"vllm:time_to_first_token_seconds_sum{m} {self.first_tokens * self.ttft_s}",
            "# TYPE vllm:inter_token_latency_seconds histogram",
            f'vllm:inter_token_latency_seconds_bucket{{le="+Inf",model_name="m"}} {self.output_tokens}',
            f"vllm:inter_token_latency_seconds_count{m} {self.output_tokens}",
            f"vllm:inter_token_latency_seconds_sum{m} {self.itl_sum_s}",
        ]
        if not self.prompt_missing:
            lines += [
                "# TYPE vllm:prompt_tokens counter",
                f"vllm:prompt_tokens_total{m} {self.prompt_tokens}",
            ]
        return "\n".join(lines) + "\n"

    def __call__(self, path: str, payload: bytes) -> tuple[int, str, bytes]:
        return 200, "text/plain; version=0.0.4", self.page().encode()
