"""The fast text renderer says exactly what prometheus_client's generate_latest says."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from exporter.exposition import render


class Families:
    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("eo_test_gauge", 'help with "quotes" and \\ and\nnewline', labels=["a", "b"])
        g.add_metric(['va"l\\ue\n', "x"], 1.5)
        g.add_metric(["inf", "y"], float("inf"))
        g.add_metric(["nan", "y"], float("nan"))
        yield g
        c = CounterMetricFamily("eo_test_energy_joules", "a counter", labels=["uuid"])
        c.add_metric(["GPU-1"], 12345.678)
        yield c
        t = GaugeMetricFamily("eo_test_stamped", "with a timestamp", labels=[])
        t.add_metric([], 2.0, timestamp=1700000000.0)
        yield t


def parsed(text: bytes) -> list[tuple[str, str, list[tuple[str, dict[str, str], str]]]]:
    return [
        (f.name, f.documentation, [(s.name, s.labels, repr(s.value)) for s in f.samples])
        for f in text_string_to_metric_families(text.decode())
    ]


def test_render_matches_generate_latest_including_histograms() -> None:
    registry = CollectorRegistry()
    registry.register(Families())
    hist = Histogram("eo_test_latency_seconds", "a histogram", ["pod"], registry=registry)
    hist.labels("p1").observe(0.3)
    ours, theirs = render(registry), generate_latest(registry)
    assert sorted(parsed(ours)) == sorted(parsed(theirs))
    assert b'eo_test_gauge{a="va\\"l\\\\ue\\n",b="x"} 1.5' in ours
    assert b"# TYPE eo_test_energy_joules_total counter" in ours
