"""One-run GPU check (issue 13), read-only on the GPU: no setter is ever called.

In one run, on the first visible GPU:

1. the exporter's energy counter (``eo_gpu_energy_joules_total``, scraped from an in-process
   eo-exporter) against NVML power integrated over ``--seconds`` (60 by default), under a load: a
   PyTorch matmul loop when torch and CUDA are there (none otherwise; the simulated GPU runs a fixed
   batch);
2. the exporter's scrape latency (each scrape's wall time, p50 and max);
3. the clock governor's dry-run decisions against a synthetic vLLM /metrics endpoint on loopback that
   goes through a small batch, a large one, a queue and an unparsable page: the pure ``govern()``
   alone, and the live sidecar (``start_powercap`` with ``--dry-run --actuator clocks`` and TTFT/ITL
   targets, on this GPU, its decisions and the target clock read back from its own /metrics).

The GPU is wrapped in ``ReadOnlyGpu``, whose setters raise: a bug cannot change the GPU's limit or
clocks. Never run ``nvidia-smi -pl/-lgc/-rgc/-pm/-r`` around it.

    python bench/gpu_check.py                         # NVML, 60 s, JSON on stdout
    python bench/gpu_check.py --simulated --seconds 3 # the simulated GPU (tests run this)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from common.http import BoundedHttpClient
from common.settings import from_values
from devices.base import GpuBackend, GpuDevice
from devices.simulated import SimulatedBackend, SimulatedGpu
from exporter.server import start_exporter
from exporter.settings import Settings as ExporterSettings
from gpumodel.model import H100_LLAMA_8B
from powercap.controller import ControllerConfig
from powercap.governor import GovernorConfig, GovernorReading, govern, initial_governor_state
from powercap.latency import MetricsEndpointSource
from powercap.profile import IterationProfile, prior_of
from powercap.serverstate import ServerStateError, ServerStateSource
from powercap.settings import Settings as PowercapSettings
from powercap.sidecar import start_powercap


class ReadOnlyGpu:
    """A GPU whose setters raise: reading passes through, writing never reaches the device."""

    def __init__(self, device: GpuDevice) -> None:
        self._device = device

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("set_", "lock_", "reset_")):
            raise PermissionError(f"bench/gpu_check.py is read-only: {name} is never called")
        return getattr(self._device, name)


class ReadOnlyBackend:
    def __init__(self, backend: GpuBackend) -> None:
        self._backend = backend

    def devices(self) -> Sequence[GpuDevice]:
        return [ReadOnlyGpu(d) for d in self._backend.devices()]

    def close(self) -> None:
        self._backend.close()


def _matmul_load(stop: threading.Event) -> str:
    """Start a matmul loop on the GPU when torch with CUDA is installed; the load's description."""
    try:
        import torch  # noqa: PLC0415 (optional)
    except ImportError:
        return "none (torch not installed)"
    if not torch.cuda.is_available():
        return "none (torch without CUDA)"

    def loop() -> None:
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
        while not stop.is_set():
            for _ in range(20):
                a = (a @ b).clamp_(-1, 1)
            torch.cuda.synchronize()

    threading.Thread(target=loop, name="matmul", daemon=True).start()
    return "torch fp16 matmul 8192x8192"


