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
filter, e.g. ``vllm:request_success_total{finished_reason="stop"}``; every matching series is read.

Readings keep each source series apart (keyed by sample name and labels) so the mirrors can tell a
reset of one series from a drop of the sum. Ordinary bad data is not a number here:

* a NaN, infinite or negative sample is missing: its series is left out of the reading (a histogram
  series with one such bucket, sum or count is left out whole, since its buckets must stay cumulative);
* a series listed twice (same name and labels) counts once: the first line wins, as in Prometheus.
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


SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
"""A source series: sample name and its sorted labels (``le`` excluded for histogram series)."""

# One read keeps at most this many series per counter or histogram: past it the read is refused (a
# server publishing thousands of label sets for one counter is broken or hostile, and the mirrors'
# memory is bounded by it).
MAX_SERIES_PER_METRIC = 1000


class TooManySeries(ValueError):
    """A counter or histogram of the reading has more series than ``MAX_SERIES_PER_METRIC``."""


def series_key(name: str, labels: Mapping[str, str], drop: str | None = None) -> SeriesKey:
    return name, tuple(sorted((k, v) for k, v in labels.items() if k != drop))


def usable(value: float) -> bool:
    """A counter sample we can use: finite and not negative (NaN, Inf and negatives are missing)."""
    return math.isfinite(value) and value >= 0


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
SIGNATURES: tuple[tuple[str, str], ...] = (
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
        for prefix, server in SIGNATURES:
            if sample.name.startswith(prefix):
                return server
    return None


def wanted_sample_names(config: PodScrapeConfig) -> frozenset[str]:
    """Every sample name a read of this pod can use, whichever server it turns out to be.

    The reader keeps only lines of these names (a few dozen), so a large /metrics page costs a pass
    over its bytes, not a parse of all of it."""
    profiles = [config.profile(server) for server in (None, *SERVERS)]
    names: set[str] = set()
    for profile in profiles:
        if profile is None:
            continue
        for selector in (profile.requests, profile.prompt_tokens, profile.generation_tokens):
            if selector is not None:
                names.update((selector.name, selector.name + "_total"))
        for histogram in (profile.latency_histogram, profile.ttft_histogram):
            if histogram is not None:
                names.update(histogram + suffix for suffix in ("_bucket", "_sum", "_count"))
    return frozenset(names)


@dataclass(frozen=True)
class HistogramReading:
    """Cumulative bucket counts by upper bound (ascending, ending with +Inf), sum and count."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float

    @property
    def bounds(self) -> tuple[float, ...]:
        return tuple(le for le, _ in self.buckets)


CounterSeries = Mapping[SeriesKey, float]
"""A counter's usable source series in one read (never empty; no NaN, Inf or negative value)."""

HistogramSeries = Mapping[SeriesKey, HistogramReading]
"""A histogram's usable source series in one read, all with the same bucket bounds (never empty)."""


@dataclass(frozen=True)
class AppReading:
    """One read of a pod's inference server; ``None`` where the server publishes no such metric or
    none of its series is usable in this read."""

    requests: CounterSeries | None
    prompt_tokens: CounterSeries | None = None
    generation_tokens: CounterSeries | None = None
    latency: HistogramSeries | None = None
    ttft: HistogramSeries | None = None


def total(series: CounterSeries | None) -> float | None:
    """The sum over a counter's series (what the server's counter says now), or ``None``."""
    return None if series is None else sum(series.values())


def _counter(samples: Sequence[Sample], selector: Selector | None) -> CounterSeries | None:
    if selector is None:
        return None
    series: dict[SeriesKey, float] = {}
    seen: set[SeriesKey] = set()
    for s in samples:
        if not selector.matches(s):
            continue
        key = series_key(s.name, s.labels)
        if key in seen:
            continue  # a duplicated line: the first one counts
        seen.add(key)
        if usable(s.value):
            series[key] = s.value
        if len(seen) > MAX_SERIES_PER_METRIC:
            raise TooManySeries(f"{selector.name} has more than {MAX_SERIES_PER_METRIC} series")
    return series or None


@dataclass
class _HistogramParts:
    buckets: dict[float, float]
    sum: float | None = None
    count: float | None = None
    bad: bool = False


def _histogram(samples: Sequence[Sample], name: str | None) -> HistogramSeries | None:
    if name is None:
        return None
    parts: dict[SeriesKey, _HistogramParts] = {}

    def part(labels: Mapping[str, str], drop: str | None = None) -> _HistogramParts:
        key = series_key(name, labels, drop)
        if key not in parts:
            if len(parts) >= MAX_SERIES_PER_METRIC:
                raise TooManySeries(f"{name} has more than {MAX_SERIES_PER_METRIC} series")
            parts[key] = _HistogramParts({})
        return parts[key]

    for s in samples:
        if s.name == name + "_bucket" and "le" in s.labels:
            try:
                le = float(s.labels["le"])
            except ValueError:
                continue
            p = part(s.labels, "le")
            if le not in p.buckets:  # a duplicated line: the first one counts
                p.buckets[le] = s.value
                p.bad |= not usable(s.value)
        elif s.name == name + "_sum":
            p = part(s.labels)
            if p.sum is None:
                p.sum = s.value
                p.bad |= not math.isfinite(s.value)  # a sum may be negative (negative observations)
        elif s.name == name + "_count":
            p = part(s.labels)
            if p.count is None:
                p.count = s.value
                p.bad |= not usable(s.value)
    series: dict[SeriesKey, HistogramReading] = {}
    bounds: tuple[float, ...] | None = None
    for key, p in parts.items():
        if p.bad or p.count is None or math.inf not in p.buckets:
            continue  # missing in this read (NaN, Inf) or incomplete
        reading = HistogramReading(tuple(sorted(p.buckets.items())), p.sum or 0.0, p.count)
        bounds = reading.bounds if bounds is None else bounds
        if reading.bounds == bounds:  # series must share bounds to be summed by bound
            series[key] = reading
    return series or None


def extract(samples: Sequence[Sample], profile: ServerProfile) -> AppReading:
    """The profile's counters and histograms from parsed samples; ``TooManySeries`` past the limit."""
    return AppReading(
        requests=_counter(samples, profile.requests),
        prompt_tokens=_counter(samples, profile.prompt_tokens),
        generation_tokens=_counter(samples, profile.generation_tokens),
        latency=_histogram(samples, profile.latency_histogram),
        ttft=_histogram(samples, profile.ttft_histogram),
    )
