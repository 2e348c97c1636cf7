"""Prometheus text exposition with a fast path for the exporter's own gauge and counter families.

``prometheus_client.generate_latest`` validates and escapes every label of every sample on every
scrape; with 8 GPUs that is about 160 series and most of a scrape's CPU time. The exporter's label
sets barely change between scrapes (node, gpu, uuid, model, reason), so their rendered ``{...}``
strings are cached here. Families of any other type (the pod collector's histograms, say) and any
sample with a timestamp or a ``_created`` sibling go through ``generate_latest`` unchanged.

A family object yielded again by a later scrape is taken as unchanged and its text reused: the pod
collector builds its families once per sample (every few seconds) and yields the same objects to
every scrape in between, so ~1,500 histogram samples are rendered once per sample, not per scrape.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

_LABELS_CACHE_MAX = 50_000
_label_cache: dict[tuple[tuple[str, str], ...], str] = {}
# id(family) -> (family, text): the family is kept so its id cannot be reused while cached.
_family_text: dict[int, tuple[Metric, bytes]] = {}


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


def _slow_text(metric: Metric, seen: dict[int, tuple[Metric, bytes]]) -> bytes:
    cached = _family_text.get(id(metric))
    reuse = cached is not None and cached[0] is metric
    text = cached[1] if cached is not None and reuse else generate_latest(_Families([metric]))
    seen[id(metric)] = (metric, text)
    return text


def render(registry: Collector) -> bytes:
    """The text format (0.0.4) of everything ``registry`` collects."""
    global _family_text  # noqa: PLW0603 (one process-wide cache, replaced whole, no lock needed)
    out: list[str] = []
    slow: list[bytes] = []
    seen: dict[int, tuple[Metric, bytes]] = {}
    for metric in registry.collect():
        if not _fast(metric):
            slow.append(_slow_text(metric, seen))
            continue
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {metric.type}\n")
        out.extend(f"{s.name}{_labels(s.labels)} {_value(s.value)}\n" for s in metric.samples)
    # Keep only the families of this scrape: the next one reuses those it yields again.
    _family_text = seen
    return "".join(out).encode() + b"".join(slow)
