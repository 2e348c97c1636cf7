"""Render the sampler's last snapshot as Prometheus metric families (no I/O at scrape time)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

from prometheus_client import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporter.collector import SourceReading
from exporter.pods.accounting import PodView
from exporter.pods.counters import HistogramTotals
from exporter.pods.sampler import PodSampler, Snapshot

ENERGY_HELP = (
    "Energy attributed to the pod, in joules. source=gpu: each GPU board's energy-counter growth between "
    "samples goes to the pods holding the board (MIG instances and time-slice replicas count toward "
    "their parent board); several holders split it by their share of tokens processed in the interval "
    "when all report tokens, else by MIG slices / replicas held / equally; the pods of one board sum to "
    "its counter while it is held. source=cpu: node CPU (RAPL) energy growth times the pod's share of "
    "node CPU time (cgroup v2)."
)
POD_LABELS = ["node", "namespace", "pod", "workload"]


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _histogram(name: str, help_text: str) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, help_text, labels=POD_LABELS)


def _add_histogram(family: HistogramMetricFamily, labels: list[str], totals: HistogramTotals) -> None:
    family.add_metric(labels, [(_le(le), count) for le, count in totals.buckets], totals.sum)


@dataclass
class _PodFamilies:
    """Every per-pod family of one sample, in the order they are published."""

    info: GaugeMetricFamily
    energy: CounterMetricFamily
    requests: CounterMetricFamily
    tokens: CounterMetricFamily
    jpr: GaugeMetricFamily
    latency: HistogramMetricFamily
    ttft: HistogramMetricFamily
    app_up: GaugeMetricFamily
    itl: HistogramMetricFamily
    request_itl: HistogramMetricFamily
    waiting: GaugeMetricFamily
    running: GaugeMetricFamily
    kv_cache: GaugeMetricFamily

    def all(self) -> list[Metric]:
        return [getattr(self, f.name) for f in fields(self)]


def _new_families() -> _PodFamilies:
    return _PodFamilies(
        info=GaugeMetricFamily(
            "eo_gpu_pod_info",
            "1 for each container holding a GPU (device IDs resolved to the board's UUID); sharing is "
            "exclusive, time_sliced or mig.",
            labels=["node", "uuid", "namespace", "pod", "container", "workload", "sharing"],
        ),
        energy=CounterMetricFamily("eo_pod_energy_joules", ENERGY_HELP, labels=[*POD_LABELS, "source"]),
        requests=CounterMetricFamily(
            "eo_pod_requests",
            "Requests the pod's inference server finished successfully (mirrored, monotonic across "
            "restarts).",
            labels=POD_LABELS,
        ),
        tokens=CounterMetricFamily(
            "eo_pod_tokens",
            "Tokens the pod's inference server processed, by kind (prompt, generation); mirrored.",
            labels=[*POD_LABELS, "kind"],
        ),
        jpr=GaugeMetricFamily(
            "eo_pod_joules_per_request",
            "Pod energy growth over requests growth between the exporter's last two samples of the pod "
            "(joules per request); absent when no request finished in that window.",
            labels=POD_LABELS,
        ),
        latency=_histogram(
            "eo_pod_request_latency_seconds",
            "End-to-end request latency, mirrored from the inference server.",
        ),
        ttft=_histogram(
            "eo_pod_time_to_first_token_seconds", "Time to first token, mirrored from the inference server."
        ),
        app_up=GaugeMetricFamily(
            "eo_pod_metrics_up",
            "1 if the exporter read the pod's inference server in its last sample, 0 if that read failed "
            "or missed its deadline (the pod's mirrored requests, tokens, latency and queue series are then "
            "omitted, not repeated); published for pods that hold a GPU and have a server to read.",
            labels=POD_LABELS,
        ),
        itl=_histogram(
            "eo_pod_inter_token_latency_seconds",
            "Inter-token latency (time per output token after the first), mirrored from the inference "
            "server (vLLM, SGLang: one observation per token; TGI: each request's mean).",
        ),
        request_itl=_histogram(
            "eo_pod_request_time_per_output_token_seconds",
            "Each finished request's mean time per output token after the first (one observation per "
            "request: the inter-token latency a user feels), mirrored from the inference server (vLLM, "
            "SGLang, TGI).",
        ),
        waiting=GaugeMetricFamily(
            "eo_pod_requests_waiting",
            "Requests queued in the pod's inference server, not yet running, as it reported them in the "
            "exporter's last sample (summed over its models and engines).",
            labels=POD_LABELS,
        ),
        running=GaugeMetricFamily(
            "eo_pod_requests_running",
            "Requests in the pod's inference server's running batch, as it reported them in the "
            "exporter's last sample (summed over its models and engines).",
            labels=POD_LABELS,
        ),
        kv_cache=GaugeMetricFamily(
            "eo_pod_kv_cache_usage_ratio",
            "Share of the pod's KV cache in use (0..1), as its inference server reported it in the "
            "exporter's last sample (the highest over its engines).",
            labels=POD_LABELS,
        ),
    )


def pod_families(snapshot: Snapshot, node: str) -> list[Metric]:
    families = _new_families()
    for view in snapshot.pods:
        _add_pod(view, [node, view.key.namespace, view.key.pod, view.workload], families)
    return families.all()


def _add_pod(view: PodView, labels: list[str], f: _PodFamilies) -> None:
    node, namespace, pod, workload = labels
    seen: set[tuple[str, str]] = set()
    for h in view.holdings:
        if (h.share.board_uuid, h.container) in seen:
            continue  # two replicas of one time-sliced GPU: one info series
        seen.add((h.share.board_uuid, h.container))
        info = [node, h.share.board_uuid, namespace, pod, h.container, workload, h.share.sharing]
        f.info.add_metric(info, 1)
    f.energy.add_metric([*labels, "gpu"], view.gpu_energy_j)
    if view.cpu_energy_j is not None:
        f.energy.add_metric([*labels, "cpu"], view.cpu_energy_j)
    if view.requests is not None:
        f.requests.add_metric(labels, view.requests)
    if view.prompt_tokens is not None:
        f.tokens.add_metric([*labels, "prompt"], view.prompt_tokens)
    if view.generation_tokens is not None:
        f.tokens.add_metric([*labels, "generation"], view.generation_tokens)
    if view.joules_per_request is not None:
        f.jpr.add_metric(labels, view.joules_per_request)
    for family, totals in (
        (f.latency, view.latency),
        (f.ttft, view.ttft),
        (f.itl, view.itl),
        (f.request_itl, view.request_itl),
    ):
        if totals is not None:
            _add_histogram(family, labels, totals)
    for gauge, value in (
        (f.waiting, view.requests_waiting),
        (f.running, view.requests_running),
        (f.kv_cache, view.kv_cache_usage),
    ):
        if value is not None:
            gauge.add_metric(labels, value)
    if view.app_up is not None:
        f.app_up.add_metric(labels, 1.0 if view.app_up else 0.0)


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class PodCollector(Collector):
    """The pod families, built and rendered once per sample on the sampler's thread.

    ``collect()`` serves any prometheus_client registry; ``exposition()`` returns the pre-rendered text
    (text format 0.0.4) for servers that append it to their own, so a scrape does no per-series work:
    32 pods with vLLM's histogram buckets are ~1,500 samples, ~20 ms to render in Python.
    ``read()`` gives the families and health for the exporter's combined collector.
    """

    name = "pods"

    def __init__(
        self, sampler: PodSampler, node: str, max_age_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sampler = sampler
        self._node = node
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[Snapshot, list[Metric], bytes] | None = None
        sampler.add_listener(self._prepare)

    def _prepare(self, snapshot: Snapshot) -> tuple[list[Metric], bytes]:
        with self._lock:
            cached = self._cached
            if cached is not None and cached[0] is snapshot:
                return cached[1], cached[2]
            families = pod_families(snapshot, self._node)
            text = generate_latest(_Families(families))
            self._cached = (snapshot, families, text)
            return families, text

    def up(self) -> bool:
        """The pods collector itself works: its last sample listed the kubelet's devices and read the
        GPU energy, and is fresh. Pods whose server cannot be read do not make it 0 (their own
        ``eo_pod_metrics_up`` does), since every read ends at the sample's deadline."""
        snapshot = self._sampler.snapshot
        fresh = snapshot.taken_at_s is not None and self._clock() - snapshot.taken_at_s <= self._max_age_s
        return snapshot.up and fresh

    def read(self) -> tuple[list[Metric], bool]:
        return self._prepare(self._sampler.snapshot)[0], self.up()

    def _up_family(self) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(
            "eo_exporter_collector_up",
            "1 if the collector's last read succeeded completely, 0 if it failed or was partial.",
            labels=["collector"],
        )
        gauge.add_metric([self.name], 1.0 if self.up() else 0.0)
        return gauge

    def collect(self) -> Iterator[Metric]:
        families, _ = self.read()
        yield from families
        yield self._up_family()

    def exposition(self, with_up: bool = True) -> bytes:
        """Pre-rendered pod families (plus the standalone up gauge unless ``with_up`` is False)."""
        text = self._prepare(self._sampler.snapshot)[1]
        return text + generate_latest(_Families([self._up_family()])) if with_up else text


class PodSource:
    """The pod collector as one of eo-exporter's sources (``collector="pods"`` in its up gauge)."""

    name = "pods"

    def __init__(self, collector: PodCollector) -> None:
        self._collector = collector

    def read(self) -> SourceReading:
        families, up = self._collector.read()
        return SourceReading(families, up)
