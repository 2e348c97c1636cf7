"""What to read from a pod's inference server, and how to read requests, tokens, latency and load from it.

Pure: samples arrive already parsed (``Sample``: name, labels, value); the HTTP reader does the I/O.

The built-in servers (vllm, tgi, triton, sglang) and the names they publish come from the one registry,
``common.servers``: requests finished, prompt / generation tokens, the end-to-end, time-to-first-token,
inter-token-latency (per token) and per-request time-per-output-token histograms (converted to seconds
where the server's unit is another), and the requests-waiting, requests-running and KV-cache-usage
gauges. Where a metric has older names (vLLM's ``vllm:time_per_output_token_seconds``,
``vllm:gpu_cache_usage_perc``), the first name with any sample in the page is read.

Each is overridable per pod by annotation (prefix ``energy-orchestrator.io/``): ``metrics-port``,
``metrics-path``, ``server``, ``requests-metric``, ``prompt-tokens-metric``, ``generation-tokens-metric``,
``latency-histogram``, ``ttft-histogram``, ``itl-histogram``, ``request-itl-histogram`` (histograms in
seconds), ``waiting-metric``,
``running-metric``, ``kv-cache-usage-metric``. A metric selector is a sample name with an optional label
filter, e.g. ``vllm:request_success_total{finished_reason="stop"}``; every matching series is read.

Readings keep each source series of a counter or histogram apart (keyed by sample name and labels) so
the mirrors can tell a reset of one series from a drop of the sum. Ordinary bad data is not a number
here:

* a NaN, infinite or negative sample is missing: its series is left out of the reading (a histogram
  series with one such bucket, sum or count is left out whole, since its buckets must stay cumulative);
* a gauge is the sum (waiting, running) or the maximum (KV-cache usage) over its series, and is missing
  whole when any of its series is: a queue of which one part is unknown is unknown, not smaller;
* a series listed twice (same name and labels) counts once: the first line wins, as in Prometheus.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from common import servers
from common.servers import Histogram, InferenceServer, Metric

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


Selector = Metric
"""A metric selector: sample name, required label values, older names. It is the registry's ``Metric``,
whether the registry names it or a pod's annotation does."""


def _is_series_of(sample: Sample, selector: Selector, name: str) -> bool:
    """``sample`` is a series of ``selector`` under ``name`` (one of its names); a counter name also
    matches its ``_total`` form."""
    return sample.name in (name, name + "_total") and selector.has_labels(sample.labels)


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
    """What to read from one pod, and where: a server's registry entry (with the pod's annotated
    overrides) and the port and path of its page. Token metrics may name a histogram's ``_sum``."""

    server: InferenceServer
    port: int
    path: str = "/metrics"


# A server known only by its annotations: every signal it has is annotated.
_CUSTOM = InferenceServer("custom", metrics_port=0, signature="", requests=None)

SERVERS: dict[str, ServerProfile] = {
    name: ServerProfile(server, server.metrics_port) for name, server in servers.SERVERS.items()
}

# Sample-name prefixes that identify a server when no ``server`` annotation says which it is.
SIGNATURES: tuple[tuple[str, str], ...] = servers.SIGNATURES

# The annotation (after the prefix) that overrides each signal of a server's registry entry.
_ANNOTATIONS: Mapping[str, str] = {
    "requests": "requests-metric",
    "prompt_tokens": "prompt-tokens-metric",
    "generation_tokens": "generation-tokens-metric",
    "e2e_latency": "latency-histogram",
    "ttft": "ttft-histogram",
    "itl": "itl-histogram",
    "request_itl": "request-itl-histogram",
    "requests_waiting": "waiting-metric",
    "requests_running": "running-metric",
    "kv_cache_usage": "kv-cache-usage-metric",
}


