"""What to read from a pod's inference server, and how to read requests, tokens and latency from it.

Pure: samples arrive already parsed (``Sample``: name, labels, value); the HTTP reader does the I/O.

Built-in servers (names as the servers publish them; requests / prompt tokens / generation tokens /
latency histogram / time-to-first-token histogram):

* vllm: ``vllm:request_success_total`` (summed over finished_reason), ``vllm:prompt_tokens_total``,
  ``vllm:generation_tokens_total``, ``vllm:e2e_request_latency_seconds``,
  ``vllm:time_to_first_token_seconds``.
* tgi: ``tgi_request_success``, ``tgi_request_input_length_sum``, ``tgi_request_generated_tokens_sum``
  (the token-count histograms' sums), ``tgi_request_duration``, none.
* triton: ``nv_inference_request_success``; no token counters or latency histograms by default.
* sglang: ``sglang:num_requests_total``, ``sglang:prompt_tokens_total``,
  ``sglang:generation_tokens_total``, ``sglang:e2e_request_latency_seconds``,
  ``sglang:time_to_first_token_seconds``.

Each is overridable per pod by annotation (prefix ``energy-orchestrator.io/``): ``metrics-port``,
``metrics-path``, ``server``, ``requests-metric``, ``prompt-tokens-metric``, ``generation-tokens-metric``,
``latency-histogram``, ``ttft-histogram``. A metric selector is a sample name with an optional label
filter, e.g. ``vllm:request_success_total{finished_reason="stop"}``; every matching series is summed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

ANNOTATION_PREFIX = "energy-orchestrator.io/"


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Selector:
    """Sample name plus required label values; a counter name also matches its ``_total`` form."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def matches(self, sample: Sample) -> bool:
        if sample.name != self.name and sample.name != self.name + "_total":
            return False
        return all(sample.labels.get(k) == v for k, v in self.labels)


_SELECTOR = re.compile(r"^\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{(.*)\})?\s*$")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*')


def parse_selector(text: str) -> Selector:
    """``name`` or ``name{label="value",...}``; ``ValueError`` saying what is wrong otherwise."""
    match = _SELECTOR.match(text)
    if not match:
        raise ValueError(f'not a metric selector: {text!r} (expected name or name{{label="value"}})')
    labels: list[tuple[str, str]] = []
    body = match.group(2)
    if body and body.strip():
        for part in body.split(","):
            if not part.strip():
                continue
            m = _MATCHER.fullmatch(part)
            if not m:
                raise ValueError(f"bad label matcher {part.strip()!r} in {text!r}")
            labels.append((m.group(1), m.group(2)))
    return Selector(match.group(1), tuple(labels))


@dataclass(frozen=True)
class ServerProfile:
    """Where a server kind publishes its counters. Token selectors may name a histogram's ``_sum``."""

    name: str
    port: int
    requests: Selector | None
    prompt_tokens: Selector | None = None
    generation_tokens: Selector | None = None
    latency_histogram: str | None = None
    ttft_histogram: str | None = None
    path: str = "/metrics"


SERVERS: dict[str, ServerProfile] = {
    "vllm": ServerProfile(
        "vllm",
        8000,
        Selector("vllm:request_success_total"),
        Selector("vllm:prompt_tokens_total"),
        Selector("vllm:generation_tokens_total"),
        "vllm:e2e_request_latency_seconds",
        "vllm:time_to_first_token_seconds",
    ),
    "tgi": ServerProfile(
        "tgi",
        80,
        Selector("tgi_request_success"),
        Selector("tgi_request_input_length_sum"),
        Selector("tgi_request_generated_tokens_sum"),
        "tgi_request_duration",
        None,
    ),
    "triton": ServerProfile("triton", 8002, Selector("nv_inference_request_success")),
    "sglang": ServerProfile(
        "sglang",
        30000,
        Selector("sglang:num_requests_total"),
        Selector("sglang:prompt_tokens_total"),
        Selector("sglang:generation_tokens_total"),
        "sglang:e2e_request_latency_seconds",
        "sglang:time_to_first_token_seconds",
    ),
}

# Sample-name prefixes that identify a server when no ``server`` annotation says which it is.
_SIGNATURES: tuple[tuple[str, str], ...] = (
    ("vllm:", "vllm"),
    ("sglang:", "sglang"),
    ("tgi_", "tgi"),
    ("nv_inference_", "triton"),
)


