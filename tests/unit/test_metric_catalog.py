"""tools/metric_catalog.py lists exactly what the components publish: every metric family created in the
product's code is in the catalog (so rules and dashboards may read it), and the catalog names nothing that
no component creates (a renamed metric cannot linger there)."""

from __future__ import annotations

import ast
from pathlib import Path

from tools import metric_catalog as catalog

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("common", "devices", "exporter", "scaler", "powercap", "gpumodel", "sim")
# Calls that take an ``eo_``-prefixed string first without creating a metric.
NOT_METRICS = frozenset({"ContextVar"})


def _kind(callee: str) -> str | None:
    """What a metric constructor (prometheus_client's, or a component's own wrapper) publishes."""
    lowered = callee.lower()
    if "histogram" in lowered:
        return "histogram"
    if "counter" in lowered:
        return "counter"
    if "gauge" in lowered or "info" in lowered or "enum" in lowered:
        return "gauge"
    return None


def created_metrics() -> dict[str, tuple[str, str]]:
    """Family name -> (kind, where) for every ``eo_`` metric constructed in the product's packages."""
    found: dict[str, tuple[str, str]] = {}
    unknown: list[str] = []
    for package in PRODUCT:
        for path in sorted((REPO / package).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                    continue
                name = node.args[0].value
                if not (isinstance(name, str) and name.startswith("eo_")):
                    continue
                func = node.func
                callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "?")
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                if callee in NOT_METRICS:
                    continue
                kind = _kind(callee)
                if kind is None:
                    unknown.append(f"{where} {callee}({name!r})")
                    continue
                found[name] = (kind, where)
    assert not unknown, f"calls this test cannot classify (add them to _kind or NOT_METRICS): {unknown}"
    return found


def _published_names(name: str, kind: str) -> set[str]:
    if kind == "counter":  # prometheus_client appends _total (and strips one given)
        return {name.removesuffix("_total") + "_total"}
    if kind == "histogram":
        return {name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return {name}


def test_every_created_metric_is_in_the_catalog() -> None:
    missing = {
        published: where
        for name, (kind, where) in created_metrics().items()
        for published in _published_names(name, kind)
        if published not in catalog.PUBLISHED
    }
    assert not missing, f"metrics the components publish that tools/metric_catalog.py lacks: {missing}"


def test_histograms_are_catalogued_as_histograms() -> None:
    histograms = {name for name, (kind, _) in created_metrics().items() if kind == "histogram"}
    assert histograms == set(catalog.HISTOGRAMS)


def test_the_catalog_names_only_metrics_a_component_creates() -> None:
    created = {
        published
        for name, (kind, _) in created_metrics().items()
        for published in _published_names(name, kind)
    }
    outside = catalog.USER_INPUTS | catalog.PROMETHEUS
    stale = sorted(catalog.PUBLISHED - created - outside)
    assert not stale, f"catalogued names no component creates (renamed or removed?): {stale}"


def test_the_scan_sees_each_kind_of_constructor() -> None:
    # The scan reads the source; make sure it finds a known family of each kind where it is created.
    created = created_metrics()
    assert created["eo_gpu_power_watts"][0] == "gauge"
    assert created["eo_pod_energy_joules"][0] == "counter"
    assert created["eo_scaler_decisions_total"][0] == "counter"
    assert created["eo_pod_request_latency_seconds"][0] == "histogram"