def _energy_j(text: str, uuid: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("eo_gpu_energy_joules_total{") and f'uuid="{uuid}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def energy_check(backend: GpuBackend, seconds: float, sample_s: float, load: str) -> dict[str, object]:
    exporter = start_exporter(
        from_values(
            ExporterSettings,
            {"port": 0, "listen_address": "127.0.0.1", "pod_attribution": "off", "rapl_root": None},
            environ={},
        ),
        backend=backend,
    )
    http = BoundedHttpClient(deadline_s=5.0, max_body_bytes=8 * 1024 * 1024)
    device = backend.devices()[0]
    uuid = device.uuid
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    scrape_s: list[float] = []

    def scrape() -> float | None:
        t0 = time.perf_counter()
        text = http.get(url).text()
        scrape_s.append(time.perf_counter() - t0)
        return _energy_j(text, uuid)

    try:
        first = scrape()
        start = time.monotonic()
        last_t, last_p = start, device.power_usage_mw() / 1000
        integrated = 0.0
        while time.monotonic() - start < seconds:
            time.sleep(sample_s)
            now, power = time.monotonic(), device.power_usage_mw() / 1000
            integrated += (power + last_p) / 2 * (now - last_t)
            last_t, last_p = now, power
        end = scrape()
    finally:
        exporter.stop()
    counter = end - first if end is not None and first is not None else None
    scrape_s.sort()
    return {
        "gpu": device.name,
        "uuid": uuid,
        "load": load,
        "seconds": round(last_t - start, 3),
        "exporter_energy_j": counter,
        "nvml_power_integrated_j": round(integrated, 3),
        "ratio": round(counter / integrated, 4) if counter is not None and integrated > 0 else None,
        "scrape_latency_p50_ms": round(scrape_s[len(scrape_s) // 2] * 1000, 2),
        "scrape_latency_max_ms": round(scrape_s[-1] * 1000, 2),
    }


# -- a synthetic vLLM /metrics endpoint -------------------------------------------------------------
_TTFT_BOUNDS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0)


# Prompt tokens per first token on the synthetic page: a chat-sized prompt (the governor's prompt-rate
# feedforward reads the counter; without it the governor holds the ceiling).
PROMPT_TOKENS_EACH = 500.0


def vllm_page(running: int, waiting: int, kv: float, ttft_total: float, tokens: float, itl_s: float) -> str:
    lines = [
        "# TYPE vllm:prompt_tokens counter",
        f'vllm:prompt_tokens_total{{model_name="m"}} {ttft_total * PROMPT_TOKENS_EACH}',
        "# TYPE vllm:num_requests_running gauge",
        f'vllm:num_requests_running{{model_name="m"}} {running}',
        "# TYPE vllm:num_requests_waiting gauge",
        f'vllm:num_requests_waiting{{model_name="m"}} {waiting}',
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f'vllm:kv_cache_usage_perc{{model_name="m"}} {kv}',
        "# TYPE vllm:time_to_first_token_seconds histogram",
    ]
    for le in _TTFT_BOUNDS:  # every first token under 40 ms
        count = ttft_total if le >= 0.04 else ttft_total // 2
        lines.append(f'vllm:time_to_first_token_seconds_bucket{{le="{le}",model_name="m"}} {count}')
    lines += [
        f'vllm:time_to_first_token_seconds_bucket{{le="+Inf",model_name="m"}} {ttft_total}',
        f'vllm:time_to_first_token_seconds_count{{model_name="m"}} {ttft_total}',
        f'vllm:time_to_first_token_seconds_sum{{model_name="m"}} {ttft_total * 0.03}',
        "# TYPE vllm:inter_token_latency_seconds histogram",
        f'vllm:inter_token_latency_seconds_bucket{{le="+Inf",model_name="m"}} {tokens}',
        f'vllm:inter_token_latency_seconds_count{{model_name="m"}} {tokens}',
        f'vllm:inter_token_latency_seconds_sum{{model_name="m"}} {tokens * itl_s}',
        "# TYPE vllm:e2e_request_latency_seconds histogram",  # every request done within a second
        f'vllm:e2e_request_latency_seconds_bucket{{le="1.0",model_name="m"}} {ttft_total}',
        f'vllm:e2e_request_latency_seconds_bucket{{le="+Inf",model_name="m"}} {ttft_total}',
        f'vllm:e2e_request_latency_seconds_count{{model_name="m"}} {ttft_total}',
        f'vllm:e2e_request_latency_seconds_sum{{model_name="m"}} {ttft_total * 0.5}',
    ]
    return "\n".join(lines) + "\n"


class SyntheticVllm:
    """A loopback HTTP server serving whatever page ``page`` returns."""

    def __init__(self, page: Callable[[], str]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.page().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.page = page
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/metrics"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


Phase = tuple[str, int, int, float, float]
"""(name, running, waiting, KV use, mean inter-token seconds); running < 0 serves an unparsable page."""


def script(phases: int = 4) -> list[Phase]:
    return (
        [("small batch", 4, 0, 0.05, 0.007)] * phases
        + [("large batch", 200, 0, 0.6, 0.012)] * 2
        + [("queue", 256, 12, 0.9, 0.012)] * 2
        + [("unparsable page", -1, 0, 0.0, 0.0)]
    )


def scripted_server(steps: list[Phase], at: dict[str, int]) -> SyntheticVllm:
    """The synthetic vLLM endpoint serving ``steps[at["i"]]``, counters moving on every scrape."""
    counters = {"ttft": 0.0, "tokens": 0.0}

    def page() -> str:
        _, running, waiting, kv, itl = steps[min(at["i"], len(steps) - 1)]
        if running < 0:
            return 'vllm:num_requests_running{model_name="m"} not-a-number\n'
        counters["ttft"] += 50
        counters["tokens"] += 2000.0
        return vllm_page(running, waiting, kv, counters["ttft"], counters["tokens"], itl)

    return SyntheticVllm(page)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sidecar_check(device: GpuDevice, phases: int = 4) -> list[dict[str, object]]:
    """The live sidecar's dry-run governor decisions on this GPU against the synthetic endpoint, and the
    target clock it publishes on its own /metrics. Dry-run: no lock, no state file, no setter."""
    steps, at = script(phases), {"i": 0}
    server = scripted_server(steps, at)
    clock = _Clock()
    state_dir = Path(tempfile.mkdtemp(prefix="eo-gpu-check-"))
    settings = from_values(
        PowercapSettings,
        {"dry_run": True, "actuator": "clocks", "latency_target_s": 10.0, "ttft_target_s": 0.25,
         "itl_target_s": 0.025, "metrics_url": server.url, "state_dir": state_dir,
         "listen_address": "127.0.0.1", "port": 0, "kube_events": "off"},
        environ={},
    )  # fmt: skip
    source = MetricsEndpointSource(server.url, "vllm:e2e_request_latency_seconds", 0.95, 60.0)
    handle = start_powercap(settings, [device], source, clock=clock, run_loop=False)
    http = BoundedHttpClient(deadline_s=5.0, max_body_bytes=1024 * 1024)
    out: list[dict[str, object]] = []
    try:
        for i, (phase, *_rest) in enumerate(steps):
            at["i"] = i
            clock.now += 5.0
            decision = handle.sidecar.tick()
            text = http.get(f"http://127.0.0.1:{handle.port}/metrics").text()
            out.append(
                {
                    "phase": phase,
                    "clock_mhz": decision.setpoint,
                    "reason": decision.reason,
                    "published_target_mhz": _target_mhz(text, device.uuid),
                }
            )
    finally:
        handle.stop()
        server.close()
    return out


def _target_mhz(text: str, uuid: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "eo_powercap_target_sm_clock_hertz" and sample.labels.get("uuid") == uuid:
                return sample.value / 1e6
    return None


def governor_check(device: GpuDevice, phases: int = 4) -> list[dict[str, object]]:
    """Dry-run decisions of the governor for the GPU's clock range against the synthetic endpoint."""
    clocks = sorted(float(c) for c in device.supported_sm_clocks_mhz())
    high = float(device.max_sm_clock_mhz())
    clocks = [c for c in clocks if c <= high]
    ctrl = ControllerConfig(
        actuator="clocks", floor=clocks[0], ceiling=high, target_latency_s=1.0, max_step_down=90.0
    )
    config = GovernorConfig(ctrl, tuple(clocks), itl_target_s=0.025, ttft_target_s=0.25)
    profile = IterationProfile.start(prior_of(H100_LLAMA_8B), (clocks[0], high), 256)
    state = initial_governor_state(config, profile)
    steps, step = script(phases), {"i": 0}
    server = scripted_server(steps, step)
    source = ServerStateSource(server.url, "vllm", window_s=60.0, timeout_s=2.0)
    out: list[dict[str, object]] = []
    try:
        for i, (phase, *_rest) in enumerate(steps):
            step["i"] = i
            now = 5.0 * i
            try:
                sample = source.read(now)
                reading = GovernorReading(
                    now_s=now, age_s=0.0, itl_s=sample.itl_window_mean_s, ttft_buckets=sample.ttft_buckets,
                    load=sample.load, itl_mean_s=sample.itl_interval_mean_s,
                )  # fmt: skip
                error = None
            except ServerStateError as exc:
                reading = GovernorReading(now_s=now, age_s=0.0, itl_s=None, ttft_buckets=None, load=None)
                error = str(exc)[:120]
            state, decision = govern(state, reading, config)
            out.append(
                {
                    "phase": phase,
                    "clock_mhz": decision.setpoint,
                    "reason": decision.reason,
                    "read_error": error,
                }
            )
    finally:
        server.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulated", action="store_true", help="the simulated GPU instead of NVML")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the energy comparison")
    ap.add_argument("--sample-seconds", type=float, default=0.5, help="NVML power sampling period")
    args = ap.parse_args(argv)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        ap.error("--seconds must be a positive number")
    stop = threading.Event()
    raw: GpuBackend
    simulated = [SimulatedGpu(0, load=lambda: 64.0)]
    if args.simulated:
        raw = SimulatedBackend(simulated)
        load = "simulated batch 64"
    else:
        from devices.nvml import NvmlBackend  # noqa: PLC0415 (pynvml only on the NVML path)

        raw = NvmlBackend()
        load = _matmul_load(stop)
    backend = ReadOnlyBackend(raw)
    try:
        report: dict[str, object] = {
            "mode": "simulated" if args.simulated else "nvml",
            "energy": energy_check(backend, args.seconds, args.sample_seconds, load),
            "governor_dry_run": governor_check(backend.devices()[0]),
            "sidecar_dry_run": sidecar_check(backend.devices()[0]),
        }
    finally:
        stop.set()
    if args.simulated:
        report["setter_calls"] = [list(c) for g in simulated for c in g.set_calls]
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
