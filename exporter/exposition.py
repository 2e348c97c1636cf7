"""Prometheus text exposition with a fast path for the exporter's own gauge and counter families.

``prometheus_client.generate_latest`` validates and escapes every label of every sample on every
scrape; with 8 GPUs that is about 160 series and most of a scrape's CPU time. The exporter's label
sets barely change between scrapes (node, gpu, uuid, model, reason), so their rendered ``{...}``
strings are cached here. Families of any other type (the pod collector's histograms, say) and any
sample with a timestamp or a ``_created`` sibling go through ``generate_latest`` unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

_LABELS_CACHE_MAX = 50_000
_label_cache: dict[tuple[tuple[str, str], ...], str] = {}


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(labels: dict[str, str]) -> str:
    key = tuple(labels.items())
    text = _label_cache.get(key)
    if text is None:
        if len(_label_cache) >= _LABELS_CACHE_MAX:
            _label_cache.clear()  # label churn (pods come and go): start over rather than grow
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        text = _label_cache[key] = "{" + inner + "}" if inner else ""
    return text


def _value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _fast(metric: Metric) -> bool:
    if metric.type not in ("gauge", "counter"):
        return False
    plain = (metric.name, metric.name + "_total")
    return all(s.timestamp is None and s.exemplar is None and s.name in plain for s in metric.samples)


class _Families:
    def __init__(self, metrics: Sequence[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def render(registry: Collector) -> bytes:
    """The text format (0.0.4) of everything ``registry`` collects."""
    out: list[str] = []
    slow: list[Metric] = []
    for metric in registry.collect():
        if not _fast(metric):
            slow.append(metric)
            continue
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {metric.type}\n")
        out.extend(f"{s.name}{_labels(s.labels)} {_value(s.value)}\n" for s in metric.samples)
    text = "".join(out).encode()
    return text + generate_latest(_Families(slow)) if slow else text