@dataclass(frozen=True)
class PodScrapeConfig:
    """A pod's annotations, parsed. ``None`` fields fall back to the (detected) server's profile."""

    port: int | None = None
    path: str | None = None
    server: str | None = None
    requests: Selector | None = None
    prompt_tokens: Selector | None = None
    generation_tokens: Selector | None = None
    latency_histogram: str | None = None
    ttft_histogram: str | None = None
    problems: tuple[str, ...] = field(default=())

    def profile(self, detected: str | None) -> ServerProfile | None:
        """The effective profile: the annotated or detected server with the annotated overrides."""
        base_name = self.server or detected
        base = SERVERS.get(base_name) if base_name else None
        if base is None and self.requests is None:
            return None
        profile = base or ServerProfile("custom", self.port or 0, None)
        return replace(
            profile,
            port=self.port or profile.port,
            path=self.path or profile.path,
            requests=self.requests or profile.requests,
            prompt_tokens=self.prompt_tokens or profile.prompt_tokens,
            generation_tokens=self.generation_tokens or profile.generation_tokens,
            latency_histogram=self.latency_histogram or profile.latency_histogram,
            ttft_histogram=self.ttft_histogram or profile.ttft_histogram,
        )

    def first_port(self, container_ports: Mapping[str, int]) -> int | None:
        """Port to try first: annotation, a container port named ``metrics``, the server's default."""
        if self.port:
            return self.port
        if "metrics" in container_ports:
            return container_ports["metrics"]
        if self.server in SERVERS:
            return SERVERS[self.server].port
        return None


def parse_annotations(annotations: Mapping[str, str]) -> PodScrapeConfig:
    """Read our annotations; a bad value is reported in ``problems`` and ignored (never raises)."""
    problems: list[str] = []

    def get(key: str) -> str | None:
        value = annotations.get(ANNOTATION_PREFIX + key)
        return value.strip() if value and value.strip() else None

    port: int | None = None
    if (raw := get("metrics-port")) is not None:
        if raw.isdigit() and 0 < int(raw) < 65536:
            port = int(raw)
        else:
            problems.append(f"{ANNOTATION_PREFIX}metrics-port={raw!r} is not a port number (1-65535)")
    path = get("metrics-path")
    if path is not None and not path.startswith("/"):
        problems.append(f"{ANNOTATION_PREFIX}metrics-path={path!r} must start with '/'")
        path = None
    server = get("server")
    if server is not None and server.lower() not in SERVERS:
        known = "|".join(SERVERS)
        problems.append(f"{ANNOTATION_PREFIX}server={server!r} is not one of {known}")
        server = None

    def selector(key: str) -> Selector | None:
        raw = get(key)
        if raw is None:
            return None
        try:
            return parse_selector(raw)
        except ValueError as exc:
            problems.append(f"{ANNOTATION_PREFIX}{key}: {exc}")
            return None

    def histogram(key: str) -> str | None:
        sel = selector(key)
        return sel.name if sel else None

    return PodScrapeConfig(
        port=port,
        path=path,
        server=server.lower() if server else None,
        requests=selector("requests-metric"),
        prompt_tokens=selector("prompt-tokens-metric"),
        generation_tokens=selector("generation-tokens-metric"),
        latency_histogram=histogram("latency-histogram"),
        ttft_histogram=histogram("ttft-histogram"),
        problems=tuple(problems),
    )


def detect_server(samples: Iterable[Sample]) -> str | None:
    for sample in samples:
        for prefix, server in _SIGNATURES:
            if sample.name.startswith(prefix):
                return server
    return None


@dataclass(frozen=True)
class HistogramReading:
    """Cumulative bucket counts by upper bound (ascending, ending with +Inf), sum and count."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float


@dataclass(frozen=True)
class AppReading:
    """One read of a pod's inference server; ``None`` where the server publishes no such counter."""

    requests: float | None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    latency: HistogramReading | None = None
    ttft: HistogramReading | None = None


def _sum(samples: Sequence[Sample], selector: Selector | None) -> float | None:
    if selector is None:
        return None
    values = [s.value for s in samples if selector.matches(s) and math.isfinite(s.value)]
    return sum(values) if values else None


def _histogram(samples: Sequence[Sample], name: str | None) -> HistogramReading | None:
    if name is None:
        return None
    buckets: dict[float, float] = {}
    total = count = 0.0
    seen_count = False
    for s in samples:
        if s.name == name + "_bucket" and "le" in s.labels:
            try:
                le = float(s.labels["le"])
            except ValueError:
                continue
            # Several label sets (e.g. model_name) are summed per bound, as `sum by (le)` would.
            buckets[le] = buckets.get(le, 0.0) + s.value
        elif s.name == name + "_sum":
            total += s.value
        elif s.name == name + "_count":
            count += s.value
            seen_count = True
    if not buckets or not seen_count or math.inf not in buckets:
        return None
    return HistogramReading(tuple(sorted(buckets.items())), total, count)


def extract(samples: Sequence[Sample], profile: ServerProfile) -> AppReading:
    return AppReading(
        requests=_sum(samples, profile.requests),
        prompt_tokens=_sum(samples, profile.prompt_tokens),
        generation_tokens=_sum(samples, profile.generation_tokens),
        latency=_histogram(samples, profile.latency_histogram),
        ttft=_histogram(samples, profile.ttft_histogram),
    )