@dataclass(frozen=True)
class PodScrapeConfig:
    """A pod's annotations, parsed. ``None`` fields fall back to the (detected) server's profile."""

    port: int | None = None
    path: str | None = None
    server: str | None = None
    # The annotated signals, named as in the registry's ``InferenceServer``.
    requests: Selector | None = None
    prompt_tokens: Selector | None = None
    generation_tokens: Selector | None = None
    e2e_latency: Histogram | None = None
    ttft: Histogram | None = None
    itl: Histogram | None = None
    request_itl: Histogram | None = None
    requests_waiting: Selector | None = None
    requests_running: Selector | None = None
    kv_cache_usage: Selector | None = None
    problems: tuple[str, ...] = field(default=())

    def profile(self, detected: str | None) -> ServerProfile | None:
        """The effective profile: the annotated or detected server with the annotated overrides."""
        base_name = self.server or detected
        base = SERVERS.get(base_name) if base_name else None
        if base is None and self.requests is None:
            return None
        profile = base or ServerProfile(_CUSTOM, 0)
        overrides = {name: getattr(self, name) for name in servers.SIGNALS if getattr(self, name) is not None}
        return ServerProfile(
            replace(profile.server, **overrides), self.port or profile.port, self.path or profile.path
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

    def histogram(key: str) -> Histogram | None:
        sel = selector(key)  # a label filter is ignored: every series of the histogram is read
        return Histogram(sel.name) if sel else None

    signals: dict[str, Any] = {
        signal: histogram(key) if signal in servers.HISTOGRAMS else selector(key)
        for signal, key in _ANNOTATIONS.items()
    }
    return PodScrapeConfig(
        port=port, path=path, server=server.lower() if server else None, **signals, problems=tuple(problems)
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
        for kind, suffixes in (
            (servers.COUNTERS, _COUNTER_SUFFIXES),
            (servers.HISTOGRAMS, _HISTOGRAM_SUFFIXES),
            (servers.GAUGES, ("",)),
        ):
            for signal in kind:
                metric: Selector | Histogram | None = getattr(profile.server, signal)
                if metric is not None:
                    names.update(n + suffix for n in metric.names for suffix in suffixes)
    return frozenset(names)


_COUNTER_SUFFIXES = ("", "_total")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


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
    itl: HistogramSeries | None = None
    request_itl: HistogramSeries | None = None
    """Each finished request's mean time per output token (one observation per request)."""
    requests_waiting: float | None = None
    """Requests queued, summed over the server's series (models, engines)."""
    requests_running: float | None = None
    """Requests in the running batch, summed over the server's series."""
    kv_cache_usage: float | None = None
    """KV-cache usage ratio, the highest over the server's series (the fullest engine saturates first)."""


def total(series: CounterSeries | None) -> float | None:
    """The sum over a counter's series (what the server's counter says now), or ``None``."""
    return None if series is None else sum(series.values())


def _first_present(names: Iterable[str], present: frozenset[str], suffixes: Sequence[str]) -> str | None:
    """The first of ``names`` (newest first) that has any sample in the page, whatever its value."""
    return next((n for n in names if any(n + suffix in present for suffix in suffixes)), None)


def _counter(
    samples: Sequence[Sample], selector: Selector | None, present: frozenset[str]
) -> CounterSeries | None:
    if selector is None:
        return None
    name = _first_present(selector.names, present, _COUNTER_SUFFIXES)
    if name is None:
        return None
    series: dict[SeriesKey, float] = {}
    seen: set[SeriesKey] = set()
    for s in samples:
        if not _is_series_of(s, selector, name):
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


def _histogram(
    samples: Sequence[Sample], histogram: Histogram | None, present: frozenset[str]
) -> HistogramSeries | None:
    if histogram is None:
        return None
    name = _first_present(histogram.names, present, _HISTOGRAM_SUFFIXES)
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
        factor = histogram.to_seconds
        buckets = tuple((_seconds(le, factor), count) for le, count in sorted(p.buckets.items()))
        reading = HistogramReading(buckets, _seconds(p.sum or 0.0, factor), p.count)
        bounds = reading.bounds if bounds is None else bounds
        if reading.bounds == bounds:  # series must share bounds to be summed by bound
            series[key] = reading
    return series or None


def _seconds(value: float, to_seconds: float) -> float:
    # Dividing by the inverse keeps millisecond bounds short (9 ms: 0.009, not 0.009000000000000001).
    return value * to_seconds if to_seconds >= 1 else value / (1 / to_seconds)


def _gauge(
    samples: Sequence[Sample],
    selector: Selector | None,
    present: frozenset[str],
    combine: Callable[[Iterable[float]], float],
) -> float | None:
    """The gauge's series combined; ``None`` when it has none, or when any of them is not usable."""
    if selector is None:
        return None
    name = _first_present(selector.names, present, ("",))
    if name is None:
        return None
    series: dict[SeriesKey, float] = {}
    for s in samples:
        if s.name != name or not selector.has_labels(s.labels):
            continue
        key = series_key(s.name, s.labels)
        if key in series:
            continue  # a duplicated line: the first one counts
        series[key] = s.value
        if len(series) > MAX_SERIES_PER_METRIC:
            raise TooManySeries(f"{name} has more than {MAX_SERIES_PER_METRIC} series")
    if not series or not all(usable(v) for v in series.values()):
        return None
    return combine(series.values())


def extract(samples: Sequence[Sample], profile: ServerProfile) -> AppReading:
    """The profile's counters, histograms and gauges from parsed samples; ``TooManySeries`` past the
    limit."""
    present = frozenset(s.name for s in samples)
    signals = profile.server
    return AppReading(
        requests=_counter(samples, signals.requests, present),
        prompt_tokens=_counter(samples, signals.prompt_tokens, present),
        generation_tokens=_counter(samples, signals.generation_tokens, present),
        latency=_histogram(samples, signals.e2e_latency, present),
        ttft=_histogram(samples, signals.ttft, present),
        itl=_histogram(samples, signals.itl, present),
        request_itl=_histogram(samples, signals.request_itl, present),
        requests_waiting=_gauge(samples, signals.requests_waiting, present, sum),
        requests_running=_gauge(samples, signals.requests_running, present, sum),
        kv_cache_usage=_gauge(samples, signals.kv_cache_usage, present, max),
    )
